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
                  Σ_t log π(y_t) − log π_ref(y_t), both scored by the log-prob engine (the KL of the
                  first ``max_new_tokens`` tokens when a sample is cut there).
``mc``            multiple-choice rows (``prompt``, ``options``, ``label``): argmax over options of
                  log π(option | prompt), the option rendered as the whole response.
================  ==========================================================================================

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
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import tether.data as data_mod
import tether.engine.models as models
from tether.config import Config, DataConfig
from tether.data import kinds
from tether.engine.cache import cached_json, default_cache_dir, hash_key, load_or_fill, reference_table_path
from tether.engine.reference import compute_table
from tether.errors import DataError, Problem, TetherError
from tether.evaluation.generation import decode, eos_ids, generate
from tether.evaluation.groups import performance, select_metrics
from tether.evaluation.lmeval import run_lm_eval
from tether.evaluation.metrics import (
    bootstrap_interval,
    deviation_metrics,
    logps_inputs,
    pairwise_metrics,
    preference_rate,
    text_metrics,
    win_rate,
)
from tether.evaluation.target import (
    Target,
    checkpoint_targets,
    load,
    load_checkpoint,
    reference_spec,
    resolve_target,
    same_model,
)

__all__ = [
    "EvalOptions",
    "evaluate",
    "generate",
    "performance",
    "resolve_target",
    "text_metrics",
    "win_rate",
]


@dataclass(frozen=True)
class _Seq:
    """An engine example (see :func:`tether.engine.logprobs.collate`)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int] | None = None


@dataclass(frozen=True)
class Sampling:
    """How generations are drawn: greedy at ``temperature`` 0, else sampled at ``temperature`` with
    nucleus ``top_p``; ``samples`` per prompt; ``seed`` seeds the sampling."""

    temperature: float = 0.0
    top_p: float = 1.0
    samples: int = 1
    seed: int = 0


@dataclass
class _Prompt:
    ids: list[int]
    row: data_mod.Row
    reference_text: str


# --------------------------------------------------------------------------------------- evaluate


def _method_info(cfg: Config | None) -> tuple[str | None, float | None, bool | None]:
    """(method name, its β, whether it is reference-based) from a run config."""
    if cfg is None:
        return None, None, None
    method, hp = cfg.resolved_method()
    return method.name, hp.get("beta"), method.needs_reference


@dataclass
class _Loaded:
    """What every metric group shares once the weights are loaded."""

    tokenizer: Any
    model: Any
    ref_model: Any
    pi: Any
    pi_ref: Any
    same: bool
    device: torch.device
    batch_size: int
    progress: bool
    dtype: str = "float32"
    ref_fingerprint: str | None = None
    """The reference's weights fingerprint; None: nothing of the reference is cached."""
    cache_root: Path | None = None
    cache_log: dict[str, str] = field(default_factory=dict)
    use_cache: bool = True
    """Whether judge scores are cached (``--no-cache`` turns every cache off)."""

    def sums(
        self,
        examples: Sequence[Any],
        desc: str,
        *,
        reference: bool = False,
        indices: Sequence[int] | None = None,
    ) -> torch.Tensor:
        """Summed response log-probs (``[n, 2]``) of the model, or of the reference (only ``indices``'
        rows filled when given)."""
        return compute_table(
            self.pi_ref if reference else self.pi,
            examples,
            batch_size=self.batch_size,
            pad_id=self.tokenizer.pad_token_id,
            device=self.device,
            indices=indices,
            desc=f"{desc} ({'reference' if reference else 'model'})",
            progress=self.progress,
        ).cpu()

    def both(
        self, examples: Sequence[Any], desc: str, *, cache: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's and the reference's tables (one pass when the reference is the model).

        The reference's table is read from (and written to) the reference log-prob cache directory, keyed by
        the reference's weights, the token ids, the dtype and the device type, unless ``cache`` is off."""
        pol = self.sums(examples, desc)
        if self.same:
            return pol, pol
        if not cache or self.ref_fingerprint is None or self.cache_root is None:
            return pol, self.sums(examples, desc, reference=True)
        table, status = load_or_fill(
            reference_table_path(
                self.cache_root, self.ref_fingerprint, examples, dtype=self.dtype, device=self.device.type
            ),
            range(len(examples)),
            lambda rows: self.sums(examples, desc, reference=True, indices=rows),
            n=len(examples),
            is_main=True,
            barrier=lambda: None,
        )
        self.cache_log[desc] = status
        return pol, table

    def generations(
        self, ids: list[list[int]], max_new_tokens: int, sampling: Sampling, *, reference: bool = False
    ) -> list[list[str]]:
        """``sampling.samples`` generations per prompt of the model (or the reference), decoded without
        their EOS: greedy at temperature 0, else sampled (seeded with ``sampling.seed``)."""
        model = self.ref_model if reference else self.model
        eos = eos_ids(model, self.tokenizer)
        sample = sampling.temperature > 0
        if sample:
            torch.manual_seed(sampling.seed)
            if self.device.type == "cuda":
                torch.cuda.manual_seed_all(sampling.seed)
        raw = generate(
            model,
            self.tokenizer,
            ids,
            max_new_tokens=max_new_tokens,
            batch_size=self.batch_size,
            sample=sample,
            num_samples=sampling.samples,
            temperature=sampling.temperature if sample else 1.0,
            top_p=sampling.top_p,
            desc=f"generating ({'reference' if reference else 'model'})",
            progress=self.progress,
        )
        return [[decode(self.tokenizer, g, eos) for g in gs] for gs in raw]

    def reference_generations(
        self, ids: list[list[int]], max_new_tokens: int, sampling: Sampling
    ) -> list[list[str]]:
        """The reference's generations, cached by its weights, the prompts and the settings."""
        if self.ref_fingerprint is None or self.cache_root is None:
            return self.generations(ids, max_new_tokens, sampling, reference=True)
        settings = {
            "max_new_tokens": max_new_tokens,
            "eos": eos_ids(self.ref_model, self.tokenizer),
            "pad": self.tokenizer.pad_token_id,
            "batch_size": self.batch_size,  # left padding within a batch can flip a greedy token
            "dtype": self.dtype,
            "sampling": dataclasses.asdict(sampling) if sampling.temperature > 0 else sampling.samples,
            "v": 2,
        }
        key = hash_key(self.ref_fingerprint, settings, self.device.type, ids)
        texts, self.cache_log["generating"] = cached_json(
            self.cache_root / "generations" / f"{key}.json",
            lambda: self.generations(ids, max_new_tokens, sampling, reference=True),
            lambda v: (
                isinstance(v, list)
                and len(v) == len(ids)
                and all(isinstance(x, list) and len(x) == sampling.samples for x in v)
            ),
        )
        return [[str(x) for x in xs] for xs in texts]


def _read_data(
    data: str, metrics: str | Sequence[str], generate_text: bool
) -> tuple[list[data_mod.Row], str, list[str]]:
    """The rows, their kind and the metric groups to compute (every problem raised before a weight loads)."""
    if not str(data).startswith("hf:") and not Path(data).exists():
        raise DataError([Problem(str(data), None, None, "file not found")])
    rows = data_mod.read_rows(str(data))
    kind = kinds.detect_kind(rows)
    if kind == "mc":
        kinds.check_mc(rows)
    groups = select_metrics(metrics, kind, str(data), generate_text)
    if "generation" in groups and kind == "mc" and not any("answer" in r.data for r in rows):
        if metrics not in ("auto", "", None):
            raise TetherError(
                f"--metrics generation: {data} has no 'answer' field to check generations against"
            )
        groups.remove("generation")
    return rows, kind, groups


def _examples_and_prompts(
    rows: list[data_mod.Row], kind: str, tokenize: Any
) -> tuple[list[data_mod.Example], list[_Prompt]]:
    """Engine examples (one per MC option) and the distinct prompts with their reference answer text."""
    if kind == "mc":
        examples = tokenize(kinds.option_rows(rows), "sft")
        prompts, pos = [], 0
        for r in rows:
            ref_text = str(r.data.get("answer", r.data["options"][r.data["label"]]))
            prompts.append(_Prompt(examples[pos].prompt_ids, r, ref_text))
            pos += len(r.data["options"])
        return examples, prompts
    examples = tokenize(rows, kind)
    by_line = {(r.file, r.line): r for r in rows}
    seen: set[tuple[int, ...]] = set()
    prompts = []
    for e in examples:
        if tuple(e.prompt_ids) in seen:
            continue
        seen.add(tuple(e.prompt_ids))
        row = by_line[(e.file, e.line)]
        answer = row.data.get(kinds.KINDS[kind].answer_field or "")
        if answer is None and "messages" in row.data:
            answer = row.data["messages"]
        prompts.append(
            _Prompt(e.prompt_ids, row, kinds.answer_text(answer) or str(row.data.get("answer", "")))
        )
    return examples, prompts


def _logprob_metrics(
    ld: _Loaded,
    examples: list[data_mod.Example],
    kind: str,
    groups: list[str],
    beta: float,
    ref_based: bool | None,
    m: dict[str, Any],
    rm: dict[str, Any],
) -> None:
    """``deviation`` and ``pairwise`` (into ``m``; the reference's own likelihood numbers into ``rm``)."""
    if ld.same and "pairwise" not in groups:
        m["deviation"] = 0.0  # the reference is the model: 0 by construction, no forward pass needed
        return
    pol, ref = ld.both(examples, "log-probs")
    paired = kind == "pairs"
    n_tokens = torch.tensor(
        [[len(e.chosen_ids), len(e.rejected_ids or [])] for e in examples], dtype=torch.float32
    )
    if "deviation" in groups:
        m.update(deviation_metrics(logps_inputs(pol, ref, n_tokens, paired)))
    if not paired or "pairwise" not in groups:
        return
    pw = pairwise_metrics(logps_inputs(pol, ref, n_tokens, paired), beta)
    use_reward = ref_based if ref_based is not None else not ld.same
    kind_name = "reward" if use_reward else "likelihood"
    m["pairwise/accuracy"] = pw[f"pairwise/{kind_name}_accuracy"]
    m["pairwise/margin"] = pw[f"pairwise/{kind_name}_margin"]
    m["pairwise/kind"] = kind_name
    m.update(pw)
    rpw = pairwise_metrics(logps_inputs(ref, ref, n_tokens, paired), beta)
    rm["pairwise/likelihood_accuracy"] = rpw["pairwise/likelihood_accuracy"]
    rm["pairwise/likelihood_margin"] = rpw["pairwise/likelihood_margin"]
    if not use_reward:
        rm["pairwise/accuracy"] = rm["pairwise/likelihood_accuracy"]
        rm["pairwise/margin"] = rm["pairwise/likelihood_margin"]


def _mc_metrics(
    ld: _Loaded, examples: list[data_mod.Example], rows: list[data_mod.Row], m: dict, rm: dict
) -> None:
    """Multiple-choice accuracy: argmax over each row's options of log π(option | prompt)."""
    table, rtable = ld.both(examples, "options")
    for out_m, t in ((m, table[:, 0]), (rm, rtable[:, 0])):
        pos, correct = 0, 0
        for r in rows:
            k = len(r.data["options"])
            correct += int(int(t[pos : pos + k].argmax()) == r.data["label"])
            pos += k
        out_m["mc/accuracy"] = correct / len(rows)
    m["mc/n"] = len(rows)


def _rate_columns(m: dict, name: str, rate: dict[str, Any]) -> None:
    """``name`` (the win rate), ``name/ci_low``, ``name/ci_high`` into ``m``."""
    m[name] = rate["win_rate"]
    m[f"{name}/ci_low"] = rate["ci_low"]
    m[f"{name}/ci_high"] = rate["ci_high"]


def _generation_metrics(
    ld: _Loaded,
    prompts: list[_Prompt],
    max_new_tokens: int,
    sampling: Sampling,
    judge: Any,
    m: dict,
    rm: dict,
    notes: list[str],
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Generations of both models (``sampling``): task success (overall, per family), the win rates
    against the chosen answers and against the reference's generations (scored by the reward-model
    ``judge`` when given, else by the task checker), mean reward, BLEU/ROUGE.

    Returns the win counts against the reference and one sample record per prompt.
    """
    import tether.data.tasks as tasks
    from tether.evaluation.judge import score

    ids = [p.ids for p in prompts]
    gen = ld.generations(ids, max_new_tokens, sampling)
    rgen = gen if ld.same else ld.reference_generations(ids, max_new_tokens, sampling)
    chosen = [p.reference_text for p in prompts]
    checkable = [i for i, p in enumerate(prompts) if "source" in p.row.data and "answer" in p.row.data]
    ok = {i: [tasks.check(prompts[i].row.data, g) for g in gen[i]] for i in checkable}
    rok = {i: [tasks.check(prompts[i].row.data, g) for g in rgen[i]] for i in checkable}
    cok = {i: tasks.check(prompts[i].row.data, chosen[i]) for i in checkable}
    win = None
    if checkable:
        m["generation/n"] = len(checkable)
        for out_m, c in ((m, ok), (rm, rok)):
            per_prompt = [sum(v) / len(v) for v in c.values()]
            out_m["generation/success"] = sum(per_prompt) / len(per_prompt)
            low, high = bootstrap_interval(per_prompt, seed=sampling.seed)
            out_m["generation/success/ci_low"], out_m["generation/success/ci_high"] = low, high
            for fam in sorted({str(prompts[i].row.data["source"]) for i in checkable}):
                fam_i = [i for i in checkable if str(prompts[i].row.data["source"]) == fam]
                out_m[f"generation/success/{fam}"] = sum(sum(c[i]) / len(c[i]) for i in fam_i) / len(fam_i)
    scores = rscores = cscores = None
    if judge is not None:
        prompt_of = [p.row.data.get("prompt", p.row.data.get("messages", "")) for p in prompts]

        def judged(texts: list[list[str]], desc: str) -> list[list[float]]:
            flat = [(prompt_of[i], t) for i, ts in enumerate(texts) for t in ts]
            got = score(
                judge,
                [f[0] for f in flat],
                [f[1] for f in flat],
                desc=desc,
                batch_size=ld.batch_size,
                cache_root=ld.cache_root if ld.use_cache else None,
            )
            out, k = [], 0
            for ts in texts:
                out.append(got[k : k + len(ts)])
                k += len(ts)
            return out

        scores = judged(gen, "model")
        rscores = scores if ld.same else judged(rgen, "reference")
        cscores = judged([[c] for c in chosen], "chosen")
        mean = lambda xs: sum(x for s in xs for x in s) / sum(len(s) for s in xs)  # noqa: E731
        m["judge/reward"], rm["judge/reward"] = mean(scores), mean(rscores)
        m["judge/reward_chosen"] = mean(cscores)
        vs_chosen = preference_rate(scores, cscores, seed=sampling.seed)
        win = preference_rate(scores, rscores, seed=sampling.seed)
        _rate_columns(m, "win_rate/chosen", vs_chosen)
        _rate_columns(rm, "win_rate/chosen", preference_rate(rscores, cscores, seed=sampling.seed))
    elif checkable:  # the offline judge: the task checker (1 correct, 0 wrong)
        as_score = lambda c: [[float(x) for x in c[i]] for i in checkable]  # noqa: E731
        chosen_score = [[float(cok[i])] for i in checkable]
        vs_chosen = preference_rate(as_score(ok), chosen_score, seed=sampling.seed)
        win = preference_rate(as_score(ok), as_score(rok), seed=sampling.seed)
        _rate_columns(m, "win_rate/chosen", vs_chosen)
        _rate_columns(rm, "win_rate/chosen", preference_rate(as_score(rok), chosen_score, seed=sampling.seed))
    else:
        notes.append(
            "task success and win rate: skipped (no row has both 'source' and 'answer'; try --judge)"
        )
    if win is not None:
        _rate_columns(m, "win_rate", win)
        m.update({f"win/{k}": win[k] for k in ("wins", "ties", "losses")})
    refs = [p.reference_text for p in prompts]
    try:
        m.update(text_metrics([g[0] for g in gen], refs))
        rm.update(text_metrics([g[0] for g in rgen], refs))
    except ImportError:
        notes.append("BLEU/ROUGE: skipped (needs sacrebleu and rouge-score: pip install 'tether[eval]')")
    samples = []
    for i, p in enumerate(prompts):
        rec = {
            "file": p.row.file,
            "line": p.row.line,
            "prompt": p.row.data.get("prompt"),
            "target": p.reference_text,
            "model": gen[i][0],
            "reference": rgen[i][0],
            "correct": ok[i][0] if i in ok else None,
            "reference_correct": rok[i][0] if i in rok else None,
        }
        if sampling.samples > 1:
            rec["model_samples"], rec["reference_samples"] = gen[i], rgen[i]
        if scores is not None and rscores is not None and cscores is not None:
            rec["reward"], rec["reference_reward"], rec["target_reward"] = (
                scores[i],
                rscores[i],
                cscores[i][0],
            )
        samples.append(rec)
    return win, samples


def _kl_metrics(
    ld: _Loaded, prompts: list[_Prompt], max_new_tokens: int, kl_samples: int, seed: int, m: dict
) -> None:
    """KL(π‖π_ref) on ``kl_samples`` completions per prompt sampled from π (0 when the reference is π)."""
    if ld.same:
        m["kl"], m["kl/per_token"], m["kl/samples"] = 0.0, 0.0, 0  # 0 by construction: nothing sampled
        return
    torch.manual_seed(seed)
    if ld.device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    drawn = generate(
        ld.model,
        ld.tokenizer,
        [p.ids for p in prompts],
        max_new_tokens=max_new_tokens,
        batch_size=ld.batch_size,
        sample=True,
        num_samples=kl_samples,
        desc="sampling for KL",
        progress=ld.progress,
    )
    seqs = [_Seq(list(p.ids), y) for p, ys in zip(prompts, drawn, strict=True) for y in ys]
    lp, lr = (t[:, 0] for t in ld.both(seqs, "KL", cache=False))  # the model's own samples: never reused
    n_tok = sum(len(s.chosen_ids) for s in seqs)
    m["kl"] = float((lp - lr).mean())
    m["kl/per_token"] = float((lp - lr).sum() / n_tok)
    m["kl/samples"] = len(seqs)


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
    JSON-able result: ``metrics`` (the model's numbers), ``reference_metrics`` (the same numbers for the
    reference where meaningful), ``win`` counts, ``samples`` (each generation), ``notes`` and metadata.
    Writes it to ``out`` when given. With ``cache`` (the default) the reference's log-prob tables and
    greedy generations are kept under ``$TETHER_CACHE`` (keyed by its weights, the token ids and the
    settings), so evaluating several runs against the same starting model computes them once. Every
    input problem is raised (as :class:`TetherError`/:class:`DataError`) before a weight loads.
    """
    o = dataclasses.replace(options or EvalOptions(), **settings)
    reference, metrics, beta, max_samples = o.reference, o.metrics, o.beta, o.max_samples
    max_new_tokens, batch_size, kl_samples, seed = o.max_new_tokens, o.batch_size, o.kl_samples, o.seed
    max_length, chat_template, cache, progress = o.max_length, o.chat_template, o.cache, o.progress
    t0 = time.time()
    notes: list[str] = []
    target = model_spec if isinstance(model_spec, Target) else resolve_target(model_spec)
    ref_spec = reference_spec(target, reference, notes)
    rows, kind, groups = _read_data(data, metrics, o.generate_text)
    sampling = _sampling(o)
    if o.judge is not None:
        from tether.evaluation.judge import check_judge

        if "generation" not in groups:
            raise TetherError("--judge: scores generations, but the generation metrics are off")
        check_judge(o.judge)

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
    beta = float(beta if beta is not None else method_beta if method_beta is not None else 0.1)

    # Tokenizers (a GGUF is converted here, after the data are known to be readable).
    model_path = models.resolve_model_dir(target.model_path, progress=progress)
    tokenizer = models.load_tokenizer(target.tokenizer_path or model_path)
    same = (
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

    examples, prompts_all = _examples_and_prompts(rows, kind, tokenize)
    prompts = prompts_all[:max_samples] if max_samples else prompts_all

    # Weights.
    from tether.engine.logprobs import LogProbModel

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if target.checkpoint is not None:
        model = load_checkpoint(target, dtype, device, progress)
    else:
        model = load(str(model_path), target.adapter, dtype, device, progress)
    ref_model = model if same else load(str(ref_path), None, dtype, device, progress)
    ref_cache = run_cfg.reference.cache_dir if run_cfg else None  # the run's own cache, if set
    ld = _Loaded(
        tokenizer,
        model,
        ref_model,
        LogProbModel(model),
        LogProbModel(ref_model),
        same,
        device,
        batch_size,
        progress,
        dtype=dtype,
        ref_fingerprint=models.model_fingerprint(ref_path) if cache and not same else None,
        cache_root=Path(ref_cache) if ref_cache else default_cache_dir(),
        use_cache=cache,
    )
    m: dict[str, Any] = {}
    rm: dict[str, Any] = {}
    win: dict[str, Any] | None = None
    samples: list[dict[str, Any]] = []
    if "pairwise" in groups or "deviation" in groups:
        _logprob_metrics(ld, examples, kind, groups, beta, ref_based, m, rm)
    if "mc" in groups:
        _mc_metrics(ld, examples, rows, m, rm)
    judge = None
    if "generation" in groups and prompts:
        if o.judge is not None:
            from tether.evaluation.judge import load_judge

            judge = load_judge(o.judge, device, dtype)
        win, samples = _generation_metrics(ld, prompts, max_new_tokens, sampling, judge, m, rm, notes)
    if "kl" in groups and prompts:
        _kl_metrics(ld, prompts, max_new_tokens, kl_samples, seed, m)
    if o.lm_eval_tasks:
        tasks = o.lm_eval_tasks
        names = [t.strip() for t in tasks.split(",")] if isinstance(tasks, str) else list(tasks)
        res, note = run_lm_eval(model, tokenizer, [t for t in names if t], batch_size, max_samples)
        if note:
            notes.append(note)
        else:
            m.update(res or {})

    result = {
        "model": str(target.spec),
        "checkpoint": str(target.checkpoint) if target.checkpoint else None,
        "model_path": str(model_path),
        "adapter": str(target.adapter) if target.adapter else None,
        "reference": str(ref_spec),
        "reference_path": str(ref_path),
        "reference_is_model": same,
        "run_dir": str(target.run_dir) if target.run_dir else None,
        "method": method_name,
        "data": str(data),
        "kind": kind,
        "metric_groups": groups,
        "n_rows": len(rows),
        "n_examples": len(examples),
        "n_prompts": len(prompts_all),
        "n_generation_prompts": len(prompts) if ({"generation", "kl"} & set(groups)) else 0,
        "settings": {
            "beta": beta,
            "max_samples": max_samples,
            "max_new_tokens": max_new_tokens,
            "batch_size": batch_size,
            "kl_samples": kl_samples,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "samples_per_prompt": sampling.samples,
            "seed": seed,
            "max_length": max_length,
            "chat_template": chat_template,
            "dtype": dtype,
            "device": str(device),
            "cache": cache,
        },
        "reference_cache": ld.cache_log,
        "judge": o.judge if o.judge is not None else "task checker",
        "judge_cache": judge.cache_log if judge is not None else {},
        "metrics": m,
        "reference_metrics": rm,
        "win": win,
        "notes": notes,
        "samples": samples,
        "seconds": round(time.time() - t0, 3),
    }
    if out is not None:
        path = Path(out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    return result


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
    _read_data(data, o.metrics, o.generate_text)  # a bad data file fails before the first row
    rows = []
    for target, step in zip(targets, steps, strict=True):
        res = evaluate(target, data, o)
        res.pop("samples", None)
        rows.append({"step": step, **res})
    result = {"run": str(run), "data": str(data), "rows": rows}
    rd = RunDir(run)
    rd.write_json(Path(out) if out is not None else rd.eval_checkpoints, result)
    return result
