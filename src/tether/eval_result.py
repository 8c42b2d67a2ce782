"""The result of ``tether eval``, typed: what ``eval.json`` holds, written and read through
:class:`EvalResult` (by :class:`tether.rundir.RunDir`, by :mod:`tether.evaluation.evaluate` and by
``tether report``).

The JSON is the dataclasses' fields in order (``json.dumps(..., indent=1, ensure_ascii=False)``); a file
read and written again is the same bytes. ``metrics`` and ``reference_metrics`` stay mappings: their
names depend on the data (a family's task success, lm-eval's tasks) and on the metric groups that ran
(:mod:`tether.evaluation.groups`). Top-level keys that others add (a sweep's ``sweep_eval_key``) are kept,
in order, in :attr:`EvalResult.extra`.

Beside ``eval.json``, ``tether eval`` keeps one :class:`PromptOutcome` per evaluated prompt (the JSON
lines of ``eval_prompts.jsonl``, :func:`tether.rundir.outcomes_path`), so that two runs can be compared
prompt by prompt (``tether compare``). ``eval.json`` records their count and hash
(:attr:`EvalResult.prompt_outcomes`): a file that does not match is not read as this evaluation's.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from typing import Any

from tether.errors import TetherError


class NotAnEvalResult(TetherError):
    """A JSON object that ``tether eval`` did not write (another tool's file, or an older layout);
    ``data`` is the object as read."""

    def __init__(self, message: str, data: dict[str, Any]):
        super().__init__(message)
        self.data = data


@dataclass
class EvalSettings:
    """The settings the evaluation ran with (``tether eval``'s options after the run config's defaults)."""

    beta: float
    max_samples: int | None
    max_new_tokens: int
    batch_size: int
    kl_samples: int
    temperature: float
    top_p: float
    samples_per_prompt: int
    seed: int
    max_length: int
    chat_template: str
    dtype: str
    device: str
    cache: bool


@dataclass
class Win:
    """A preference rate with its 95% bootstrap interval and the counts (ties count ½)."""

    win_rate: float | None
    ci_low: float | None
    ci_high: float | None
    wins: int
    ties: int
    losses: int


@dataclass
class Sample:
    """One prompt's generations: the model's and the reference's first ones, the target text, whether
    the task checker found them correct; all samples and the judge's rewards when there are some."""

    file: str
    line: int | None
    prompt: Any
    target: str
    model: str
    reference: str
    correct: bool | None
    reference_correct: bool | None
    model_samples: list[str] | None = None
    reference_samples: list[str] | None = None
    reward: list[float] | None = None
    reference_reward: list[float] | None = None
    target_reward: float | None = None


@dataclass
class PromptOutcome:
    """One evaluated prompt's outcomes (a line of ``eval_prompts.jsonl``); None where not measured.

    ``id`` is a hash of the prompt's token ids as rendered for the model and of the answer it is compared
    with (two evaluations' prompts are matched by it; a prompt given twice is matched by its id and which
    occurrence it is). ``success``: the fraction of its samples the task checker found correct; ``judge``:
    the judge's mean score of its samples; ``win_chosen``/``win_reference``: the mean over its samples of
    the outcome against the chosen answer / the reference's sample (1 win, ½ tie, 0 loss, by the judge,
    else by the task checker); ``kl``: the mean over its KL samples y ~ π of Σ_t log π(y_t) − log
    π_ref(y_t); ``length``: the mean length of its samples and ``chosen_length`` the chosen answer's, in
    characters (as AlpacaEval measures them); ``win_chosen_samples``/``length_samples``: per sample, for
    the length-controlled win rate."""

    file: str
    line: int | None
    id: str
    success: float | None = None
    judge: float | None = None
    win_chosen: float | None = None
    win_reference: float | None = None
    kl: float | None = None
    length: float | None = None
    chosen_length: int | None = None
    win_chosen_samples: list[float] | None = None
    length_samples: list[int] | None = None

    def to_json(self) -> str:
        """The JSON line (without its line break)."""
        return json.dumps(_plain(self), ensure_ascii=False)


_SAMPLE_OPTIONAL = ("model_samples", "reference_samples", "reward", "reference_reward", "target_reward")
"""Written only when set (several samples per prompt; a judge)."""


@dataclass
class EvalResult:
    """``eval.json``: the model, its reference and the data; the settings; the model's and the
    reference's numbers, the win counts against the reference, the generations and the notes."""

    model: str
    checkpoint: str | None
    model_path: str
    adapter: str | None
    reference: str
    reference_path: str
    reference_is_model: bool
    run_dir: str | None
    method: str | None
    data: str
    kind: str
    metric_groups: list[str]
    n_rows: int
    n_examples: int
    n_prompts: int
    n_generation_prompts: int
    settings: EvalSettings
    reference_cache: dict[str, str]
    judge: str
    judge_cache: dict[str, str]
    metrics: dict[str, Any]
    reference_metrics: dict[str, Any]
    win: Win | None
    notes: list[str]
    samples: list[Sample]
    seconds: float
    prompt_outcomes: dict[str, Any] | None = None
    """``{"rows": n, "sha256": ...}`` of the per-prompt outcomes written beside (None: none were kept,
    and the key is then left out of the file)."""
    judge_fingerprint: str | None = None
    """The judge's weights fingerprint (a reward model; None for the task checker, and the key is then left
    out): two evaluations are judged alike when these are equal, whatever path named the judge."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Top-level keys others added after ``seconds`` (a sweep's), kept in order."""
    outcomes: list[PromptOutcome] = field(default_factory=list, repr=False)
    """The per-prompt outcomes of a fresh evaluation (not part of ``eval.json``:
    :meth:`tether.rundir.RunDir.write_eval` writes them beside it)."""

    # --------------------------------------------------------------------------------------- JSON
    def to_dict(self) -> dict[str, Any]:
        """The JSON object, keys in field order."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name not in _NOT_JSON and not (f.name in _OPTIONAL and getattr(self, f.name) is None):
                out[f.name] = getattr(self, f.name)
        out["settings"] = _plain(self.settings)
        out["win"] = _plain(self.win) if self.win is not None else None
        out["samples"] = [_sample_dict(s) for s in self.samples]
        return {**out, **self.extra}

    def dumps(self) -> str:
        """``eval.json``'s text."""
        return json.dumps(self.to_dict(), indent=1, ensure_ascii=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, where: str = "eval.json") -> EvalResult:
        """An ``eval.json`` object; :class:`NotAnEvalResult` when it is not one ``tether eval`` wrote."""
        if not isinstance(data, dict):
            raise TetherError(f"{where}: not a JSON object")
        names = [f.name for f in fields(cls) if f.name not in _NOT_JSON]
        missing = [n for n in names if n not in data and n not in _OPTIONAL]
        if missing:
            raise NotAnEvalResult(f"{where}: not a tether eval result (no '{missing[0]}')", data)
        shapes = {"settings": dict, "metrics": dict, "reference_metrics": dict, "samples": list}
        for name, shape in shapes.items():
            if not isinstance(data[name], shape):
                raise NotAnEvalResult(f"{where}: not a tether eval result ('{name}' is not a {shape})", data)
        try:
            values = {n: data[n] for n in names if n in data}
            values["settings"] = EvalSettings(**data["settings"])
            values["win"] = Win(**data["win"]) if data["win"] is not None else None
            values["samples"] = [Sample(**s) for s in data["samples"]]
        except TypeError as e:
            raise NotAnEvalResult(f"{where}: not a tether eval result ({e})", data) from None
        extra = {k: v for k, v in data.items() if k not in names}
        return cls(**values, extra=extra)

    # ---------------------------------------------------------------------------- what is reported
    def task_success(self) -> tuple[str, float] | None:
        """(key, value) of the model's task success (``metrics/generation/success``), else its win rate
        against the reference (``win/win_rate``); None when neither was measured."""
        v = self.metrics.get("generation/success")
        if _number(v):
            return "metrics/generation/success", float(v)
        if self.win is not None and _number(self.win.win_rate):
            return "win/win_rate", float(self.win.win_rate)  # type: ignore[arg-type]
        return None

    def kl(self) -> tuple[str, float] | None:
        """(key, value) of the model's KL to the reference (``metrics/kl``); None when not measured."""
        v = self.metrics.get("kl")
        return ("metrics/kl", float(v)) if _number(v) else None

    def reference_success(self) -> float | None:
        """The reference model's own task success."""
        v = self.reference_metrics.get("generation/success")
        return float(v) if _number(v) else None


_NOT_JSON = ("extra", "outcomes")
_OPTIONAL = ("prompt_outcomes", "judge_fingerprint")  # left out of the file when None


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _plain(obj: Any) -> dict[str, Any]:
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


def _sample_dict(s: Sample) -> dict[str, Any]:
    d = _plain(s)
    return {k: v for k, v in d.items() if k not in _SAMPLE_OPTIONAL or v is not None}
