"""The plots of ``tether report`` (PNG, drawn with matplotlib outside pyplot): training curves, deviation,
each method's declared state plot, sDPO's γ_ref, the success–KL frontier across runs (from ``eval.json``),
the trajectory along checkpoints (from ``eval_checkpoints.json``), and a sweep's frontier. See
:mod:`tether.evaluation.report` for the list.

Each ``plot_*`` function returns a :class:`Plot` (the Figure and the plotted series, so tests can check
what was drawn) or ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether.errors import TetherError
from tether.evaluation.groups import PERFORMANCE
from tether.evaluation.runs import Run, load_runs
from tether.methods.registry import StatePlot, state_metric_names, state_plots
from tether.rundir import RunDir

TRAIN_PANELS = (
    ("loss", "loss"),
    ("rewards/margins", "reward margin (chosen − rejected)"),
    ("rewards/accuracies", "reward accuracy"),
)
DEVIATION_LABEL = "m_θ = (log π_θ(y) − log π_ref(y)) / |y|"


@dataclass
class Series:
    """One plotted line: the metric (panel), the run's label, train or eval, and its points."""

    metric: str
    label: str
    split: str
    x: list[float]
    y: list[float]


@dataclass
class Plot:
    """A drawn figure: ``name`` is the PNG's stem; ``series`` is what was plotted (for tests)."""

    name: str
    title: str
    caption: str
    figure: Any
    series: list[Series]

    def save(self, out_dir: Path) -> Path:
        path = out_dir / f"{self.name}.png"
        self.figure.savefig(path, dpi=130)
        return path


def _figure(figsize: tuple[float, float]):
    """A Figure drawn by the Agg canvas, outside pyplot (no global backend switch, nothing to close)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise TetherError("plots need matplotlib: pip install 'tether[plots]'") from None
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _smooth(
    xs: list[float], ys: list[float], boundaries: Sequence[float], weight: float | None
) -> list[float]:
    """Debiased exponential moving average (as TensorBoard draws it), restarted at stage boundaries.
    ``weight=None`` picks one from the number of points: none up to 30 points."""
    n = len(ys)
    if weight is None:
        weight = 0.0 if n <= 30 else min(0.95, 1.0 - 8.0 / n)
    if weight <= 0:
        return list(ys)
    out, avg, norm, b = [], 0.0, 0.0, 0
    for x, y in zip(xs, ys, strict=True):
        while b < len(boundaries) and x > boundaries[b]:
            avg, norm, b = 0.0, 0.0, b + 1
        avg, norm = weight * avg + (1 - weight) * y, weight * norm + (1 - weight)
        out.append(avg / norm)
    return out


def _style(ax, title: str, ylabel: str, xlabel: str = "step") -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.spines[["top", "right"]].set_visible(False)


def _xlabel(runs: Sequence[Run]) -> str:
    return "step (sDPO stages concatenated)" if any(r.boundaries for r in runs) else "step"


def _broken(xs: list[float], ys: list[float], boundaries: Sequence[float]) -> tuple[list[float], list[float]]:
    """The points with a gap (NaN) at each sDPO stage boundary, so stages are not joined by a line."""
    if not boundaries:
        return xs, ys
    bx, by = [], []
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        if i and any(xs[i - 1] < b < x for b in boundaries):
            bx.append(math.nan)
            by.append(math.nan)
        bx.append(x)
        by.append(y)
    return bx, by


def _curves(runs, panels, name, title, caption, smooth, size=(5.0, 3.6)) -> Plot | None:
    """One panel per metric that some run logged; a line per run (train solid, eval dashed). A panel
    given as (metric, title, labels) holds only the runs with those labels."""
    panels = [(*p, None) if len(p) == 2 else p for p in panels]
    panels = [(k, t, only) for k, t, only in panels if any(r.has(k) for r in runs)]
    if not panels:
        return None
    fig = _figure((size[0] * len(panels), size[1] + 0.4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    series: list[Series] = []
    drawn: list[Run] = []
    for ax, (key, panel_title, only) in zip(axes[0], panels, strict=True):
        for r in runs:
            if only is not None and r.label not in only:
                continue
            xs, ys = r.series(key)
            exs, eys = r.series(key, "eval")
            if not (xs or exs):
                continue
            if r not in drawn:
                drawn.append(r)
            if xs:
                sm = ys if key in state_metric_names() else _smooth(xs, ys, r.boundaries, smooth)
                if sm != ys:
                    ax.plot(*_broken(xs, ys, r.boundaries), color=r.color, alpha=0.22, linewidth=0.8)
                ax.plot(*_broken(xs, sm, r.boundaries), color=r.color, linewidth=1.6, label=r.label)
                series.append(Series(key, r.label, "train", xs, ys))
            if exs:
                style = {"linestyle": "--", "marker": "o", "markersize": 3, "linewidth": 1.4}
                ax.plot(*_broken(exs, eys, r.boundaries), color=r.color, label=r.label, **style)
                series.append(Series(key, r.label, "eval", exs, eys))
            for b in r.boundaries:
                ax.axvline(b, color=r.color, linestyle=":", linewidth=1.0, alpha=0.7)
        _no_false_zoom(ax, [y for s in series if s.metric == key for y in s.y])
        if key == "rewards/accuracies":
            ax.set_ylim(-0.03, 1.03)
        _style(ax, panel_title, panel_title.split(" (")[0])
    for ax in axes[0]:
        ax.set_xlabel(_xlabel(drawn))
    _legend(fig, drawn, any(s.split == "eval" for s in series), any(r.boundaries for r in drawn))
    fig.suptitle(title, fontsize=12)
    same = _coinciding(series)
    if same:
        caption = caption.rstrip(".") + "; drawn on top of each other: " + "; ".join(same) + "."
    return Plot(name, title, caption, fig, series)


def _coinciding(series: Sequence[Series], tol: float = 0.02) -> list[str]:
    """'a = b (metric)' for each pair of train curves that no eye can tell apart: the same steps and values
    within ``tol`` of the metric's range everywhere (the later run hides the earlier one)."""
    out = []
    train = [s for s in series if s.split == "train" and s.y]
    for i, a in enumerate(train):
        for b in train[i + 1 :]:
            if a.metric != b.metric or a.x != b.x:
                continue
            ys = [y for s in train if s.metric == a.metric for y in s.y]
            span = (max(ys) - min(ys)) or 1.0
            if max(abs(p - q) for p, q in zip(a.y, b.y, strict=True)) <= tol * span:
                out.append(f"{a.label} = {b.label} ({a.metric})")
    return out


def _legend(fig, runs: Sequence[Run], any_eval: bool, any_stages: bool) -> None:
    """Runs in columns, then one column with the line styles (train / eval / stage boundary)."""
    from matplotlib.lines import Line2D

    blank = Line2D([], [], alpha=0.0)
    keys = [(Line2D([], [], color=r.color, linewidth=1.6), r.label) for r in runs]
    styles = []
    if any_eval:
        styles += [
            (Line2D([], [], color="0.3"), "train"),
            (Line2D([], [], color="0.3", linestyle="--"), "eval"),
        ]
    if any_stages:
        styles.append((Line2D([], [], color="0.3", linestyle=":"), "sDPO stage boundary"))
    run_cols = min(len(keys), 3)
    rows = max(math.ceil(len(keys) / run_cols), len(styles))
    columns = [keys[c * rows : (c + 1) * rows] for c in range(math.ceil(len(keys) / rows))]
    if styles:
        columns.append(styles)
    cells = [col[i] if i < len(col) else (blank, "") for col in columns for i in range(rows)]
    fig.legend(
        [h for h, _ in cells],
        [lab for _, lab in cells],
        loc="outside lower center",
        ncol=len(columns),
        frameon=False,
        fontsize=9,
    )


def loss_scales(runs: Sequence[Run], ratio: float = 10.0) -> list[list[Run]]:
    """The runs that logged a loss, grouped so that within a group the typical losses (median |loss|)
    are within ``ratio`` of each other: losses of different scales (a summed NLL next to a DPO loss) get
    their own panels instead of flattening each other."""
    scale = {}
    for r in runs:
        ys = sorted(abs(y) for y in r.series("loss")[1] + r.series("loss", "eval")[1])
        if ys:
            scale[r.label] = max(ys[len(ys) // 2], 1e-12)
    groups: list[list[Run]] = []
    for r in sorted([r for r in runs if r.label in scale], key=lambda r: scale[r.label]):
        if groups and scale[r.label] <= ratio * scale[groups[-1][0].label]:
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def plot_training(runs: Sequence[Run], smooth: float | None = None) -> Plot | None:
    """Loss (one panel per loss scale, :func:`loss_scales`), reward margin and reward accuracy per step."""
    groups = loss_scales(runs)
    panels: list[tuple] = list(TRAIN_PANELS)
    caption = "Loss, reward margin and reward accuracy per step (train solid, eval dashed)"
    if len(groups) > 1:
        loss_panels = [
            ("loss", f"loss ({', '.join(r.label for r in g)})", {r.label for r in g}) for g in groups
        ]
        panels = loss_panels + panels[1:]
        caption += "; losses of different scales on separate panels"
    return _curves(runs, panels, "training", "Training curves", caption + ".", smooth)


def plot_deviation(runs: Sequence[Run], smooth: float | None = None) -> Plot | None:
    """MinorSFT's deviation m_θ per step, all runs on one axis (arXiv:2408.10642, Fig. 1)."""
    missing = [r.label for r in runs if not r.has("deviation")]
    caption = "Deviation m_θ from the reference per step, all runs on one axis (as MinorSFT's Figure 1)"
    caption += f"; no deviation logged by {', '.join(missing)}." if missing else "."
    plot = _curves(
        runs,
        [("deviation", DEVIATION_LABEL)],
        "deviation",
        "Deviation from the reference",
        caption,
        smooth,
        size=(7.5, 4.2),
    )
    if plot is not None:
        ax = plot.figure.axes[0]
        ax.axhline(0.0, color="0.5", linewidth=0.8)
        ax.set_ylabel("m_θ (per-token log-ratio)")
    return plot


def plot_state(runs: Sequence[Run], spec: StatePlot, smooth: float | None = None) -> Plot | None:
    """A method's declared state plot (e.g. ε-DPO's β and the fractions of pairs with s = ±1)."""
    plot = _curves(
        runs, [(k, title) for k, title, _ in spec.panels], spec.name, spec.title, spec.caption, smooth
    )
    if plot is None:
        return None
    drawn = [p for p in spec.panels if any(r.has(p[0]) for r in runs)]
    for ax, (key, _, ylabel) in zip(plot.figure.axes, drawn, strict=False):
        ax.set_ylabel(ylabel)
        if key in spec.fractions:
            ax.set_ylim(-0.03, 1.03)
    return plot


def plot_gamma_ref(runs: Sequence[Run]) -> Plot | None:
    """sDPO's γ_ref (mean reference log-ratio of chosen over rejected) per stage."""
    staged = [(r, [s for s in r.stages or [] if isinstance(s.get("gamma_ref"), (int, float))]) for r in runs]
    staged = [(r, st) for r, st in staged if st]
    if not staged:
        return None
    fig = _figure((6.5, 4.2))
    ax = fig.subplots()
    series = []
    n_max = 0
    for r, st in staged:
        xs = [float(s["stage"]) for s in st]
        ys = [float(s["gamma_ref"]) for s in st]
        ax.plot(xs, ys, color=r.color, marker="o", linewidth=1.6, label=r.label)
        for s, x, y in zip(st, xs, ys, strict=True):
            if "examples" in s:
                ax.annotate(
                    f"{s['examples']} ex.", (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8
                )
        series.append(Series("gamma_ref", r.label, "stage", xs, ys))
        n_max = max(n_max, int(max(xs)))
    ax.set_xticks(range(1, n_max + 1))
    ax.set_xlim(0.7, n_max + 0.5)
    _style(ax, "γ_ref per sDPO stage", "γ_ref = E[log π_ref(y_w) − log π_ref(y_l)]", "stage")
    ax.legend(frameon=False, fontsize=9)
    caption = (
        "sDPO's γ_ref per stage: the reference's mean log-ratio of chosen over rejected on that stage's data."
    )
    return Plot("gamma_ref", "γ_ref per sDPO stage", caption, fig, series)


def _start_points(runs: Sequence[Run]) -> dict[str, float]:
    """The reference models' own task success, one per (reference, data, prompts) group of evaluations.

    Labelled ``start`` when every run was evaluated the same way, else ``start (<data file>)`` or
    ``start (<reference>, <data file>)``."""
    groups: dict[tuple, float] = {}
    for r in runs:
        ev = r.eval_summary
        if ev.reference_success is not None:
            groups[(ev.reference, ev.data, ev.n_generation_prompts)] = ev.reference_success
    refs = {k[0] for k in groups}
    out = {}
    for (ref, data, _), v in groups.items():
        where = [str(ref)] if len(refs) > 1 else []
        where += [Path(str(data)).name] if len(groups) > len(refs) else []
        out[f"start ({', '.join(where)})" if where else "start"] = v
    return out


def plot_frontier(runs: Sequence[Run]) -> Plot | None:
    """Task success against KL to the reference, one point per run, a line per method.

    Each reference model is drawn at KL = 0 (a star: where its runs started), with its own task success.
    The KL axis is symmetric-log when the KLs span more than a factor of 20; labels of nearby points are
    stacked so they stay readable.
    """
    points: dict[str, list[tuple[float, float, Run]]] = {}
    ykeys, xkeys = set(), set()
    for r in runs:
        success, kl = r.eval_summary.success, r.eval_summary.kl
        if success and kl:
            points.setdefault(r.method, []).append((kl[1], success[1], r))
            ykeys.add(success[0])
            xkeys.add(kl[0])
    if not points:
        return None
    fig = _figure((7.0, 4.8))
    ax = fig.subplots()
    series = []
    starts = _start_points([r for pts in points.values() for _, _, r in pts])
    for k, (label, start) in enumerate(sorted(starts.items(), key=lambda kv: kv[1])):
        ax.plot([0.0], [start], color="black", marker="*", markersize=11, linestyle="none")
        ax.annotate(label, (0.0, start), textcoords="offset points", xytext=(6, 6 + 10 * k), fontsize=8)
        series.append(Series("frontier", label, "eval", [0.0], [start]))
    xs_all = [p[0] for pts in points.values() for p in pts]
    positive = [x for x in xs_all if x > 0]
    log_x = bool(positive) and max(positive) / min(positive) > 20
    if log_x:
        ax.set_xscale("symlog", linthresh=min(positive))

    def t(x: float) -> float:  # the x position as drawn
        return math.log10(x) if log_x and x > 0 else (math.log10(min(positive)) - 1 if log_x else x)

    ys_all = [p[1] for pts in points.values() for p in pts]
    x_span = (max(map(t, xs_all)) - min(map(t, xs_all))) or 1.0
    y_span = (max(ys_all) - min(ys_all)) or 1.0
    labelled: list[tuple[float, float]] = []
    for i, (method, pts) in enumerate(sorted(points.items())):
        pts.sort(key=lambda p: p[0])
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        ax.plot(xs, ys, color=f"C{i % 10}", marker="o", linewidth=1.4, label=method)
        for x, y, r in pts:
            k = sum(abs(t(x) - lx) / x_span < 0.1 and abs(y - ly) / y_span < 0.06 for lx, ly in labelled)
            labelled.append((t(x), y))
            ax.annotate(r.name, (x, y), textcoords="offset points", xytext=(5, 5 + 10 * k), fontsize=8)
            series.append(Series("frontier", r.label, "eval", [x], [y]))
    ylabel = ykeys.pop() if len(ykeys) == 1 else "task success"
    xlabel = xkeys.pop() if len(xkeys) == 1 else "KL to reference"
    ylabel = f"task success ({ylabel.removeprefix('metrics/')})"
    xlabel = f"KL(π‖π_ref) ({xlabel.removeprefix('metrics/')}, from eval.json{', symlog' if log_x else ''})"
    _style(ax, "Task success against KL to the reference", ylabel, xlabel)
    ax.legend(title="method", frameon=False, fontsize=9)
    caption = (
        "Task success against KL to the reference across runs (the ε-DPO paper's frontier), from eval.json."
    )
    return Plot("frontier", "Success–KL frontier", caption, fig, series)


def plot_trajectory(runs: Sequence[Run]) -> Plot | None:
    """KL to the reference and performance along training, from each run's ``eval_checkpoints.json``
    (``tether eval --checkpoints``): a point per checkpoint, starting at step 0 from the reference (KL 0,
    the reference's own performance), as the ε-DPO paper's Figure 3."""
    have = [r for r in runs if r.checkpoint_evals]
    if not have:
        return None
    keys = [
        k for k in PERFORMANCE if all(k in row.get("metrics", {}) for r in have for row in r.checkpoint_evals)
    ]
    key = keys[0] if keys else None
    panels = [("kl", "KL(π‖π_ref)")] + ([(key, key)] if key else [])
    fig = _figure((5.0 * len(panels), 4.0))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    series = []
    for ax, (metric, label) in zip(axes, panels, strict=True):
        for r in have:
            rows = r.checkpoint_evals
            start = 0.0 if metric == "kl" else (rows[0].get("reference_metrics") or {}).get(metric)
            xs = [float(row["step"]) for row in rows]
            ys = [row.get("metrics", {}).get(metric) for row in rows]
            pts = [(x, y) for x, y in zip(xs, ys, strict=True) if isinstance(y, (int, float))]
            if isinstance(start, (int, float)):
                pts = [(0.0, float(start)), *pts]
            if not pts:
                continue
            ax.plot([p[0] for p in pts], [p[1] for p in pts], color=r.color, marker="o", label=r.label)
            series.append(Series(metric, r.label, "checkpoint", [p[0] for p in pts], [p[1] for p in pts]))
        _no_false_zoom(ax, [y for s in series if s.metric == metric for y in s.y])
        _style(ax, label, label)
    axes[0].legend(frameon=False, fontsize=9)
    caption = (
        f"KL to the reference{f' and {key}' if key else ''} per checkpoint (`tether eval --checkpoints`), "
        "from the reference at step 0 (the ε-DPO paper's Figure 3)."
    )
    return Plot("trajectory", "Along training", caption, fig, series)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For each (KL, performance) point: whether no other point has KL ≤ and performance ≥ with one of
    them strict (lower KL and higher performance are better)."""
    return [
        not any((k2 <= k and p2 >= p) and (k2 < k or p2 > p) for j, (k2, p2) in enumerate(points) if j != i)
        for i, (k, p) in enumerate(points)
    ]


def plot_sweep_frontier(
    points: Sequence[tuple[str, str, float, float]], ylabel: str, title: str = "Performance against KL"
) -> Plot | None:
    """The ε-DPO paper's Figure 5: (method, run name, KL, performance) points, one line per method
    through its non-dominated points (:func:`pareto_front`), dominated points faded."""
    if not points:
        return None
    fig = _figure((7.0, 4.8))
    ax = fig.subplots()
    series = []
    for i, method in enumerate(sorted({p[0] for p in points})):
        mine = sorted([p for p in points if p[0] == method], key=lambda p: (p[2], p[3]))
        front = pareto_front([(p[2], p[3]) for p in mine])
        on = [p for p, f in zip(mine, front, strict=True) if f]
        off = [p for p, f in zip(mine, front, strict=True) if not f]
        color = f"C{i % 10}"
        ax.plot([p[2] for p in on], [p[3] for p in on], color=color, marker="o", linewidth=1.6, label=method)
        if off:
            ax.plot(
                [p[2] for p in off], [p[3] for p in off], color=color, marker="o", alpha=0.3, linestyle="none"
            )
        for p, f in zip(mine, front, strict=True):
            ax.annotate(
                p[1],
                (p[2], p[3]),
                textcoords="offset points",
                xytext=(5, 5),
                fontsize=7,
                alpha=1.0 if f else 0.45,
            )
        series.append(Series("frontier", method, "front", [p[2] for p in on], [p[3] for p in on]))
        series.append(Series("frontier", method, "dominated", [p[2] for p in off], [p[3] for p in off]))
    _no_false_zoom(ax, [p[3] for p in points])
    _style(ax, title, ylabel, "KL(π‖π_ref) (sampled completions)")
    ax.legend(title="method (faded: dominated)", frameon=False, fontsize=9)
    caption = (
        f"{ylabel} against KL to the reference, one line per method through its non-dominated points; "
        "dominated points faded (the ε-DPO paper's Figure 5)."
    )
    return Plot("frontier", title, caption, fig, series)


def _no_false_zoom(ax, ys: Sequence[float], rel: float = 1e-3) -> None:
    """Keep matplotlib from zooming into values that differ by rounding only: the y range spans at least
    ``rel`` × the largest magnitude (and no offset notation), so identical values look identical."""
    ys = [y for y in ys if math.isfinite(y)]
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    if not ys:
        return
    lo, hi = min(ys), max(ys)
    need = max(rel * max(abs(lo), abs(hi)), 1e-6)
    if hi - lo < need:
        mid = (hi + lo) / 2
        ax.set_ylim(mid - need * 25, mid + need * 25)


SKIP_NOTES = {
    "training": "no run logged loss, reward margins or accuracies",
    "deviation": "no run logged `deviation` (it needs a reference)",
    "gamma_ref": "no sDPO run (with `stages.json` and `gamma_ref` per stage)",
    "frontier": "no run has an eval.json with both a success and a KL field",
    "trajectory": "no run has an eval_checkpoints.json (`tether eval RUN --checkpoints all`)",
    **{
        s.name: f"no run logged {', '.join(f'`{k}`' for k, _, _ in s.panels)} ({s.title})"
        for s in state_plots()
    },
}


def make_plots(runs: Sequence[Run], smooth: float | None = None) -> dict[str, Plot | None]:
    """Every plot, by name; ``None`` where no run has the metrics."""
    return {
        "training": plot_training(runs, smooth),
        "deviation": plot_deviation(runs, smooth),
        **{spec.name: plot_state(runs, spec, smooth) for spec in state_plots()},
        "gamma_ref": plot_gamma_ref(runs),
        "frontier": plot_frontier(runs),
        "trajectory": plot_trajectory(runs),
    }


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Draw one run's curves as PNGs in ``out_dir`` (default ``<run_dir>/plots``); returns their paths."""
    runs = load_runs([run_dir])
    out = Path(out_dir) if out_dir is not None else RunDir(run_dir).plots
    out.mkdir(parents=True, exist_ok=True)
    return [p.save(out) for p in make_plots(runs).values() if p is not None]
