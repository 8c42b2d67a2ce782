"""``tether report``: PNG plots and a Markdown summary of one or more run directories.

A run directory is what ``tether train`` writes (``metrics.jsonl``, ``config.yaml``, ``summary.json``,
optionally ``eval.json`` from ``tether eval``); an sDPO run's root holds ``stages.json`` and one run
directory per stage (``stage-<t>/``), whose metrics are concatenated on one step axis.

Plots (each skipped, with a note in the Markdown, when no run logged its metrics; a method's state plot
only gets the note when one of the runs used that method):

- ``training.png``: loss, reward margin and reward accuracy per step (eval dashed);
- ``deviation.png``: MinorSFT's m_θ per step, every run on one axis (arXiv:2408.10642, Fig. 1);
- a method's declared state plot (``Method.state_plot``), e.g. ``epsilon_dpo.png``: ε-DPO's β and the
  fractions of pairs with s = +1 / s = −1 (arXiv:2502.13177, Alg. 1);
- ``gamma_ref.png``: sDPO's γ_ref per stage (arXiv:2403.19270, §2);
- ``frontier.png``: task success against KL to the reference across runs (from ``eval.json``), the
  ε-DPO paper's KL/performance frontier;
- ``trajectory.png``: KL and performance per checkpoint (from ``eval_checkpoints.json``, written by
  ``tether eval RUN --checkpoints all``), from the reference at step 0 (the ε-DPO paper's Figure 3).

Held-out numbers lead (the last-batch train numbers follow them); losses whose typical sizes differ by more
than 10× get separate panels; a y axis never zooms into values that differ by rounding only.

Which plot a run appears in depends on the metrics it logged, never on its method name. Each ``plot_*``
function returns a :class:`Plot` (the Figure and the plotted series, so tests can check what was drawn)
or ``None``.

Reading the run directories is :mod:`tether.evaluation.runs` (``eval.json`` through
:class:`tether.eval_result.EvalResult`), drawing :mod:`tether.evaluation.plots`; this module renders the
tables and ``report.md``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tether.evaluation.plots import (
    SKIP_NOTES,
    Plot,
    Series,
    _figure,
    loss_scales,
    make_plots,
    pareto_front,
    plot_deviation,
    plot_frontier,
    plot_gamma_ref,
    plot_run,
    plot_state,
    plot_sweep_frontier,
    plot_training,
    plot_trajectory,
)
from tether.evaluation.runs import (
    MAX_EVAL_JSON_FIELDS,
    EvalSummary,
    Run,
    eval_summary,
    flatten,
    load_run,
    load_runs,
    success_and_kl,
)
from tether.methods.registry import METHODS, StatePlot, state_plots

__all__ = [
    "LAST_BATCH",
    "SKIP_NOTES",
    "EvalSummary",
    "Plot",
    "Run",
    "Series",
    "_figure",
    "eval_summary",
    "hyperparameters",
    "load_run",
    "load_runs",
    "loss_scales",
    "make_plots",
    "md_table",
    "pareto_front",
    "plot_deviation",
    "plot_frontier",
    "plot_gamma_ref",
    "plot_run",
    "plot_state",
    "plot_sweep_frontier",
    "plot_training",
    "plot_trajectory",
    "render_markdown",
    "success_and_kl",
    "summary_row",
    "write_report",
    "write_report_runs",
]


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _seconds(s: Any) -> str:
    if not isinstance(s, (int, float)):
        return "–"
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def hyperparameters(run: Run) -> str:
    method = {k: v for k, v in (run.config.get("method") or {}).items() if k != "name" and v is not None}
    if not method:
        method = run.summary.get("hparams") or {}
    train = run.config.get("train") or {}
    parts = [f"{k}={_fmt(v)}" for k, v in method.items()]
    if "lr" in train:
        parts.append(f"lr={_fmt(train['lr'])}")
    if "batch_size" in train:
        parts.append(f"batch={train['batch_size'] * train.get('grad_accum', 1)}")
    if run.stages:
        parts.append(f"stages={len(run.stages)}")
    return ", ".join(parts) or "–"


def _final(run: Run, key: str) -> float | None:
    """The last logged train value (the run's summary when the log is silent)."""
    v = run.last(key)
    if v is None:
        v = (run.summary.get("train_metrics") or {}).get(key)
    return v if isinstance(v, (int, float)) else None


def _final_eval(run: Run) -> dict[str, float]:
    out = dict(run.summary.get("eval_metrics") or {})
    if run.evals:
        last = run.evals[-1]["step"]
        out.update(
            {
                k: v
                for rec in run.evals
                if rec["step"] == last
                for k, v in rec.items()
                if k.startswith("eval/")
            }
        )
    return {k: v for k, v in out.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


LAST_BATCH = {k: f"last-batch {k}" for k in ("loss", "accuracy", "margin", "deviation")}
"""How the train columns are headed: they are one batch's numbers."""


def summary_row(run: Run) -> dict[str, str]:
    """The overview columns of one run (strings, ready for a table)."""
    ev = run.eval_summary
    success, kl = ev.success, ev.kl
    ev = _final_eval(run)
    steps = run.summary.get("steps") or (int(max(r["step"] for r in run.train)) if run.train else None)
    return {
        "run": run.name,
        "method": run.method,
        "hyper-parameters": hyperparameters(run),
        "steps": _fmt(steps),
        "time": _seconds(run.summary.get("seconds")),
        "loss": _fmt(_final(run, "loss")),
        "accuracy": _fmt(_final(run, "rewards/accuracies")),
        "margin": _fmt(_final(run, "rewards/margins")),
        "deviation": _fmt(_final(run, "deviation")),
        "eval loss": _fmt(ev.get("eval/loss")),
        "eval accuracy": _fmt(ev.get("eval/rewards/accuracies")),
        "success": _fmt(success[1] if success else None),
        "KL": _fmt(kl[1] if kl else None),
    }


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """A Markdown table (``|`` in a cell escaped); the one renderer of tether's reports and sweep tables."""
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _run_section(run: Run) -> str:
    """A key/value table of one run: its summary, every final eval metric and every eval.json field."""
    row = summary_row(run)
    skip = {"run", "eval loss", "eval accuracy", "success", "KL"}
    kv = [("directory", f"`{run.path}`")] + [(k, v) for k, v in row.items() if k not in skip]
    if run.summary.get("reference_mode"):
        kv.insert(3, ("reference", run.summary["reference_mode"]))
    kv += [(k, _fmt(v)) for k, v in sorted(_final_eval(run).items())]
    flat = flatten(run.eval_json or {})
    kv += [(f"eval.json: {k}", _fmt(v)) for k, v in list(flat.items())[:MAX_EVAL_JSON_FIELDS]]
    if len(flat) > MAX_EVAL_JSON_FIELDS:
        kv.append(
            ("eval.json", f"{len(flat) - MAX_EVAL_JSON_FIELDS} more fields in {run.path / 'eval.json'}")
        )
    parts = [f"### {run.label}", "", md_table(["", ""], kv)]
    if run.stages:
        rows = [
            (
                str(s["stage"]),
                _fmt(s.get("examples")),
                _fmt(s.get("gamma_ref")),
                f"`{s.get('final_model', '–')}`",
            )
            for s in run.stages
        ]
        parts += ["", md_table(["stage", "examples", "γ_ref", "final model"], rows)]
    parts += [f"\n*Note: {n}*" for n in run.notes]
    return "\n".join(parts)


def render_markdown(
    runs: Sequence[Run], plots: dict[str, Plot | None], paths: dict[str, Path], title: str
) -> str:
    header = ["run", "method", "hyper-parameters", "steps", "time", "eval loss", "eval accuracy", "success"]
    header += ["KL", "loss", "accuracy", "margin", "deviation"]
    rows = [summary_row(r) for r in runs]
    out = [
        f"# {title}",
        "",
        f"{len(runs)} run(s). Held-out numbers first: eval values are the last evaluation on held-out data; "
        "success and KL come from each run's `eval.json` (`tether eval`). The last-batch columns are the "
        "last logged training step, one batch (noisy).",
        "",
    ]
    shown = [LAST_BATCH.get(h, h) for h in header]
    out += [md_table(shown, [[row[h] for h in header] for row in rows]), "", "## Plots", ""]
    methods = {r.method for r in runs}
    others = {  # a state plot of a method none of the runs used is not worth a note
        spec.name for spec in state_plots() if not any(m in methods for m in _plotted_by(spec))
    }
    for name, plot in plots.items():
        if plot is None:
            out += [] if name in others else [f"*{name}.png skipped: {SKIP_NOTES[name]}.*", ""]
        else:
            out += [
                f"### {plot.title}",
                "",
                f"![{plot.title}]({paths[name].name})",
                "",
                f"*{plot.caption}*",
                "",
            ]
    out += ["## Runs", ""]
    out += [_run_section(r) + "\n" for r in runs]
    return "\n".join(out).rstrip() + "\n"


def _plotted_by(spec: StatePlot) -> list[str]:
    """The methods that declare this state plot."""
    return [m.name for m in METHODS.values() if m.state_plot is not None and m.state_plot.name == spec.name]


def write_report_runs(
    run_dirs: Iterable[str | Path], out_dir: str | Path, title: str, smooth: float | None
) -> tuple[Path, list[Run], dict[str, Path]]:
    """Plots and ``report.md`` in ``out_dir``: (the report's path, the runs read, the plots drawn)."""
    runs = load_runs(run_dirs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    plots = make_plots(runs, smooth)
    paths = {name: p.save(out) for name, p in plots.items() if p is not None}
    for stale in SKIP_NOTES.keys() - paths.keys():  # a plot an earlier report drew, skipped this time
        (out / f"{stale}.png").unlink(missing_ok=True)
    report = out / "report.md"
    report.write_text(render_markdown(runs, plots, paths, title))
    return report, runs, paths


def write_report(
    run_dirs: Iterable[str | Path],
    out_dir: str | Path,
    *,
    title: str = "tether report",
    smooth: float | None = None,
) -> Path:
    """Plots and ``report.md`` for ``run_dirs`` in ``out_dir``; returns the path of ``report.md``.

    ``smooth``: the EMA weight in [0, 1) for train curves (0: raw; ``None``: chosen from the length)."""
    return write_report_runs(run_dirs, out_dir, title, smooth)[0]
