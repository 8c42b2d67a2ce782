"""Reading run directories for ``tether report``: metrics, config, summary, sDPO stages (concatenated on
one step axis), ``eval.json`` and ``eval_checkpoints.json``.

``eval.json`` is read as :class:`tether.eval_result.EvalResult` through :class:`tether.rundir.RunDir`, and
the report takes its fields (:func:`eval_summary`). A JSON object another tool wrote is read defensively
instead: any numeric field whose name says ``success`` (else a win rate) and one named ``kl`` as a word.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.errors import TetherError
from tether.eval_result import EvalResult, NotAnEvalResult
from tether.rundir import RunDir


@dataclass
class Run:
    """One run directory, read. ``train``/``evals`` hold metric records with ``step`` on the run's axis
    (sDPO stages offset to follow each other); ``boundaries`` are the steps where a new stage starts."""

    path: Path
    name: str
    method: str
    config: dict
    summary: dict
    train: list[dict]
    evals: list[dict]
    stages: list[dict] | None = None
    boundaries: list[float] = field(default_factory=list)
    eval_json: dict | None = None
    """``eval.json`` as a JSON object (shown field by field in the report)."""
    notes: list[str] = field(default_factory=list)
    color: str = "C0"
    checkpoint_evals: list[dict] = field(default_factory=list)
    """The rows of ``eval_checkpoints.json`` (``tether eval --checkpoints``), by step."""
    eval_result: EvalResult | None = None
    """``eval.json`` read as the result ``tether eval`` wrote (None: absent, or another tool's file)."""

    @property
    def eval_summary(self) -> EvalSummary:
        """What the report shows of ``eval.json``."""
        return eval_summary(self.eval_result if self.eval_result is not None else self.eval_json)

    @property
    def label(self) -> str:
        """The run's name in legends: its directory name, with the method when that differs."""
        return self.name if self.name == self.method else f"{self.name} ({self.method})"

    def series(self, key: str, split: str = "train") -> tuple[list[float], list[float]]:
        """(steps, values) of one metric; non-finite and missing values are skipped."""
        records = self.train if split == "train" else self.evals
        key = key if split == "train" else f"eval/{key}"
        xs, ys = [], []
        for r in records:
            v = r.get(key)
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                xs.append(float(r["step"]))
                ys.append(float(v))
        return xs, ys

    def has(self, key: str) -> bool:
        return bool(self.series(key)[0] or self.series(key, "eval")[0])

    def last(self, key: str, split: str = "train") -> float | None:
        ys = self.series(key, split)[1]
        return ys[-1] if ys else None


def _eval_json(rd: RunDir, notes: list[str]) -> tuple[dict | None, EvalResult | None]:
    """``eval.json`` as a JSON object and, when ``tether eval`` wrote it, as its result."""
    try:
        result = rd.read_eval_result()
    except NotAnEvalResult as e:  # another tool's file: read by its field names (:func:`eval_summary`)
        return e.data, None
    except TetherError as e:  # an unreadable eval.json costs its columns, not the report
        notes.append(f"ignored {e}")
        return None, None
    return (result.to_dict(), result) if result is not None else (None, None)


def _checkpoint_evals(rd: RunDir, notes: list[str]) -> list[dict]:
    try:
        data = rd.read_eval_checkpoints()
    except TetherError as e:  # costs the trajectory plot, not the report
        notes.append(f"ignored {e}")
        return []
    rows = [r for r in (data or {}).get("rows", []) if isinstance(r, dict) and isinstance(r.get("step"), int)]
    return sorted(rows, key=lambda r: r["step"])


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory (plain or sDPO); a bad one raises :class:`TetherError` naming the path."""
    rd = RunDir(run_dir)
    root = rd.path
    if not root.is_dir():
        raise TetherError(f"{root}: no such run directory")
    notes: list[str] = []
    if rd.metrics.exists():
        train, evals = rd.read_metrics()
        summary = rd.read_summary()
        config = rd.read_config_mapping()
        method = (config.get("method") or {}).get("name") or summary.get("method") or "?"
        eval_json, eval_result = _eval_json(rd, notes)
        return Run(
            root,
            root.name,
            method,
            config,
            summary,
            train,
            evals,
            eval_json=eval_json,
            notes=notes,
            checkpoint_evals=_checkpoint_evals(rd, notes),
            eval_result=eval_result,
        )
    if rd.is_staged():
        return _load_sdpo(rd, notes)
    raise TetherError(f"{root}: not a run directory (no metrics.jsonl or stages.json)")


def _load_sdpo(rd: RunDir, notes: list[str]) -> Run:
    root = rd.path
    if rd.stages.exists():
        stages = rd.read_stages()
        dirs = [rd.stage(s["stage"]) for s in stages]
    else:  # an unfinished sDPO run: stages.json is written at the end
        dirs = rd.stage_dirs()
        stages = [{"stage": int(d.path.name[6:])} for d in dirs]
        notes.append("no stages.json (unfinished sDPO run?): stages read from the stage-<t>/ directories")
    runs = []
    for st, d in zip(stages, dirs, strict=True):
        if not d.metrics.exists():
            raise TetherError(f"{d.path}: sDPO stage {st['stage']} has no metrics.jsonl")
        stage = load_run(d.path)
        if st.get("gamma_ref") is None:
            st["gamma_ref"] = stage.summary.get("gamma_ref")
        runs.append(stage)
    train, evals, boundaries, offset = [], [], [], 0.0
    for i, r in enumerate(runs):
        if i:
            boundaries.append(offset + 0.5)
        train += [{**rec, "step": rec["step"] + offset, "stage": i + 1} for rec in r.train]
        evals += [{**rec, "step": rec["step"] + offset, "stage": i + 1} for rec in r.evals]
        offset += max([rec["step"] for rec in r.train + r.evals], default=0.0)
    last = runs[-1].summary if runs else {}
    summary = {
        **last,
        "steps": sum(r.summary.get("steps") or 0 for r in runs) or None,
        "seconds": sum(r.summary.get("seconds") or 0.0 for r in runs) or None,
        "stages": stages,
    }
    config = runs[0].config if runs else {}
    base = (config.get("method") or {}).get("name") or last.get("method") or "?"
    eval_json, eval_result = _eval_json(rd, notes)
    if eval_json is None and runs:  # `tether eval` on the last stage's directory
        eval_json, eval_result = runs[-1].eval_json, runs[-1].eval_result
    return Run(
        root,
        root.name,
        f"sDPO/{base}",
        config,
        summary,
        train,
        evals,
        stages,
        boundaries,
        eval_json,
        notes,
        eval_result=eval_result,
    )


def _assign_names_and_colors(runs: Sequence[Run]) -> None:
    """Run names are directory names; the parent is added where two runs share one."""
    names = [r.path.name for r in runs]
    for r in runs:
        r.name = r.path.name
        if names.count(r.name) > 1:
            r.name = f"{r.path.resolve().parent.name}/{r.path.name}"
    for i, r in enumerate(runs):
        r.color = f"C{i % 10}"


def load_runs(run_dirs: Iterable[str | Path]) -> list[Run]:
    runs = [load_run(d) for d in run_dirs]
    if not runs:
        raise TetherError("no run directories given")
    _assign_names_and_colors(runs)
    return runs


# ------------------------------------------------------------------------------------- eval.json fields


@dataclass(frozen=True)
class EvalSummary:
    """What the report shows of an ``eval.json``: (key, value) of the model's task success and of its
    KL to the reference, and the reference's own success with where it was measured (for the frontier's
    starting points)."""

    success: tuple[str, float] | None = None
    kl: tuple[str, float] | None = None
    reference: Any = None
    data: Any = None
    n_generation_prompts: Any = None
    reference_success: float | None = None


def eval_summary(eval_json: EvalResult | dict | None) -> EvalSummary:
    """The fields of a ``tether eval`` result; a JSON object ``tether eval`` did not write is read by
    :func:`_guess`."""
    if eval_json is None or isinstance(eval_json, EvalResult):
        result = eval_json
    else:
        try:
            result = EvalResult.from_dict(eval_json)
        except TetherError:
            return _guess(eval_json)
    if result is None:
        return EvalSummary()
    return EvalSummary(
        result.task_success(),
        result.kl(),
        result.reference,
        result.data,
        result.n_generation_prompts,
        result.reference_success(),
    )


def success_and_kl(eval_json: dict | None) -> tuple[tuple[str, float] | None, tuple[str, float] | None]:
    """((key, task success), (key, KL to reference)) from an ``eval.json``, each None where absent."""
    s = eval_summary(eval_json)
    return s.success, s.kl


MAX_EVAL_JSON_FIELDS = 24
_KL_EXCLUDE = ("beta", "epsilon", "/s", "coef", "penalty", "target", "samples")
_NOT_THE_MODEL = {"settings", "reference_metrics"}  # tether eval's settings and the reference's own scores


def flatten(d: Any, prefix: str = "") -> dict[str, float]:
    """The finite numbers of a JSON object, nested keys joined with ``/``."""
    out: dict[str, float] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}/"))
    elif isinstance(d, (int, float)) and not isinstance(d, bool) and math.isfinite(d):
        out[prefix.rstrip("/")] = float(d)
    return out


def _pick(
    flat: dict[str, float], match: Callable[[str], bool], exclude: Sequence[str] = ()
) -> tuple[str, float] | None:
    """The least nested, shortest key that matches (the overall figure, not a per-task breakdown)."""
    keys = [
        k
        for k in flat
        if match(k.lower())
        and not any(x in k.lower() for x in exclude)
        and k.split("/")[0] not in _NOT_THE_MODEL
    ]
    if not keys:
        return None
    k = min(keys, key=lambda k: (k.count("/"), len(k), k))
    return k, flat[k]


def _is_word(name: str, word: str) -> bool:
    """``word`` occurs in ``name`` with no letter a-z right before or after it."""
    i = name.find(word)
    while i >= 0:
        end = i + len(word)
        if (i == 0 or not "a" <= name[i - 1] <= "z") and (end == len(name) or not "a" <= name[end] <= "z"):
            return True
        i = name.find(word, i + 1)
    return False


def _is_win_rate(name: str) -> bool:
    """``win``, at most one character, ``rate`` (``win_rate``, ``winrate``, ``win-rate``)."""
    i = name.find("win")
    while i >= 0:
        if name.startswith("rate", i + 3) or (
            name[i + 3 : i + 4] not in ("", "\n") and name.startswith("rate", i + 4)
        ):
            return True
        i = name.find("win", i + 1)
    return False


def _guess(eval_json: dict) -> EvalSummary:
    """A JSON object another tool wrote, read defensively: any numeric field (nested objects flattened
    with ``/``) whose name contains ``success`` (else a win rate) and one whose name contains ``kl`` as a
    word; fields under ``settings`` or ``reference_metrics`` (the reference model's own scores) are not
    the model's."""
    if not eval_json:
        return EvalSummary()
    flat = flatten(eval_json)
    success = _pick(flat, lambda k: "success" in k) or _pick(flat, _is_win_rate)
    kl = _pick(flat, lambda k: _is_word(k, "kl"), _KL_EXCLUDE)
    ref = eval_json.get("reference_metrics")
    v = ref.get("generation/success") if isinstance(ref, dict) else None
    ok = isinstance(v, (int, float)) and not isinstance(v, bool)
    return EvalSummary(
        success,
        kl,
        eval_json.get("reference"),
        eval_json.get("data"),
        eval_json.get("n_generation_prompts"),
        float(v) if ok else None,
    )
