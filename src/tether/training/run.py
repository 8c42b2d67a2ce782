"""The Python API: ``validate(cfg)`` and ``train(cfg)``.

Order of work in a run: config checks → model path checks → data rows read and checked → tokenizer →
tokenized and length-checked → (only now) model weights → reference → training. Every input problem is
found before a weight loads.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import tether.data as data_mod
import tether.engine.models as models
from tether.config import Config, check_launch
from tether.data.kinds import describe
from tether.engine.logprobs import LogProbModel
from tether.engine.reference_build import CacheTooLarge, ReferenceSpec, build_reference, gamma_ref
from tether.engine.scores import ScoreModel
from tether.errors import DataError, Problem, TetherError, shown, whole_or_nothing
from tether.methods.registry import Method
from tether.rundir import RunDir, run_dir_lock
from tether.training.checkpoints import CHECKPOINT_ADVICE, check_resume_config
from tether.training.schedule import make_schedule
from tether.training.sink import MetricsSink, reset_peak_rss
from tether.training.trainer import Trainer, TrainResult


@dataclass
class Prepared:
    """Everything known before model weights load."""

    cfg: Config
    method: Method
    hparams: dict[str, float]
    model_dir: Path | str
    tokenizer: Any
    train: list[data_mod.Example]
    eval: list[data_mod.Example]
    report: dict[str, Any] = field(default_factory=dict)
    by_file: list[list[data_mod.Example]] = field(default_factory=list)
    """The training examples of each training file, in file order (sDPO's ``stages.by: files``)."""


def prepare(cfg: Config, train_specs: Sequence[str] | None = None, *, convert: bool = True) -> Prepared:
    """Check the model spec and every data row (tokenized) without loading model weights.

    ``train_specs``: the training files (default: ``data.train``); their examples are concatenated.
    ``convert=False`` leaves a GGUF model unconverted (``model_dir`` is then the GGUF file itself).
    """
    check_launch(cfg)
    method, hparams = cfg.resolved_method()
    d = cfg.data
    for key, name in (("model.name", cfg.model.name), ("reference.model", cfg.reference.model)):
        if name is not None:
            try:
                models.check_model_spec(name)
            except TetherError as e:
                raise TetherError(f"{key}: {e}") from None
    train_specs = list(train_specs) if train_specs is not None else [d.train]
    specs = [*train_specs, *([d.eval] if d.eval else [])]
    for s in specs:
        if not s.startswith("hf:") and not Path(s).exists():
            raise TetherError(f"{s}: data file not found")
    # Rows are read and their format checked before the model dir is resolved (a GGUF is converted there).
    rows: dict[tuple[str, str], list[data_mod.Row]] = {}  # (train|eval, spec) → rows
    kinds: dict[tuple[str, str], str] = {}
    for key in [*(("train", s) for s in train_specs), *([("eval", d.eval)] if d.eval else [])]:
        role, s = key
        unreadable: list[Problem] = []  # malformed lines: reported together with the good rows' problems
        split = (d.eval_split or d.split) if role == "eval" else d.split
        rows[key] = data_mod.read_rows(s, split=split, problems=unreadable)
        rows[key] = rows[key][: d.eval_limit if role == "eval" else d.limit]
        try:
            kind = data_mod.detect_kind(rows[key])
        except DataError as e:  # no recognisable format among the readable rows
            raise DataError(_in_line_order(unreadable + e.problems)) from None
        if kind != method.data and not (kind == "pairs" and method.split_pairs):
            needs = describe(method.data)
            if method.split_pairs:
                needs += f" or {describe('pairs')}, each pair split into a desirable and an undesirable row"
            wrong = f"method '{method.name}' needs {needs} but the file holds {describe(kind)}"
            if unreadable:
                raise DataError(_in_line_order([*unreadable, Problem(s, None, None, wrong)]))
            raise TetherError(f"{s}: {wrong}")
        kinds[key] = kind
        unreadable += _row_value_problems(rows[key], method.row_values)
        if unreadable:
            problems = data_mod.check_rows(rows[key], kind, assistant_turns=d.assistant_turns)
            raise DataError(_in_line_order(unreadable + problems))
    model_dir = models.resolve_model_dir(cfg.model.name, convert=convert, progress=cfg.train.progress)
    tokenizer = models.load_tokenizer(model_dir)
    if cfg.reference.model is not None:
        ref_dir = models.resolve_model_dir(cfg.reference.model, convert=convert, progress=cfg.train.progress)
        ref_tokenizer = models.load_tokenizer(ref_dir)
        if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise TetherError(
                f"reference.model: {cfg.reference.model} has a different tokenizer than {cfg.model.name}"
            )

    tokenization = d.tokenization()

    def tokenize(key: tuple[str, str]) -> data_mod.TokenizedData:
        return tokenization.tokenize_rows(rows[key], tokenizer, kind=kinds[key])  # type: ignore[arg-type]

    def method_rows(key: tuple[str, str], examples: list[data_mod.Example]) -> list[data_mod.Example]:
        """The file's examples as the method's rows: pairs split for an unpaired method that takes them."""
        if kinds[key] == "pairs" and method.data == "unpaired":
            return data_mod.split_pairs(examples)
        return examples

    toks = [tokenize(("train", s)) for s in train_specs]
    by_file = [method_rows(("train", s), t.examples) for s, t in zip(train_specs, toks, strict=True)]
    train_ex, eval_ex = [e for f in by_file for e in f], []
    evals = [tokenize(("eval", d.eval))] if d.eval else []
    if evals:
        eval_ex = method_rows(("eval", d.eval), evals[0].examples)
    if method.mismatched_completion:  # a seeded order, so that the next row's completion is a random one
        train_ex, eval_ex = (
            data_mod.shuffled(train_ex, cfg.train.seed),
            data_mod.shuffled(eval_ex, cfg.train.seed),
        )
    if not d.eval and d.eval_fraction > 0:
        train_ex, eval_ex = data_mod.split_train_eval(train_ex, d.eval_fraction, cfg.train.seed)
    if not train_ex:
        raise TetherError(f"{', '.join(train_specs)}: no training examples left")
    if method.mismatched_completion:  # within each split: eval rows are scored against eval rows
        train_ex = data_mod.with_mismatched_completions(train_ex, d.max_length)
        eval_ex = data_mod.with_mismatched_completions(eval_ex, d.max_length) if eval_ex else []
    report = {
        "rows": sum(t.n_rows for t in toks),
        "train_examples": len(train_ex),
        "eval_examples": len(eval_ex),
        "truncated": sum(t.n_truncated for t in toks),
        "prompt_truncated": sum(t.n_prompt_truncated for t in toks),
        "dropped": sum(t.n_dropped for t in toks),
    }
    split = [k[1] for k in kinds if kinds[k] == "pairs" and method.data == "unpaired"]
    notes = [n for t in [*toks, *evals] for n in t.notes]
    if split:  # the training pairs that became two rows each
        report["pairs_split"] = sum(
            len(t.examples) for s, t in zip(train_specs, toks, strict=True) if s in split
        )
        notes.append(
            f"{method.name}: {', '.join(split)}: each pair split into a desirable (chosen) and an undesirable "
            f"(rejected) row, shuffled with train.seed {cfg.train.seed}"
        )
    labels = [bool(e.label) for e in train_ex if e.label is not None]
    if labels:
        report["desirable"], report["undesirable"] = sum(labels), len(labels) - sum(labels)
        if method.label_notes is not None:
            notes += method.label_notes(labels, hparams)
    if notes:
        report["notes"] = notes
    return Prepared(cfg, method, hparams, model_dir, tokenizer, train_ex, eval_ex, report, by_file)


def _row_value_problems(rows: list[data_mod.Row], names: Sequence[str]) -> list[Problem]:
    """A method's declared numeric row fields (``Method.row_values``, e.g. ``margin``) that are present but
    not finite numbers."""
    out = []
    for r in rows:
        for n in names:
            v = r.data.get(n)
            if v is not None and (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or (isinstance(v, int) and abs(v) > 2**1023)  # beyond a float
                or not math.isfinite(v)
            ):
                out.append(Problem(r.file, r.line, n, f"must be a finite number, got {shown(v)}"))
    return out


def _in_line_order(problems: list[Problem]) -> list[Problem]:
    """File-level problems first, then by line (stable: a line's fields keep their order)."""
    return sorted(problems, key=lambda q: q.line or 0)


def reference_mode(cfg: Config, method: Method) -> str:
    """Resolve ``reference.mode: auto`` from the method's declared capabilities."""
    mode = cfg.reference.mode
    if mode != "auto":
        return mode if method.uses_reference else "none"
    if not method.uses_reference:
        return "none"
    if method.live_reference:
        return "copy"  # updated during training: neither a table nor the adapter-disabled base can follow
    lora = cfg.model.lora is not None and cfg.reference.model is None
    if method.needs_reference or method.needs_reference_logits:
        return "adapter" if lora else "precomputed"
    return "precomputed"  # metrics only (e.g. SFT's deviation): one pass, no second model


def _disable_dropout(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0


def reference_spec(cfg: Config, p: Prepared, mode: str) -> ReferenceSpec:
    """The run's reference in the engine's plain values (:func:`tether.engine.reference_build.build_reference`)."""
    return ReferenceSpec(
        mode=mode,
        policy_dir=p.model_dir,
        other=cfg.reference.model,
        dtype=cfg.model.dtype,
        logprob_chunk=cfg.train.logprob_chunk,
        live=p.method.live_reference,
        needs_logits=p.method.needs_reference_logits,
        cache_dir=Path(cfg.reference.cache_dir) if cfg.reference.cache_dir else None,
        max_cache_gb=cfg.reference.max_cache_gb,
        batch_size=cfg.train.batch_size * 2,
        pad_id=p.tokenizer.pad_token_id,
        share_prompt=cfg.train.share_prompt,
        packing=cfg.train.packing,
        progress=cfg.train.progress,
    )


@dataclass
class RunResult:
    """What a run produced."""

    run_dir: Path
    final_model_dir: Path
    method: str
    reference_mode: str
    reference_cache: str | None
    steps: int
    hparams: dict[str, float]
    train_metrics: dict[str, float]
    eval_metrics: dict[str, float]
    seconds: float
    tokens_per_second: float
    peak_rss_mb: float
    data: dict[str, int]
    resumed_from_step: int | None = None
    gamma_ref: float | None = None
    stages: list[dict] | None = None
    plots: list[Path] = field(default_factory=list)

    def summary_rows(self) -> list[tuple[str, str]]:
        m, e = self.train_metrics, self.eval_metrics
        rows = [
            ("method", self.method),
            (
                "reference",
                self.reference_mode + (f" ({self.reference_cache})" if self.reference_cache else ""),
            ),
            ("steps", str(self.steps)),
            ("time", f"{self.seconds:.1f} s"),
            ("tokens/s", f"{self.tokens_per_second:.0f}"),
            ("peak RSS", f"{self.peak_rss_mb:.0f} MB"),
            ("train examples", str(self.data.get("train_examples"))),
            ("truncated rows", str(self.data.get("truncated"))),
        ]
        for k in ("eval/loss", "eval/rewards/accuracies", "eval/rewards/margins", "eval/deviation"):
            if k in e:  # held-out numbers first: the last batch's are noisy
                rows.append((f"held-out {k.removeprefix('eval/')}", f"{e[k]:.4g}"))
        for k in (
            "loss",
            "rewards/accuracies",
            "rewards/margins",
            "deviation",
            "kl/beta",
            "logps/chosen",
            "logps/rejected",
        ):
            if k in m:
                rows.append((f"last batch {k}", f"{m[k]:.4g}"))
        if self.gamma_ref is not None:
            rows.append(("gamma_ref", f"{self.gamma_ref:.4g}"))
        for st in self.stages or []:
            rows.append((f"stage {st['stage']}", f"{st['examples']} pairs, gamma_ref {st['gamma_ref']:.4g}"))
        rows.append(("final model", str(self.final_model_dir)))
        if self.plots:
            rows.append(("plots", str(Path(self.plots[0]).parent)))
        return rows


def _prepare_run_dir(cfg: Config) -> RunDir:
    rd = RunDir(cfg.train.output_dir)
    if rd.holds_run() and not cfg.train.resume and not cfg.train.overwrite:
        raise TetherError(
            f"train.output_dir: {rd.path} already holds a run; set train.resume=true to continue it, "
            "train.overwrite=true to replace it, or choose another directory"
        )
    return rd


def train(
    cfg: Config, *, prepared: Prepared | None = None, accelerator=None, measure_gamma_ref: bool = False
) -> RunResult:
    """Run one training run described by ``cfg`` (sDPO stages are :mod:`tether.training.stages`' job,
    one level up); returns what it produced (see :class:`RunResult`).

    The output directory is locked for the run (one writer; see :func:`tether.rundir.run_dir_lock`)."""
    with run_dir_lock(Path(cfg.train.output_dir), enabled=os.environ.get("RANK", "0") == "0"):
        return _train(cfg, prepared=prepared, accelerator=accelerator, measure_gamma_ref=measure_gamma_ref)


def _load_policy_model(cfg: Config, p: Prepared) -> torch.nn.Module:
    """The policy's model as the run starts (LoRA applied, dropout off when asked), on the CPU."""
    model = models.load_model(
        p.model_dir,
        dtype=cfg.model.dtype,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        lora=None if cfg.model.lora is None else vars(cfg.model.lora),
        progress=cfg.train.progress,
        head=p.method.head,
        score_seed=cfg.train.seed if p.method.head == "score" else None,
    )
    if cfg.train.disable_dropout:
        _disable_dropout(model)
    return model


def _train(cfg: Config, *, prepared: Prepared | None, accelerator, measure_gamma_ref: bool) -> RunResult:
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    if cfg.stages is not None and cfg.stages.stage is None:
        raise TetherError("stages: a single run has no stages; train sDPO with tether.training.job.train")
    reset_peak_rss()  # the summary's peak RSS is this run's, also after another run in this process
    rd = _prepare_run_dir(cfg)
    run_dir = rd.path
    p = prepared or prepare(cfg)
    fingerprints = {"data.train": data_mod.fingerprint(p.train)}
    if p.eval:
        fingerprints["data.eval"] = data_mod.fingerprint(p.eval)
    if cfg.train.resume:
        check_resume_config(cfg, run_dir, fingerprints)
    acc = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    if acc.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.train.overwrite and not cfg.train.resume:
            for stale in (rd.metrics, rd.summary):
                stale.unlink(missing_ok=True)
            shutil.rmtree(rd.checkpoints, ignore_errors=True)
        rd.write_config(cfg)
        for note in p.report.get("notes", []):
            print(f"note: {note}", file=sys.stderr)
    acc.wait_for_everyone()
    set_seed(cfg.train.seed)
    model = _load_policy_model(cfg, p)
    model.to(acc.device)
    if p.method.head == "score":  # a reward model: one score per row
        policy = ScoreModel(model, p.tokenizer.pad_token_id)
    else:
        policy = LogProbModel(model, cfg.train.logprob_chunk)
    spec = reference_spec(cfg, p, reference_mode(cfg, p.method))
    schedule = make_schedule(len(p.train), cfg.train, acc.num_processes)
    needed = None if measure_gamma_ref else schedule.used_indices()
    try:
        reference = build_reference(spec, policy, p.train, p.eval, acc, needed_train=needed)
    except CacheTooLarge as e:
        if cfg.reference.mode != "auto":
            raise
        print(f"note: {e}; reference.mode auto: using a frozen copy instead")
        spec = dataclasses.replace(spec, mode="copy")
        reference = build_reference(spec, policy, p.train, p.eval, acc, needed_train=needed)
    gref = None
    if p.method.data == "pairs" and (measure_gamma_ref or spec.mode == "precomputed"):
        gref = gamma_ref(spec, reference, policy, p.train, acc)
    sink = MetricsSink(run_dir, cfg.train.report_to, cfg.to_dict(), enabled=acc.is_main_process)
    trainer = Trainer(
        accelerator=acc,
        policy=policy,
        method=p.method,
        hparams=p.hparams,
        reference=reference,
        cfg=cfg.train,
        run_dir=run_dir,
        train_examples=p.train,
        eval_examples=p.eval,
        pad_id=p.tokenizer.pad_token_id,
        sink=sink,
        run_config=cfg.to_dict(),
        data_fingerprint=fingerprints,
    )
    resumed = trainer.step if cfg.train.resume and trainer.resume() else None
    try:
        result: TrainResult = trainer.fit()
    finally:
        sink.close()
    final_dir = rd.final
    acc.wait_for_everyone()
    unwrapped = trainer.full_policy(lambda: _load_policy_model(cfg, p))  # sharded: gathered
    if unwrapped is not None:
        base = models.base_model_id(cfg.model.name, p.model_dir)
        _save_final(unwrapped, p.tokenizer, final_dir, merged=cfg.train.save_merged, base_model=base)
    acc.wait_for_everyone()
    tps = result.tokens / result.seconds if result.seconds > 0 else 0.0
    out = RunResult(
        run_dir=run_dir,
        final_model_dir=final_dir,
        method=p.method.name,
        reference_mode=spec.mode,
        reference_cache=reference.cache_status if reference else None,
        steps=result.steps,
        hparams=result.hparams,
        train_metrics=result.last_metrics,
        eval_metrics=result.eval_metrics,
        seconds=result.seconds,
        tokens_per_second=tps,
        peak_rss_mb=result.peak_rss_mb,
        data=p.report,
        resumed_from_step=resumed,
        gamma_ref=gref,
    )
    if acc.is_main_process:
        out.plots = plot(run_dir)  # drawn first, so that summary.json lists them
        rd.write_summary(_jsonable(vars(out)))
        write_model_cards(rd, cfg, p)
    return out


def _save_final(model: torch.nn.Module, tokenizer: Any, final_dir: Path, **kw: Any) -> None:
    """``final/`` written whole or not at all: into a sibling first, then renamed; a full disk is one line
    (the last checkpoint holds the same weights: a resume writes ``final/`` again)."""
    tmp = final_dir.with_name(f".tmp-{final_dir.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    cleanup = lambda: shutil.rmtree(tmp, ignore_errors=True)  # noqa: E731
    with whole_or_nothing(cleanup, final_dir.parent, "writing the final model", CHECKPOINT_ADVICE):
        models.save_model(model, tokenizer, tmp, **kw)
        shutil.rmtree(final_dir, ignore_errors=True)
        os.replace(tmp, final_dir)


def write_model_cards(rd: RunDir, cfg: Config, p: Prepared) -> None:
    """``final/README.md`` (and ``final/merged/README.md``) from the run's summary; for a LoRA adapter it
    replaces the template card peft writes."""
    from tether.training.card import model_card

    base = models.base_model_id(cfg.model.name, p.model_dir)
    summary = rd.read_summary()
    for card in rd.model_cards():
        adapter = card.parent == rd.final and rd.final_adapter() is not None
        text = model_card(cfg, p.method, summary, base_model=base, adapter=adapter, path=card.parent)
        card.write_text(text)


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    """Paths (also in lists) as strings."""
    conv = lambda v: str(v) if isinstance(v, Path) else v  # noqa: E731
    return {k: [conv(x) for x in v] if isinstance(v, list) else conv(v) for k, v in d.items()}


def plot(run_dir: Path) -> list[Path]:
    """The run's training curves as PNGs in ``<run>/plots`` (skipped, not failed, without matplotlib)."""
    try:
        from tether.evaluation.report import plot_run

        return plot_run(run_dir)
    except (TetherError, ImportError) as e:
        print(f"note: no plots ({e})")
        return []
