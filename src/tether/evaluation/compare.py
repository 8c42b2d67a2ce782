"""``tether compare``: runs evaluated on the same prompts, compared prompt by prompt against the first.

Every run is evaluated on the same held-out prompts, so two runs' outcomes are paired: the difference of
their means is estimated from the per-prompt differences, which vary far less than the outcomes
themselves (a prompt that is hard for one run is usually hard for the other). For each run after the
first, on the prompts both have a value for:

- ``difference``: mean(run) − mean(first) of the per-prompt outcomes (for ``win_rate/chosen/lc``, the
  difference of the two length-controlled win rates);
- ``ci_low``/``ci_high``: the 95% paired-bootstrap percentile interval of that difference
  (``scipy.stats.bootstrap`` with ``paired=True``: the prompts are resampled with replacement and both
  runs keep their outcomes on the resampled prompts; ``n_boot`` resamplings from
  ``numpy.random.default_rng(seed)``, so a fixed seed gives a fixed interval);
- for binary outcomes (every value 0 or 1 in both runs: task success with one sample per prompt, a win
  without ties): the discordant counts — ``run_only`` prompts the run gets right and the first does
  not, ``first_only`` the reverse — and McNemar's exact p, the two-sided exact binomial test
  (``scipy.stats.binomtest``) of ``run_only`` successes in ``run_only + first_only`` trials at ½.

The outcomes are the ``eval_prompts.jsonl`` that ``tether eval`` writes beside ``eval.json``
(:class:`tether.eval_result.PromptOutcome`). Runs are refused (one line, exit code 2) when one was
never evaluated (or before per-prompt outcomes were kept), when they were evaluated on different prompts,
or with different generation settings (or judges); a metric that compares with the reference's
generations or measures KL to it also needs the same reference.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tether.errors import TetherError, closest, shown_text
from tether.eval_result import EvalResult, NotAnEvalResult, PromptOutcome
from tether.evaluation.metrics import length_controlled_win_rate
from tether.rundir import RunDir, read_json

METRICS: dict[str, str] = {
    "success": "success",
    "win_rate/chosen": "win_chosen",
    "win_rate/chosen/lc": "win_chosen_samples",
    "win_rate": "win_reference",
    "judge/reward": "judge",
    "kl": "kl",
}
"""``--metric`` names (as ``tether eval`` reports them) and the per-prompt field each compares."""

GENERATION_SETTINGS = (
    "max_new_tokens",
    "temperature",
    "top_p",
    "samples_per_prompt",
    "kl_samples",
    "seed",
    "max_length",
    "chat_template",
    "dtype",
    "device",
)
"""The evaluation settings two compared runs must share (those that change what is generated)."""

NEEDS_SAME_REFERENCE = ("win_rate", "kl")

COLUMNS = tuple("run n value first_value difference ci_low ci_high mcnemar_p run_only first_only".split())
"""The columns of ``tether compare``'s table (of :class:`Paired`'s fields)."""


@dataclass
class Evaluated:
    """One run's evaluation: its name as given, the result and its per-prompt outcomes."""

    name: str
    result: EvalResult
    outcomes: list[PromptOutcome]


@dataclass
class Paired:
    """One run against the first on one metric (None where it does not apply)."""

    run: str
    first: str
    metric: str
    n: int
    value: float | None
    first_value: float | None
    difference: float | None
    ci_low: float | None
    ci_high: float | None
    mcnemar_p: float | None = None
    run_only: int | None = None
    first_only: int | None = None


def load_evaluated(spec: str | Path) -> Evaluated:
    """A run directory's ``eval.json`` (or an evaluation file given by path) with its outcomes."""
    path = Path(spec)
    if path.is_dir():
        rd, file = RunDir(path), RunDir(path).eval
    elif path.is_file():
        rd, file = RunDir(path.parent), path
    else:
        raise TetherError(f"{spec}: not found (give a run directory or its eval.json)")
    if not file.is_file():
        raise TetherError(f"{spec}: never evaluated (no {file.name}); run tether eval {spec} --data FILE")
    try:
        result = EvalResult.from_dict(read_json(file), str(file))
    except NotAnEvalResult as e:
        raise TetherError(f"{e}; rerun tether eval") from None
    outcomes = rd.read_outcomes(result, file)
    if outcomes is None:
        raise TetherError(
            f"{spec}: its evaluation has no per-prompt outcomes (evaluated before tether kept them, "
            "without generation, or the file beside it is missing or changed); rerun tether eval"
        )
    return Evaluated(str(spec), result, outcomes)


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise TetherError(
            f"--metric: unknown metric '{shown_text(metric)}'{closest(metric, METRICS)}; valid: {', '.join(METRICS)}"
        )
    return metric


def default_metric(evaluated: Sequence[Evaluated]) -> str:
    """Task success when every run measured it, else the win rate against the chosen answers."""
    have = lambda field: all(any(getattr(o, field) is not None for o in e.outcomes) for e in evaluated)  # noqa: E731
    return "success" if have("success") else "win_rate/chosen"


def keyed(outcomes: Sequence[PromptOutcome]) -> dict[tuple[str, int], PromptOutcome]:
    """The outcomes by (prompt id, occurrence): a prompt the data holds twice is paired occurrence by
    occurrence, never both with one."""
    seen: dict[str, int] = {}
    out = {}
    for o in outcomes:
        seen[o.id] = seen.get(o.id, -1) + 1
        out[(o.id, seen[o.id])] = o
    return out


def check_comparable(evaluated: Sequence[Evaluated], metric: str) -> None:
    """One line when the runs were not evaluated alike: the same prompts, generation settings, judge (and
    reference, for a metric relative to it)."""
    first = evaluated[0]
    ids = set(keyed(first.outcomes))
    for e in evaluated[1:]:
        mine = set(keyed(e.outcomes))
        if mine != ids:
            shared = len(mine & ids)
            raise TetherError(
                f"{e.name}: evaluated on different prompts than {first.name} ({len(mine)} and {len(ids)} "
                f"prompts, {shared} shared); evaluate both on the same data with the same --max-samples"
            )
        a, b = asdict(first.result.settings), asdict(e.result.settings)
        for key in GENERATION_SETTINGS:
            if a[key] != b[key]:
                raise TetherError(
                    f"{e.name}: evaluated with {key}={b[key]}, {first.name} with {key}={a[key]}; "
                    "compare runs evaluated with the same generation settings"
                )
        a_judge, b_judge = (r.judge_fingerprint or r.judge for r in (first.result, e.result))
        if a_judge != b_judge:
            raise TetherError(
                f"{e.name}: judged by {e.result.judge}, {first.name} by {first.result.judge}; "
                "compare runs evaluated with the same judge"
            )
        if metric in NEEDS_SAME_REFERENCE and e.result.reference_path != first.result.reference_path:
            raise TetherError(
                f"{e.name}: evaluated against the reference {e.result.reference}, {first.name} against "
                f"{first.result.reference}; --metric {metric} is relative to the reference"
            )


def compare(
    runs: Sequence[str | Path], metric: str | None = None, *, seed: int = 0, n_boot: int = 1000
) -> list[Paired]:
    """Each run after the first against the first, on ``metric`` (default :func:`default_metric`); see the
    module docstring. Every problem is one :class:`TetherError` line, raised before any statistic."""
    if len(runs) < 2:
        raise TetherError("tether compare: give at least two runs")
    if seed < 0:
        raise TetherError(f"--seed: must be ≥ 0, got {seed}")
    if metric is not None:
        check_metric(metric)
    evaluated = [load_evaluated(r) for r in runs]
    metric = metric or default_metric(evaluated)
    check_comparable(evaluated, metric)
    field = METRICS[metric]
    for e in evaluated:
        if all(getattr(o, field) is None for o in e.outcomes):
            raise TetherError(
                f"{e.name}: its evaluation did not measure {metric} per prompt "
                f"({'needs --judge' if metric in ('judge/reward', 'win_rate/chosen/lc') else 'see tether eval'})"
            )
    return [paired(evaluated[0], e, metric, seed=seed, n_boot=n_boot) for e in evaluated[1:]]


def paired(first: Evaluated, run: Evaluated, metric: str, *, seed: int = 0, n_boot: int = 1000) -> Paired:
    """``run`` against ``first`` on the prompts both have ``metric`` for."""
    field = METRICS[metric]
    mine = keyed(run.outcomes)
    both = [(o, mine[k]) for k, o in keyed(first.outcomes).items() if k in mine]
    both = [(a, b) for a, b in both if getattr(a, field) is not None and getattr(b, field) is not None]
    out = Paired(run.name, first.name, metric, len(both), None, None, None, None, None)
    if not both:
        return out
    if metric == "win_rate/chosen/lc":
        stat = _lc_statistic([a for a, _ in both], [b for _, b in both])
        out.first_value, out.value, out.difference = (stat(None, k) for k in range(3))
        resampled = len(both) > 1  # one prompt: every resample is that prompt
        boot = _bootstrap_indices(stat, len(both), seed, n_boot) if resampled else (out.difference,) * 2
        out.ci_low, out.ci_high = boot
        return out
    a = [float(getattr(x, field)) for x, _ in both]
    b = [float(getattr(y, field)) for _, y in both]
    return Paired(run.name, first.name, metric, **paired_values(a, b, seed=seed, n_boot=n_boot))


def paired_values(
    first: Sequence[float], run: Sequence[float], *, seed: int = 0, n_boot: int = 1000
) -> dict[str, Any]:
    """:class:`Paired`'s numbers for two runs' outcomes on the same prompts, in the same order (at least
    one): the means, their difference, its paired-bootstrap interval, and McNemar's exact test where every
    outcome is 0 or 1."""
    n = len(first)
    first_value, value = sum(first) / n, sum(run) / n
    difference = value - first_value
    low, high = paired_bootstrap(first, run, seed=seed, n_boot=n_boot) if n > 1 else (difference, difference)
    out = {"n": n, "value": value, "first_value": first_value, "difference": difference, "ci_low": low,
           "ci_high": high}  # fmt: skip
    if all(v in (0.0, 1.0) for v in [*first, *run]):
        out["mcnemar_p"], out["run_only"], out["first_only"] = mcnemar(first, run)
    return out


def paired_bootstrap(
    first: Sequence[float], run: Sequence[float], *, seed: int = 0, n_boot: int = 1000, level: float = 0.95
) -> tuple[float, float]:
    """The ``level`` percentile interval of mean(run) − mean(first) over ``n_boot`` paired resamplings
    of the prompts (``scipy.stats.bootstrap``, ``paired=True``, ``numpy.random.default_rng(seed)``)."""
    import numpy as np
    from scipy.stats import bootstrap

    def diff(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.mean(y, axis=axis) - np.mean(x, axis=axis)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # identical resamples (a constant difference) are not a problem here
        res = bootstrap(
            (np.asarray(first, dtype=np.float64), np.asarray(run, dtype=np.float64)),
            diff,
            paired=True,
            vectorized=True,
            n_resamples=n_boot,
            confidence_level=level,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def _bootstrap_indices(
    stat: Callable[[Any, int], float | None], n: int, seed: int, n_boot: int, level: float = 0.95
) -> tuple[float | None, float | None]:
    """The percentile interval of ``stat(indices, 2)`` over paired resamplings of the prompt indices
    (``scipy.stats.bootstrap`` on the indices, a statistic that is not a mean of per-prompt values).
    Resamples where the statistic does not exist (an LC fit that length separates) are left out of the
    percentiles; None when fewer than half of them have it."""
    import numpy as np
    from scipy.stats import bootstrap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = bootstrap(
            (np.arange(n),),
            lambda idx: stat(idx, 2),
            vectorized=False,
            n_resamples=n_boot,
            confidence_level=level,
            method="percentile",
            rng=np.random.default_rng(seed),
        )
    dist = np.asarray(res.bootstrap_distribution, dtype=np.float64)
    dist = dist[np.isfinite(dist)]
    if 2 * dist.size < n_boot:
        return None, None
    alpha = (1.0 - level) / 2
    return float(np.quantile(dist, alpha)), float(np.quantile(dist, 1.0 - alpha))


def _lc_statistic(first: list[PromptOutcome], run: list[PromptOutcome]) -> Callable[[Any, int], float | None]:
    """``stat(indices, which)``: the length-controlled win rate of the first run (0), of the other (1),
    or their difference (2), on the prompts ``indices`` (None: all)."""

    def lc(outcomes: list[PromptOutcome], idx: Sequence[int]) -> float | None:
        prefs, lengths, chosen = [], [], []
        for i in idx:
            o = outcomes[i]
            prefs += o.win_chosen_samples or []
            lengths += o.length_samples or []
            chosen += [o.chosen_length or 0] * len(o.length_samples or [])
        return length_controlled_win_rate(prefs, lengths, chosen)

    def stat(idx: Any, which: int) -> float | None:
        idx = range(len(first)) if idx is None else [int(i) for i in idx]
        a, b = lc(first, idx), lc(run, idx)
        if which < 2:
            return (a, b)[which]
        return math.nan if a is None or b is None else b - a

    return stat


def mcnemar(first: Sequence[float], run: Sequence[float]) -> tuple[float, int, int]:
    """McNemar's exact test on paired binary outcomes: (two-sided p, run_only, first_only), where
    ``run_only`` counts prompts the run gets right and the first does not and ``first_only`` the reverse;
    p is ``scipy.stats.binomtest(run_only, run_only + first_only, 0.5)`` (1 with no discordant pair)."""
    from scipy.stats import binomtest

    run_only = sum(1 for a, b in zip(first, run, strict=True) if b == 1 and a == 0)
    first_only = sum(1 for a, b in zip(first, run, strict=True) if a == 1 and b == 0)
    n = run_only + first_only
    p = 1.0 if n == 0 else float(binomtest(run_only, n, 0.5).pvalue)
    return p, run_only, first_only


def as_rows(results: Sequence[Paired]) -> list[dict[str, Any]]:
    """The JSON-able rows (``tether compare --json``)."""
    return [asdict(r) for r in results]
