"""``tether eval``: a model or a run directory, against a reference model, on one data file.

What is measured depends on the data kind (``--metrics`` picks a subset of the groups):

================  ==========================================================================================
group             what
================  ==========================================================================================
``pairwise``      pairs: accuracy and mean margin of the implicit reward β·(r_w − r_l), r = log π − log π_ref
                  (reference-based methods), and of the length-averaged likelihood avg_w − avg_l
                  (reference-free methods); ``pairwise/accuracy`` is the one matching the run's method.
``deviation``     pairs, SFT: MinorSFT's m_θ, the mean over held-out chosen/completion answers of
                  (log π(y) − log π_ref(y)) / n(y).
``generation``    generations (left padding, batched, stop at EOS, ``max_new_tokens``; greedy, or
                  ``samples_per_prompt`` sampled at ``temperature``/``top_p``): task success by
                  :func:`tether.data.tasks.check` on rows with ``source`` + ``answer`` (overall and per
                  family); ``win_rate/chosen``, the win rate against the held-out chosen (completion,
                  answer) text, and ``win_rate``, against the reference model's generations, judged by
                  the reward model ``--judge`` (:mod:`tether.evaluation.judge`; also ``judge/reward``,
                  the mean reward) or else by the task checker (1 correct, 0 wrong); ties count ½, and
                  ``/ci_low``, ``/ci_high`` (also of the success) are a 95% bootstrap interval over prompts (seeded by
                  ``seed``); BLEU-4 (sacrebleu) and ROUGE-1/2/L F1 (rouge-score, stemmed) of the first
                  generation against the chosen/completion/answer text.
``kl``            KL(π‖π_ref) ≈ mean over completions y ~ π(·|x) (temperature 1, no top-k/top-p) of
                  Σ_t log π(y_t) − log π_ref(y_t), log π kept by the sampling pass, log π_ref scored by
                  the log-prob engine (the KL of the first ``max_new_tokens`` tokens when a sample is
                  cut there).
``mc``            multiple-choice rows (``prompt``, ``options``, ``label``): argmax over options of
                  log π(option | prompt), the option rendered as the whole response.
``reward``        pairs, a reward model (a run of ``method: reward`` or a sequence-classification model
                  directory; the only group for one): accuracy r(y_w) > r(y_l) and mean margin.
================  ==========================================================================================

Beside ``eval.json``, each generated prompt's outcomes (success, judge score, outcome against the chosen
answer and the reference, KL sample, lengths) go to ``eval_prompts.jsonl``
(:class:`tether.eval_result.PromptOutcome`), which ``tether compare`` pairs across runs
(:mod:`tether.evaluation.compare`). With a judge, ``win_rate/chosen/lc`` is the length-controlled win rate
against the chosen answers (:func:`tether.evaluation.metrics.length_controlled_win_rate`).

``--max-samples`` caps the prompts used by ``generation`` and ``kl`` (the first N distinct prompts of the
file); log-prob metrics use every row. ``--lm-eval-tasks`` runs lm-evaluation-harness when it is installed
and its data can be reached, and is otherwise skipped with a one-line note.

The reference's log-prob tables and greedy generations are cached under the run's
``reference.cache_dir``, else ``$TETHER_CACHE`` (default ``~/.cache/tether``), keyed by the reference's
weights fingerprint, the token ids and the settings (dtype, device type, generation length, batch size):
evaluating several runs against one starting model computes them once. A judge's scores are cached the same way, by its weights and the texts scored. An unreadable cache file is
recomputed. ``--no-cache`` recomputes them.

The reference defaults to a run's starting model (``model.name`` of its config, or of stage 1 for an
sDPO run). For a plain model with no ``--reference`` the reference is the model itself: reference-relative
numbers (KL, deviation, reward margins) are then 0 by construction, the win rate is 0.5, and the pairwise
accuracy is the likelihood one; a note says so.

Sampling settings of the papers: ε-DPO (arXiv:2502.13177) samples at temperature 1.0 and judges with
PairRM against the test split's chosen answers (``--judge RM --temperature 1``); the default here is
greedy decoding, deterministic and cheap. ``samples_per_prompt`` > 1 needs a temperature > 0.

The groups are declared in :data:`tether.evaluation.groups.METRIC_GROUPS` and computed by their modules in
:mod:`tether.evaluation.compute`; this module reads the data (:mod:`.inputs`), loads the weights
(:class:`tether.evaluation.context.Loaded`), runs the groups and assembles the typed result,
:class:`tether.eval_result.EvalResult`, which ``eval.json`` is.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import tether.data as data_mod
import tether.engine.models as models
from tether.config import Config, DataConfig
from tether.engine.cache import default_cache_dir, hash_key
from tether.errors import TetherError
from tether.eval_result import EvalResult, EvalSettings, PromptOutcome, Win
from tether.evaluation.context import GroupInputs, GroupResult, Loaded, Prompt, Sampling
from tether.evaluation.generation import generate
from tether.evaluation.groups import METRIC_GROUPS, compute_order, performance
from tether.evaluation.inputs import examples_and_prompts, read_data
from tether.evaluation.lmeval import run_lm_eval
from tether.evaluation.metrics import text_metrics, win_rate
from tether.evaluation.target import (
    Target,
    checkpoint_targets,
    load,
    load_checkpoint,
    reference_spec,
    resolve_target,
    same_model,
)
from tether.rundir import RunDir

__all__ = [
    "EvalOptions",
    "evaluate",
    "generate",
    "performance",
    "resolve_target",
    "run_eval",
    "text_metrics",
    "win_rate",
]


@dataclass
class EvalOptions:
    """The settings of one evaluation (``tether eval``'s options; see the module docstring)."""

    reference: str | None = None
    metrics: str | Sequence[str] = "auto"
    beta: float | None = None
    max_samples: int | None = None
    max_new_tokens: int = 32
    batch_size: int = 8
    judge: str | None = None
    """A reward model (``AutoModelForSequenceClassification`` with one output) scoring the generations."""
    temperature: float = 0.0
    """0: greedy; else the sampling temperature of the generations (ε-DPO's protocol: 1.0)."""
    top_p: float = 1.0
    samples_per_prompt: int = 1
    kl_samples: int = 1
    seed: int = 0
    max_length: int | None = None
    chat_template: str | None = None
    lm_eval_tasks: Sequence[str] | str | None = None
    generate_text: bool = True
    cache: bool = True
    progress: bool = True


def _sampling(o: EvalOptions) -> Sampling:
    """The generation settings, checked (one line each)."""
    if not o.temperature >= 0:
        raise TetherError(f"--temperature: must be ≥ 0 (0 is greedy), got {o.temperature}")
    if not 0 < o.top_p <= 1:
        raise TetherError(f"--top-p: must be in (0, 1], got {o.top_p}")
    if o.samples_per_prompt < 1:
        raise TetherError(f"--samples-per-prompt: must be ≥ 1, got {o.samples_per_prompt}")
    if o.samples_per_prompt > 1 and o.temperature == 0:
        raise TetherError("--samples-per-prompt: greedy decoding gives one generation; set --temperature > 0")
    return Sampling(o.temperature, o.top_p, o.samples_per_prompt, o.seed)


def _method_info(cfg: Config | None) -> tuple[str | None, float | None, bool | None]:
    """(method name, its β, whether it is reference-based) from a run config."""
    if cfg is None:
        return None, None, None
    method, hp = cfg.resolved_method()
    return method.name, hp.get("beta"), method.needs_reference


def evaluate(
    model_spec: str | Target,
    data: str,
    options: EvalOptions | None = None,
    *,
    out: str | Path | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Evaluate ``model_spec`` (a run directory or a model) on ``data``; see the module docstring.

    ``options`` (or the same names as keywords, ``settings``) are :class:`EvalOptions`. Returns the
    JSON-able result (:meth:`EvalResult.to_dict` of :func:`run_eval`'s): ``metrics`` (the model's numbers),
    ``reference_metrics`` (the same numbers for the reference where meaningful), ``win`` counts,
    ``samples`` (each generation), ``notes`` and metadata. Writes it to ``out`` when given. With ``cache``
    (the default) the reference's log-prob tables and greedy generations are kept under ``$TETHER_CACHE``
    (keyed by its weights, the token ids and the settings), so evaluating several runs against the same
    starting model computes them once. Every input problem is raised (as
    :class:`TetherError`/:class:`DataError`) before a weight loads.
    """
    result = run_eval(model_spec, data, options, **settings)
    if out is not None:
        path = Path(out)
        RunDir(path.parent).write_eval(result, path)
    return result.to_dict()


@dataclass
class _Prepared:
    """An evaluation before its weights load: the target, its reference, the data and the settings."""

    target: Target
    ref_spec: str
    rows: list[data_mod.Row]
    kind: str
    groups: list[str]
    sampling: Sampling
    settings: EvalSettings
    method: str | None
    ref_based: bool | None
    model_path: Path
    ref_path: Path
    same: bool
    tokenizer: Any
    examples: list[data_mod.Example]
    prompts_all: list[Prompt]
    notes: list[str]


def _prepare(model_spec: str | Target, data: str, o: EvalOptions) -> _Prepared:
    """Everything but the weights: each input problem raised here."""
    max_length, chat_template = o.max_length, o.chat_template
    notes: list[str] = []
    target = model_spec if isinstance(model_spec, Target) else resolve_target(model_spec)
    score = target.head == "score"  # a reward model: its scores, no reference
    ref_spec = target.model_path if score else reference_spec(target, o.reference, notes)
    rows, kind, groups = read_data(data, o.metrics, o.generate_text, target.head)
    sampling = _sampling(o)
    if o.judge is not None:
        from tether.evaluation.judge import check_judge

        if "generation" not in groups:
            raise TetherError("--judge: scores generations, but the generation metrics are off")
        check_judge(o.judge)

    if any(METRIC_GROUPS[g].generates for g in groups):
        models.check_generation_length(o.max_new_tokens, target.model_path)

    # Settings from the run config (its defaults included), then the arguments.
    run_cfg = target.run_cfg
    run_data = run_cfg.data if run_cfg else DataConfig()  # a plain model: the config's defaults
    max_length = max_length or run_data.max_length
    chat_template = chat_template or run_data.chat_template
    tokenization = dataclasses.replace(
        run_data.tokenization(), max_length=max_length, chat_template=chat_template, drop_long_prompts=False
    )  # the turns and prompt cut the run trained with; every row evaluated
    dtype = run_cfg.model.dtype if run_cfg else "float32"
    method_name, method_beta, ref_based = _method_info(target.run_cfg)
    beta = float(o.beta if o.beta is not None else method_beta if method_beta is not None else 0.1)

    # Tokenizers (a GGUF is converted here, after the data are known to be readable).
    progress = o.progress
    model_path = models.resolve_model_dir(target.model_path, progress=progress)
    tokenizer = models.load_tokenizer(target.tokenizer_path or model_path)
    same = score or (
        target.adapter is None
        and target.checkpoint is None
        and same_model(str(model_path), str(models.resolve_model_dir(ref_spec, progress=progress)))
    )
    ref_path = model_path if same else models.resolve_model_dir(ref_spec, progress=progress)
    if not same and models.load_tokenizer(ref_path).get_vocab() != tokenizer.get_vocab():
        raise TetherError(
            f"reference {ref_spec} has a different tokenizer than {model_spec} (vocabularies differ); "
            "a reference must share the model's tokenizer"
        )

    def tokenize(rs: list[data_mod.Row], k: str) -> list[data_mod.Example]:
        return tokenization.tokenize_rows(rs, tokenizer, kind=k).examples  # type: ignore[arg-type]

    examples, prompts_all = examples_and_prompts(rows, kind, tokenize)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    settings = EvalSettings(
        beta=beta,
        max_samples=o.max_samples,
        max_new_tokens=o.max_new_tokens,
        batch_size=o.batch_size,
        kl_samples=o.kl_samples,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        samples_per_prompt=sampling.samples,
        seed=o.seed,
        max_length=max_length,
        chat_template=chat_template,
        dtype=dtype,
        device=str(device),
        cache=o.cache,
    )
    return _Prepared(
        target=target,
        ref_spec=ref_spec,
        rows=rows,
        kind=kind,
        groups=groups,
        sampling=sampling,
        settings=settings,
        method=method_name,
        ref_based=ref_based,
        model_path=model_path,
        ref_path=ref_path,
        same=same,
        tokenizer=tokenizer,
        examples=examples,
        prompts_all=prompts_all,
        notes=notes,
    )


def _load(p: _Prepared, o: EvalOptions) -> Loaded:
    """The model and its reference on the device, with the reference cache."""
    from tether.engine.logprobs import LogProbModel

    target, dtype, device = p.target, p.settings.dtype, torch.device(p.settings.device)
    if target.checkpoint is not None:
        model = load_checkpoint(target, dtype, device, o.progress)
    else:
        model = load(str(p.model_path), target.adapter, dtype, device, o.progress, target.head)
    ref_model = model if p.same else load(str(p.ref_path), None, dtype, device, o.progress)
    run_cfg = target.run_cfg
    ref_cache = run_cfg.reference.cache_dir if run_cfg else None  # the run's own cache, if set
    return Loaded(
        p.tokenizer,
        model,
        ref_model,
        LogProbModel(model),
        LogProbModel(ref_model),
        p.same,
        device,
        o.batch_size,
        o.progress,
        dtype=dtype,
        ref_fingerprint=models.model_fingerprint(p.ref_path) if o.cache and not p.same else None,
        cache_root=Path(ref_cache) if ref_cache else default_cache_dir(),
        use_cache=o.cache,
    )


def _compute(inputs: GroupInputs) -> GroupResult:
    """Every metric group of the evaluation, in :func:`compute_order`, merged (generating groups only
    when there are prompts)."""
    merged = GroupResult(samples=[])
    for group in compute_order(inputs.groups):
        if group.generates and not inputs.prompts:
            continue
        got: GroupResult = group.function()(inputs)
        merged.metrics.update(got.metrics)
        merged.reference_metrics.update(got.reference_metrics)
        merged.notes.extend(got.notes)
        if got.win is not None:
            merged.win = got.win
        if got.samples is not None:
            merged.samples = got.samples
        merged.per_prompt.update(got.per_prompt)
    return merged


def _outcomes(prompts: list[Prompt], per_prompt: dict[str, list[Any]]) -> list[PromptOutcome]:
    """One :class:`PromptOutcome` per generated prompt (none when nothing was generated), its id a hash of
    the prompt's token ids and of the answer it is compared with (the chosen answer)."""
    if not per_prompt:
        return []
    return [
        PromptOutcome(
            file=p.row.file,
            line=p.row.line,
            id=hash_key(p.ids, p.reference_text)[:16],
            **{k: v[i] for k, v in per_prompt.items()},
        )
        for i, p in enumerate(prompts)
    ]


def _lm_eval(ld: Loaded, o: EvalOptions) -> tuple[dict[str, Any], str | None]:
    """lm-evaluation-harness's numbers of ``--lm-eval-tasks``, or a note saying why they were skipped."""
    tasks = o.lm_eval_tasks or ""
    names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
    res, note = run_lm_eval(ld.model, ld.tokenizer, [t for t in names if t], o.batch_size, o.max_samples)
    return (res or {}) if not note else {}, note


def run_eval(
    model_spec: str | Target, data: str, options: EvalOptions | None = None, **settings: Any
) -> EvalResult:
    """:func:`evaluate`, as the typed result (nothing written)."""
    o = dataclasses.replace(options or EvalOptions(), **settings)
    t0 = time.time()
    p = _prepare(model_spec, data, o)
    prompts = p.prompts_all[: o.max_samples] if o.max_samples else p.prompts_all
    ld = _load(p, o)
    judge = None
    if "generation" in p.groups and prompts and o.judge is not None:
        from tether.evaluation.judge import load_judge

        judge = load_judge(o.judge, ld.device, p.settings.dtype)
    inputs = GroupInputs(
        loaded=ld,
        rows=p.rows,
        kind=p.kind,
        groups=p.groups,
        examples=p.examples,
        prompts=prompts,
        beta=p.settings.beta,
        ref_based=p.ref_based,
        sampling=p.sampling,
        max_new_tokens=o.max_new_tokens,
        kl_samples=o.kl_samples,
        judge=judge,
    )
    got = _compute(inputs)
    metrics, notes = got.metrics, p.notes + got.notes
    if o.lm_eval_tasks:
        lm, note = _lm_eval(ld, o)
        metrics.update(lm)
        notes += [note] if note else []
    target = p.target
    return EvalResult(
        model=str(target.spec),
        checkpoint=str(target.checkpoint) if target.checkpoint else None,
        model_path=str(p.model_path),
        adapter=str(target.adapter) if target.adapter else None,
        reference=str(p.ref_spec),
        reference_path=str(p.ref_path),
        reference_is_model=p.same,
        run_dir=str(target.run_dir) if target.run_dir else None,
        method=p.method,
        data=str(data),
        kind=p.kind,
        metric_groups=p.groups,
        n_rows=len(p.rows),
        n_examples=len(p.examples),
        n_prompts=len(p.prompts_all),
        n_generation_prompts=len(prompts) if any(METRIC_GROUPS[g].generates for g in p.groups) else 0,
        settings=p.settings,
        reference_cache=ld.cache_log,
        judge=o.judge if o.judge is not None else "task checker",
        judge_cache=judge.cache_log if judge is not None else {},
        judge_fingerprint=judge.fingerprint if judge is not None else None,
        metrics=metrics,
        reference_metrics=got.reference_metrics,
        win=Win(**got.win) if got.win is not None else None,
        notes=notes,
        samples=got.samples or [],
        seconds=round(time.time() - t0, 3),
        outcomes=_outcomes(prompts, got.per_prompt),
    )


def evaluate_checkpoints(
    run: str,
    data: str,
    options: EvalOptions | None = None,
    *,
    every: int | None = None,
    out: str | Path | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """:func:`evaluate` of every saved checkpoint of ``run`` (or those at multiples of ``every`` steps)
    and of its final model, one row each in step order; the last row is the final model's evaluation.

    Every checkpoint is checked before a weight loads; the reference's tables and generations are
    computed for the first row and read from the cache for the others. Written to ``out`` (default
    ``<run>/eval_checkpoints.json``)."""
    from tether.rundir import RunDir

    o = dataclasses.replace(options or EvalOptions(), **settings)
    targets, steps = checkpoint_targets(run, every)
    read_data(data, o.metrics, o.generate_text)  # a bad data file fails before the first row
    rows = []
    for target, step in zip(targets, steps, strict=True):
        res = evaluate(target, data, o)
        res.pop("samples", None)
        rows.append({"step": step, **res})
    result = {"run": str(run), "data": str(data), "rows": rows}
    rd = RunDir(run)
    rd.write_json(Path(out) if out is not None else rd.eval_checkpoints, result)
    return result
