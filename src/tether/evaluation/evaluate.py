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
``generation``    greedy generations (left padding, batched, stop at EOS, ``max_new_tokens``): task success
                  by :func:`tether.data.tasks.check` on rows with ``source`` + ``answer`` (overall and per family),
                  the win rate against the reference model's generations, and BLEU-4 (sacrebleu) and
                  ROUGE-1/2/L F1 (rouge-score, stemmed) against the chosen/completion/answer text.
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
evaluating several runs against one starting model computes them once. An unreadable cache file is
recomputed. ``--no-cache`` recomputes them.

The reference defaults to a run's starting model (``model.name`` of its config, or of stage 1 for an
sDPO run). For a plain model with no ``--reference`` the reference is the model itself: reference-relative
numbers (KL, deviation, reward margins) are then 0 by construction, the win rate is 0.5, and the pairwise
accuracy is the likelihood one; a note says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml

import tether.data.rows as data_mod
import tether.engine.models as models
from tether.engine.reference import default_cache_dir
from tether.errors import DataError, Problem, TetherError, closest
from tether.evaluate_args import METRIC_GROUPS

__all__ = [
    "Target",
    "evaluate",
    "format_table",
    "generate",
    "main",
    "pairwise_metrics",
    "resolve_target",
    "text_metrics",
    "win_rate",
]

SUPPORTED: dict[str, tuple[str, ...]] = {
    "pairs": ("pairwise", "deviation", "generation", "kl"),
    "sft": ("deviation", "generation", "kl"),
    "mc": ("mc", "generation", "kl"),
}
KIND_NAMES = {
    "pairs": "preference pairs (prompt/chosen/rejected)",
    "sft": "SFT rows (prompt/completion or messages)",
    "mc": "multiple-choice rows (prompt/options/label)",
}
NEEDS = {
    "pairwise": "preference pairs (prompt/chosen/rejected)",
    "deviation": "pairs or SFT rows (a chosen or completion answer)",
    "mc": "multiple-choice rows (prompt, options and label)",
    "generation": "rows with a reference answer (chosen, completion or answer)",
}


# ------------------------------------------------------------------------------------------- target


@dataclass
class Target:
    """What ``model`` names: the weights to load and, for a run directory, its config."""

    spec: str
    model_path: str
    """A model directory, hub id, GGUF path or ``smollm2`` (resolved with :func:`models.resolve_model_dir`)."""
    adapter: Path | None = None
    """A LoRA adapter directory applied on top of ``model_path`` (a LoRA run without ``final/merged``)."""
    tokenizer_path: str | None = None
    run_dir: Path | None = None
    run_cfg: dict[str, Any] = field(default_factory=dict)
    start_model: str | None = None
    """The run's starting model (the default reference)."""


def _read_run_config(path: Path) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise TetherError(f"{path}: cannot read the run config ({str(exc).splitlines()[0]})") from None
    if not isinstance(cfg, dict):
        raise TetherError(f"{path}: not a run config (expected a mapping)")
    return cfg


def _has_weights(d: Path) -> bool:
    return (d / "config.json").is_file() and (
        any(d.glob("*.safetensors")) or any(d.glob("*.bin")) or any(d.glob("*.index.json"))
    )


def _run_target(spec: str, run: Path) -> Target:
    cfg = _read_run_config(run / "config.yaml")
    start = (cfg.get("model") or {}).get("name")
    final = run / "final"
    if _has_weights(final / "merged"):
        return Target(spec, str(final / "merged"), None, str(final / "merged"), run, cfg, start)
    if _has_weights(final):
        return Target(spec, str(final), None, str(final), run, cfg, start)
    if (final / "adapter_config.json").is_file():
        if not start:
            raise TetherError(
                f"{run / 'config.yaml'}: model.name missing; cannot load the LoRA adapter's base"
            )
        tok = str(final) if (final / "tokenizer_config.json").is_file() else start
        return Target(spec, start, final, tok, run, cfg, start)
    raise TetherError(
        f"{spec}: run directory has no model (no {final} with model weights or a LoRA adapter); "
        "train it to the end or pass a model directory"
    )


def resolve_target(spec: str) -> Target:
    """A run directory (``config.yaml`` + ``final/``), an sDPO run (``stages.json`` + ``stage-N/``), or a
    model spec. Cheap: nothing is loaded and no GGUF is converted."""
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "config.yaml").is_file():
        return _run_target(spec, path)
    if path.is_dir() and (path / "stages.json").is_file():
        stages = sorted(
            (d for d in path.glob("stage-*") if d.name[6:].isdigit() and (d / "config.yaml").is_file()),
            key=lambda d: int(d.name[6:]),
        )
        if not stages:
            raise TetherError(f"{spec}: sDPO run directory without stage-N/ run directories")
        target = _run_target(spec, stages[-1])
        first = _read_run_config(stages[0] / "config.yaml")
        target.start_model = (first.get("model") or {}).get("name") or target.start_model
        target.run_dir = path
        return target
    models.check_model_spec(spec)
    return Target(spec, spec, None, None)


def _same_model(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


# --------------------------------------------------------------------------------------------- data


def _text(value: Any) -> str:
    """A response field as plain text (the last message's content for a message list)."""
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return str(value[-1].get("content", ""))
    return value if isinstance(value, str) else ""


def _is_mc(row: data_mod.Row) -> bool:
    d = row.data
    return "options" in d and not ({"chosen", "rejected", "completion", "messages"} & set(d))


def detect_kind(rows: Sequence[data_mod.Row]) -> str:
    """``'mc'`` when every row has ``options`` and no response field, else :func:`data.detect_kind`."""
    if all(_is_mc(r) for r in rows):
        return "mc"
    return data_mod.detect_kind(rows)


def _check_mc(rows: Sequence[data_mod.Row]) -> None:
    problems = []
    for r in rows:
        d = r.data
        if not isinstance(d.get("prompt"), str) or not d["prompt"].strip():
            problems.append(Problem(r.file, r.line, "prompt", "must be a non-empty string"))
        opts = d.get("options")
        if not isinstance(opts, list) or len(opts) < 2 or not all(isinstance(o, str) and o for o in opts):
            problems.append(
                Problem(r.file, r.line, "options", "must be a list of at least 2 non-empty strings")
            )
            continue
        label = d.get("label")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(opts):
            problems.append(
                Problem(
                    r.file, r.line, "label", f"must be an option index in [0, {len(opts)}), got {label!r}"
                )
            )
    if problems:
        raise DataError(problems)


def _select_metrics(requested: str | Sequence[str], kind: str, data: str, generate: bool) -> list[str]:
    names = [m.strip() for m in requested.split(",")] if isinstance(requested, str) else list(requested)
    names = [m for m in names if m]
    if not names or names == ["auto"]:
        chosen = [m for m in SUPPORTED[kind] if generate or m not in ("generation", "kl")]
        return chosen
    for m in names:
        if m not in METRIC_GROUPS:
            raise TetherError(
                f"--metrics: unknown metric group '{m}'{closest(m, METRIC_GROUPS)}; "
                f"valid: auto, {', '.join(METRIC_GROUPS)}"
            )
        if m not in SUPPORTED[kind]:
            raise TetherError(f"--metrics {m}: needs {NEEDS[m]}, but {data} holds {KIND_NAMES[kind]}")
        if not generate and m in ("generation", "kl"):
            raise TetherError(f"--metrics {m}: it generates text, which --no-generate turns off")
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class _Seq:
    """An engine example (see :func:`tether.engine.logprobs.collate`)."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int] | None = None


@dataclass
class _Prompt:
    ids: list[int]
    row: data_mod.Row
    reference_text: str


# ---------------------------------------------------------------------------------- pure metrics


def win_rate(model_correct: Sequence[bool], reference_correct: Sequence[bool]) -> dict[str, Any]:
    """Win = model correct and reference wrong (1), tie = both right or both wrong (0.5), loss = 0."""
    if len(model_correct) != len(reference_correct):
        raise ValueError("win_rate: the two correctness vectors differ in length")
    n = len(model_correct)
    wins = sum(bool(m) and not bool(r) for m, r in zip(model_correct, reference_correct, strict=True))
    losses = sum(bool(r) and not bool(m) for m, r in zip(model_correct, reference_correct, strict=True))
    ties = n - wins - losses
    return {"win_rate": (wins + 0.5 * ties) / n if n else None, "wins": wins, "ties": ties, "losses": losses}


def text_metrics(generations: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU-4 (sacrebleu, 0-100; effective order, so one- and two-word answers still count) and the
    mean ROUGE-1/2/L F1 (rouge-score with the Porter stemmer, 0-1)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    gens, refs = list(generations), list(references)
    if len(gens) != len(refs):
        raise ValueError("text_metrics: generations and references differ in length")
    if not gens:
        return {}
    bleu = sacrebleu.corpus_bleu(gens, [refs], use_effective_order=True).score
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for g, r in zip(gens, refs, strict=True):
        scores = scorer.score(r, g)  # (target, prediction)
        for k in totals:
            totals[k] += scores[k].fmeasure
    return {"bleu": float(bleu), **{k: v / len(gens) for k, v in totals.items()}}


def pairwise_metrics(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    n_chosen: torch.Tensor,
    n_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> dict[str, float]:
    """Reward accuracy/margin (β·(r_w − r_l) > 0) and likelihood accuracy/margin (avg_w > avg_l)."""
    margin = beta * ((chosen - ref_chosen) - (rejected - ref_rejected))
    lik = chosen / n_chosen - rejected / n_rejected
    return {
        "pairwise/reward_accuracy": float((margin > 0).float().mean()),
        "pairwise/reward_margin": float(margin.mean()),
        "pairwise/likelihood_accuracy": float((lik > 0).float().mean()),
        "pairwise/likelihood_margin": float(lik.mean()),
    }


# ----------------------------------------------------------------------------------------- models


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for x in [tokenizer.eos_token_id, *(gen_eos if isinstance(gen_eos, list) else [gen_eos])]:
        if x is not None and x not in ids:
            ids.append(int(x))
    return ids


@torch.no_grad()
def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    sample: bool = False,
    num_samples: int = 1,
    desc: str = "generating",
    progress: bool = True,
) -> list[list[list[int]]]:
    """New token ids per prompt (``num_samples`` lists each), cut after the first EOS (which is kept).

    Prompts are left-padded in batches of similar length; greedy unless ``sample`` (temperature 1, no
    top-k/top-p truncation, so the samples come from π itself).
    """
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    options: dict[str, Any] = (
        {"do_sample": True, "temperature": 1.0, "top_k": 0, "top_p": 1.0} if sample else {"do_sample": False}
    )
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=pad,
        num_return_sequences=num_samples,
        **options,
    )
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[list[list[int]]] = [[] for _ in prompts]
    for s in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress, leave=False):
        idx = order[s : s + batch_size]
        width = max(len(prompts[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
        attention = torch.zeros((len(idx), width), dtype=torch.long)
        for j, i in enumerate(idx):
            ids = list(prompts[i])
            input_ids[j, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[j, width - len(ids) :] = 1
        seqs = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config
        )
        new = seqs[:, width:].tolist()
        for j, i in enumerate(idx):
            for k in range(num_samples):
                ids = new[j * num_samples + k]
                cut = next((t + 1 for t, tok in enumerate(ids) if tok in eos), len(ids))
                out[i].append(ids[:cut])
    return out


def _decode(tokenizer: Any, ids: list[int], eos: list[int]) -> str:
    if ids and ids[-1] in eos:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()


def _load(target_path: str, adapter: Path | None, dtype: str, device: torch.device) -> Any:
    model = models.load_model(target_path, dtype=dtype)
    if adapter is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        except (OSError, ValueError, KeyError) as exc:
            raise TetherError(
                f"{adapter}: cannot load the LoRA adapter ({str(exc).splitlines()[0]})"
            ) from None
    model.requires_grad_(False)
    return model.to(device).eval()


# ---------------------------------------------------------------------------------------- lm-eval


def run_lm_eval(model: Any, tokenizer: Any, tasks: list[str], batch_size: int, limit: int | None):
    """(``{task/metric: value}``, None) or (None, a one-line note saying why it was skipped)."""
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        return None, "lm-eval: skipped (lm-evaluation-harness is not installed; pip install lm-eval)"
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
        res = lm_eval.simple_evaluate(model=lm, tasks=tasks, limit=limit)
    except Exception as exc:  # missing data offline, unknown task, ...: skipped, never fatal
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"lm-eval: skipped ({first[:200]})"
    out = {}
    for task, values in ((res or {}).get("results") or {}).items():
        for metric, v in values.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out[f"lm_eval/{task}/{metric.replace(',none', '')}"] = float(v)
    return out, None


# --------------------------------------------------------------------------------------- evaluate


def _method_info(cfg: dict[str, Any]) -> tuple[str | None, float | None, bool | None]:
    """(method name, its β, whether it is reference-based) from a run config."""
    m = cfg.get("method") or {}
    name = m.get("name") if isinstance(m, dict) else None
    if not name:
        return None, None, None
    from tether.methods.registry import get_method

    try:
        method = get_method(name)
        hp = method.hparams({k: v for k, v in m.items() if k != "name"})
    except TetherError:
        return name, None, None
    return name, hp.get("beta"), method.needs_reference


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
        from tether.engine.reference import compute_table

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
        from tether.engine.reference import cache_key, load_or_fill

        key = cache_key(self.ref_fingerprint, examples, {"dtype": self.dtype, "device": self.device.type})
        table, status = load_or_fill(
            self.cache_root / "reflogps" / f"{key}.pt",
            range(len(examples)),
            lambda rows: self.sums(examples, desc, reference=True, indices=rows),
            n=len(examples),
            is_main=True,
            barrier=lambda: None,
        )
        self.cache_log[desc] = status
        return pol, table

    def greedy(self, ids: list[list[int]], max_new_tokens: int, *, reference: bool = False) -> list[str]:
        """Greedy generations of the model (or the reference), decoded without their EOS."""
        model = self.ref_model if reference else self.model
        eos = _eos_ids(model, self.tokenizer)
        raw = generate(
            model,
            self.tokenizer,
            ids,
            max_new_tokens=max_new_tokens,
            batch_size=self.batch_size,
            desc=f"generating ({'reference' if reference else 'model'})",
            progress=self.progress,
        )
        return [_decode(self.tokenizer, g[0], eos) for g in raw]

    def reference_generations(self, ids: list[list[int]], max_new_tokens: int) -> list[str]:
        """The reference's greedy generations, cached by its weights, the prompts and the settings."""
        if self.ref_fingerprint is None or self.cache_root is None:
            return self.greedy(ids, max_new_tokens, reference=True)
        eos = _eos_ids(self.ref_model, self.tokenizer)
        import hashlib

        h = hashlib.sha256(self.ref_fingerprint.encode())
        settings = {
            "max_new_tokens": max_new_tokens,
            "eos": eos,
            "pad": self.tokenizer.pad_token_id,
            "batch_size": self.batch_size,  # left padding within a batch can flip a greedy token
            "dtype": self.dtype,
            "v": 1,
        }
        h.update(json.dumps([settings, self.device.type, ids], sort_keys=True).encode())
        path = self.cache_root / "generations" / f"{h.hexdigest()[:24]}.json"
        if path.is_file():
            try:
                texts = json.loads(path.read_text())
                if isinstance(texts, list) and len(texts) == len(ids):
                    self.cache_log["generating"] = "hit"
                    return [str(t) for t in texts]
            except (OSError, ValueError):
                pass  # unreadable: regenerate and overwrite
        texts = self.greedy(ids, max_new_tokens, reference=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(texts, ensure_ascii=False))
        os.replace(tmp, path)
        self.cache_log["generating"] = "miss"
        return texts


def _reference_spec(target: Target, reference: str | None, notes: list[str]) -> str:
    """The reference to compare against: ``--reference``, else the run's starting model, else the model."""
    if reference is not None:
        try:
            models.check_model_spec(reference)
        except TetherError as e:
            raise TetherError(f"--reference: {e}") from None
        return reference
    if target.start_model:
        try:
            models.check_model_spec(target.start_model)
        except TetherError as e:
            raise TetherError(f"the run's starting model (the default reference): {e}") from None
        return target.start_model
    notes.append(
        "reference: the model itself (no --reference and not a run directory): KL, deviation and reward "
        "margins are 0 by construction and the win rate is 0.5"
    )
    return target.model_path


def _read_data(
    data: str, metrics: str | Sequence[str], generate_text: bool
) -> tuple[list[data_mod.Row], str, list[str]]:
    """The rows, their kind and the metric groups to compute (every problem raised before a weight loads)."""
    if not str(data).startswith("hf:") and not Path(data).exists():
        raise DataError([Problem(str(data), None, None, "file not found")])
    rows = data_mod.read_rows(str(data))
    kind = detect_kind(rows)
    if kind == "mc":
        _check_mc(rows)
    groups = _select_metrics(metrics, kind, str(data), generate_text)
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
        option_rows = [
            data_mod.Row(r.file, r.line, {"prompt": r.data["prompt"], "completion": o})
            for r in rows
            for o in r.data["options"]
        ]
        examples = tokenize(option_rows, "sft")
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
        answer = row.data.get("chosen" if kind == "pairs" else "completion")
        if answer is None and "messages" in row.data:
            answer = row.data["messages"]
        prompts.append(_Prompt(e.prompt_ids, row, _text(answer) or str(row.data.get("answer", ""))))
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
    n_c = torch.tensor([len(e.chosen_ids) for e in examples], dtype=torch.float32)
    if "deviation" in groups:
        m["deviation"] = float(((pol[:, 0] - ref[:, 0]) / n_c).mean())
    if kind != "pairs":
        return
    n_r = torch.tensor([len(e.rejected_ids or []) for e in examples], dtype=torch.float32)
    if "deviation" in groups:
        m["deviation/rejected"] = float(((pol[:, 1] - ref[:, 1]) / n_r).mean())
    if "pairwise" not in groups:
        return
    pw = pairwise_metrics(pol[:, 0], pol[:, 1], n_c, n_r, ref[:, 0], ref[:, 1], beta)
    use_reward = ref_based if ref_based is not None else not ld.same
    kind_name = "reward" if use_reward else "likelihood"
    m["pairwise/accuracy"] = pw[f"pairwise/{kind_name}_accuracy"]
    m["pairwise/margin"] = pw[f"pairwise/{kind_name}_margin"]
    m["pairwise/kind"] = kind_name
    m.update(pw)
    rpw = pairwise_metrics(ref[:, 0], ref[:, 1], n_c, n_r, ref[:, 0], ref[:, 1], beta)
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


def _generation_metrics(
    ld: _Loaded, prompts: list[_Prompt], max_new_tokens: int, m: dict, rm: dict, notes: list[str]
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Greedy generations of both models: task success (overall, per family), the win rate, BLEU/ROUGE.

    Returns the win counts and one sample record per prompt.
    """
    import tether.data.tasks as tasks

    ids = [p.ids for p in prompts]
    gen = ld.greedy(ids, max_new_tokens)
    rgen = gen if ld.same else ld.reference_generations(ids, max_new_tokens)
    checkable = [i for i, p in enumerate(prompts) if "source" in p.row.data and "answer" in p.row.data]
    ok = {i: tasks.check(prompts[i].row.data, gen[i]) for i in checkable}
    rok = {i: tasks.check(prompts[i].row.data, rgen[i]) for i in checkable}
    win = None
    if checkable:
        m["generation/n"] = len(checkable)
        for out_m, c in ((m, ok), (rm, rok)):
            out_m["generation/success"] = sum(c.values()) / len(c)
            for fam in sorted({str(prompts[i].row.data["source"]) for i in checkable}):
                fam_i = [i for i in checkable if str(prompts[i].row.data["source"]) == fam]
                out_m[f"generation/success/{fam}"] = sum(c[i] for i in fam_i) / len(fam_i)
        win = win_rate([ok[i] for i in checkable], [rok[i] for i in checkable])
        m["win_rate"] = win["win_rate"]
        m.update({f"win/{k}": win[k] for k in ("wins", "ties", "losses")})
    else:
        notes.append("task success and win rate: skipped (no row has both 'source' and 'answer')")
    refs = [p.reference_text for p in prompts]
    try:
        m.update(text_metrics(gen, refs))
        rm.update(text_metrics(rgen, refs))
    except ImportError:
        notes.append("BLEU/ROUGE: skipped (needs sacrebleu and rouge-score: pip install 'tether[eval]')")
    samples = [
        {
            "file": p.row.file,
            "line": p.row.line,
            "prompt": p.row.data.get("prompt"),
            "target": p.reference_text,
            "model": gen[i],
            "reference": rgen[i],
            "correct": ok.get(i),
            "reference_correct": rok.get(i),
        }
        for i, p in enumerate(prompts)
    ]
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


def evaluate(
    model_spec: str,
    data: str,
    *,
    reference: str | None = None,
    metrics: str | Sequence[str] = "auto",
    beta: float | None = None,
    max_samples: int | None = None,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    kl_samples: int = 1,
    seed: int = 0,
    max_length: int | None = None,
    chat_template: str | None = None,
    lm_eval_tasks: Sequence[str] | str | None = None,
    generate_text: bool = True,
    cache: bool = True,
    progress: bool = True,
    out: str | Path | None = None,
) -> dict[str, Any]:
    """Evaluate ``model_spec`` (a run directory or a model) on ``data``; see the module docstring.

    Returns the JSON-able result: ``metrics`` (the model's numbers), ``reference_metrics`` (the same
    numbers for the reference where meaningful), ``win`` counts, ``samples`` (each generation), ``notes``
    and metadata. Writes it to ``out`` when given. With ``cache`` (the default) the reference's log-prob
    tables and greedy generations are kept under ``$TETHER_CACHE`` (keyed by its weights, the token ids
    and the settings), so evaluating several runs against the same starting model computes them once. Every input problem is raised (as
    :class:`TetherError`/:class:`DataError`) before a weight loads.
    """
    t0 = time.time()
    notes: list[str] = []
    target = resolve_target(model_spec)
    ref_spec = _reference_spec(target, reference, notes)
    rows, kind, groups = _read_data(data, metrics, generate_text)

    # Settings from the run config, then the arguments.
    dcfg = target.run_cfg.get("data") or {}
    max_length = max_length or int(dcfg.get("max_length", 512))
    chat_template = chat_template or dcfg.get("chat_template", "auto")
    max_prompt_length = dcfg.get("max_prompt_length")
    dtype = (target.run_cfg.get("model") or {}).get("dtype", "float32")
    method_name, method_beta, ref_based = _method_info(target.run_cfg)
    beta = float(beta if beta is not None else method_beta if method_beta is not None else 0.1)

    # Tokenizers (a GGUF is converted here, after the data are known to be readable).
    model_path = models.resolve_model_dir(target.model_path)
    tokenizer = models.load_tokenizer(target.tokenizer_path or model_path)
    same = target.adapter is None and _same_model(str(model_path), str(models.resolve_model_dir(ref_spec)))
    ref_path = model_path if same else models.resolve_model_dir(ref_spec)
    if not same and models.load_tokenizer(ref_path).get_vocab() != tokenizer.get_vocab():
        raise TetherError(
            f"reference {ref_spec} has a different tokenizer than {model_spec} (vocabularies differ); "
            "a reference must share the model's tokenizer"
        )

    def tokenize(rs: list[data_mod.Row], k: str) -> list[data_mod.Example]:
        return data_mod.tokenize_rows(
            rs,
            tokenizer,
            kind=k,  # type: ignore[arg-type]
            max_length=max_length,
            max_prompt_length=max_prompt_length,
            chat_template=chat_template,  # type: ignore[arg-type]
        ).examples

    examples, prompts_all = _examples_and_prompts(rows, kind, tokenize)
    prompts = prompts_all[:max_samples] if max_samples else prompts_all

    # Weights.
    from tether.engine.logprobs import LogProbModel

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = _load(str(model_path), target.adapter, dtype, device)
    ref_model = model if same else _load(str(ref_path), None, dtype, device)
    ref_cache = (target.run_cfg.get("reference") or {}).get("cache_dir")  # the run's own cache, if set
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
    )
    m: dict[str, Any] = {}
    rm: dict[str, Any] = {}
    win: dict[str, Any] | None = None
    samples: list[dict[str, Any]] = []
    if "pairwise" in groups or "deviation" in groups:
        _logprob_metrics(ld, examples, kind, groups, beta, ref_based, m, rm)
    if "mc" in groups:
        _mc_metrics(ld, examples, rows, m, rm)
    if "generation" in groups and prompts:
        win, samples = _generation_metrics(ld, prompts, max_new_tokens, m, rm, notes)
    if "kl" in groups and prompts:
        _kl_metrics(ld, prompts, max_new_tokens, kl_samples, seed, m)
    if lm_eval_tasks:
        names = (
            [t.strip() for t in lm_eval_tasks.split(",")]
            if isinstance(lm_eval_tasks, str)
            else list(lm_eval_tasks)
        )
        res, note = run_lm_eval(model, tokenizer, [t for t in names if t], batch_size, max_samples)
        if note:
            notes.append(note)
        else:
            m.update(res or {})

    result = {
        "model": str(model_spec),
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
            "seed": seed,
            "max_length": max_length,
            "chat_template": chat_template,
            "dtype": dtype,
            "device": str(device),
            "cache": cache,
        },
        "reference_cache": ld.cache_log,
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


# -------------------------------------------------------------------------------------------- CLI


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool) or isinstance(v, str):
        return str(v)
    if isinstance(v, int):
        return str(v)
    return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"


def format_table(result: dict[str, Any]) -> str:
    """The aligned ``metric | model | reference`` table of an :func:`evaluate` result."""
    m, rm = result["metrics"], result["reference_metrics"]
    rows = [[k, _fmt(v), _fmt(rm[k]) if k in rm else ""] for k, v in m.items()]
    header = ["metric", "model", "reference"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]

    def line(r: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def main(args: argparse.Namespace) -> int:
    """``tether eval``: evaluate, print the table, write the JSON."""
    target_dir = resolve_target(args.model).run_dir
    out = args.out or (str(target_dir / "eval.json") if target_dir is not None else "eval.json")
    result = evaluate(
        args.model,
        args.data,
        reference=args.reference,
        metrics=args.metrics,
        beta=args.beta,
        max_samples=args.max_samples,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        kl_samples=args.kl_samples,
        seed=args.seed,
        max_length=args.max_length,
        chat_template=args.chat_template,
        lm_eval_tasks=args.lm_eval_tasks,
        generate_text=not args.no_generate,
        cache=not args.no_cache,
        progress=not args.no_progress,
        out=out,
    )
    print(
        f"model: {result['model']}  reference: {result['reference']}"
        f"{' (the model itself)' if result['reference_is_model'] else ''}"
    )
    print(
        f"data: {result['data']} ({result['kind']}, {result['n_rows']} rows, "
        f"{result['n_generation_prompts']} prompts generated)  time: {result['seconds']:.1f} s"
    )
    print()
    print(format_table(result))
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"\nwrote {out}")
    sys.stdout.flush()
    return 0
