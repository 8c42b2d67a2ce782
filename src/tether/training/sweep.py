"""``tether sweep``: the product of a grid of config values, one run directory per point under one sweep
directory, each evaluated with one shared setting; a table and the KL–performance frontier.

The ε-DPO paper's Figure 5 (DPO, ε-DPO and TR-DPO over β ∈ {0.01, 0.05, 0.1, 0.5}) on the user's model and
data::

    tether sweep dpo.yaml --grid method.name=dpo,epsilon_dpo --grid method.beta=0.01,0.05,0.1,0.5

Every point's config is built and validated (the config's own checks, and the data once per distinct data
setting) before the first run starts, so a typo in the last grid value costs nothing. A rerun is a resume:
a finished run is not trained again, a killed one continues from its last checkpoint
(``train.resume``), an evaluation already made with the same settings is kept. A sweep directory is bound
to its base config (``sweep.json``); one holding runs of another base config is refused.

All points start from the same model, so the reference's log-prob tables and generations are computed by
the first evaluation and read from the cache (:mod:`tether.engine.cache`) by the others.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tether.config import Config, _parse_override, apply_overrides, load_config
from tether.engine.cache import hash_key
from tether.errors import ConfigError, TetherError, closest, shown_text
from tether.evaluation.evaluate import EvalOptions, performance, run_eval
from tether.rundir import RunDir, SweepDir

PROTECTED = ("train.output_dir", "train.resume", "train.overwrite")
"""Keys the sweep sets itself for each point."""


@dataclass
class Point:
    """One grid point: its overrides, its run directory's name and its validated config."""

    name: str
    overrides: list[str]
    values: dict[str, Any]
    cfg: Config
    status: str = "pending"
    """``trained``, ``resumed`` or ``done`` (finished before this call)."""
    eval_status: str = "pending"
    """``evaluated`` or ``kept`` (an evaluation with the same settings was already there)."""
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class SweepResult:
    path: Path
    points: list[Point]
    table: Path
    frontier: Path | None
    performance_key: str | None
    seconds: float
    against: dict[str, dict[str, Any]] = field(default_factory=dict)
    """With a baseline point: each other point's paired comparison with it (``tether compare``'s row)."""


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["method.beta=0.01,0.1", ...]`` → ``[("method.beta", ["0.01", "0.1"]), ...]`` (key order kept)."""
    grid: list[tuple[str, list[str]]] = []
    for item in items:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise TetherError(f"--grid {item}: expected key=v1,v2,... e.g. method.beta=0.01,0.1")
        values = [v.strip() for v in text.split(",")]
        if not all(values):
            raise TetherError(f"--grid {item}: an empty value")
        if len(set(values)) != len(values):
            raise TetherError(f"--grid {item}: a value appears twice")
        if key in PROTECTED:
            raise TetherError(f"--grid {key}: set by the sweep itself; it cannot be a grid key")
        if any(k == key for k, _ in grid):
            raise TetherError(f"--grid {key}: given twice; list all its values in one --grid")
        grid.append((key, values))
    if not grid:
        raise TetherError("--grid: give at least one, e.g. --grid method.beta=0.01,0.1")
    return grid


def _point_name(values: dict[str, str]) -> str:
    """``dpo_beta=0.1``: the method name bare, other keys by their last part."""
    parts = [v if k == "method.name" else f"{k.rsplit('.', 1)[-1]}={v}" for k, v in values.items()]
    name = "_".join(p.replace("/", "-").replace(" ", "") for p in parts)
    if len(name.encode()) <= _MAX_NAME_BYTES:
        return name
    # a file system takes 255 bytes a name: keep a readable head and tell points apart by a hash of the whole
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    head = name.encode()[: _MAX_NAME_BYTES - 13].decode(errors="ignore")
    return f"{head}-{digest}"


#: The longest point directory name (bytes): under the 255 most file systems allow, with room for suffixes.
_MAX_NAME_BYTES = 200


def _base_mapping(config: str | Path, overrides: Sequence[str], out: Path) -> dict[str, Any]:
    """The base config (file + overrides, before the grid; defaults filled in) for the manifest."""
    return load_config(config, [*overrides, f"train.output_dir={out}"]).to_dict()


def _differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(k), b.get(k), f"{where}.{k}" if where else str(k))
        return out
    return [] if a == b else [f"{where}: {b!r} there, {a!r} now"]


def plan(
    config: str | Path,
    grid: Sequence[tuple[str, Sequence[str]]],
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
) -> tuple[SweepDir, dict[str, Any], list[Point]]:
    """Every point's validated config (nothing trained, no weight loaded). Raises one
    :class:`TetherError` naming the grid point and key at fault."""
    for item in overrides:
        if _parse_override(item)[0][:2] in (["train", "output_dir"], ["train", "resume"]):
            raise TetherError(f"{item}: the sweep sets it; use --out for the sweep directory")
    base_cfg = load_config(config, list(overrides))
    sweep = SweepDir(out if out is not None else base_cfg.train.output_dir)
    base = _base_mapping(config, overrides, sweep.path)
    points = []
    for combo in itertools.product(*[values for _, values in grid]):
        values = {k: v for (k, _), v in zip(grid, combo, strict=True)}
        name = _point_name(values)
        ov = [*overrides, *(f"{k}={v}" for k, v in values.items())]
        ov.append(f"train.output_dir={sweep.path / name}")
        try:
            cfg = load_config(config, ov)
        except ConfigError as e:
            where = ", ".join(f"{k}={v}" for k, v in values.items())
            msg = re.sub(r"^override '[^']*': ", "", str(e).removeprefix(f"{config}: "))  # the grid names it
            raise TetherError(f"--grid ({where}): {msg}") from None
        points.append(Point(name, ov, values, cfg))
    if len({p.name for p in points}) != len(points):
        raise TetherError("--grid: two points would share a run directory name")
    return sweep, base, points


def check_data(points: Sequence[Point]) -> None:
    """Every distinct data setting of the grid read, checked and tokenized once (no weights)."""
    from tether.training.job import validate

    seen: set[str] = set()
    for p in points:
        method, _ = p.cfg.resolved_method()
        key = hash_key(p.cfg.to_dict()["data"], p.cfg.to_dict()["model"], method.data)
        if key in seen:
            continue
        seen.add(key)
        try:
            validate(p.cfg)
        except TetherError as e:
            if hasattr(e, "problems"):
                raise
            raise TetherError(f"grid point {p.name}: {e}") from None


def check_manifest(sweep: SweepDir, base: dict[str, Any]) -> None:
    """Refuse a sweep directory bound to another base config, or a directory that is not a sweep."""
    manifest = sweep.read_manifest()
    if manifest is None:
        if sweep.path.is_dir() and any(sweep.path.iterdir()):
            raise TetherError(
                f"{sweep.path}: not empty and not a sweep directory (no sweep.json); choose another --out"
            )
        return
    diff = _differences(base, manifest["base"])
    if diff:
        raise TetherError(
            f"{sweep.path} holds runs of a different base config ({diff[0]}"
            f"{f' and {len(diff) - 1} more' if len(diff) > 1 else ''}); choose another --out"
        )


def _train(p: Point, rd: RunDir) -> None:
    """Train one point: fresh, or resumed from its last checkpoint after a kill (an sDPO point: its finished
    stages kept, the unfinished one resumed)."""
    from tether.training.job import train

    staged = rd.is_staged()
    if rd.stages.exists() if staged else rd.is_finished():  # sDPO writes stages.json after its last stage
        p.status = "done"
        return
    if staged or (rd.holds_run() and rd.checkpoint_dirs()):
        cfg, p.status = load_config_with(p, "train.resume=true"), "resumed"
    else:  # nothing to resume from: start again (the partial log is replaced)
        cfg, p.status = load_config_with(p, "train.overwrite=true"), "trained"
    t0 = time.time()
    train(cfg)
    p.seconds = round(time.time() - t0, 3)


def load_config_with(p: Point, extra: str) -> Config:
    from tether.config import from_dict

    return from_dict(apply_overrides(p.cfg.to_dict(), [extra]))


def _evaluate(p: Point, rd: RunDir, data: str, options: EvalOptions) -> None:
    """Evaluate a point's final model with the sweep's setting (kept when already done with it)."""
    key = hash_key(str(data), _options_key(options))
    old = None
    try:
        old = rd.read_eval()
    except TetherError:
        pass  # unreadable: evaluate again
    same = old is not None and old.get("sweep_eval_key") == key and old.get("model_mtime") == _mtime(rd)
    if same and (old.get("prompt_outcomes") or not old.get("n_generation_prompts")):  # type: ignore[union-attr]
        p.eval_status, p.metrics = "kept", old.get("metrics", {})
        return
    result = run_eval(str(rd.path), data, options)
    result.extra.update({"sweep_eval_key": key, "model_mtime": _mtime(rd)})
    rd.write_eval(result)  # with its per-prompt outcomes, for --baseline
    p.eval_status, p.metrics = "evaluated", result.metrics
    p.metrics["_reference_cache"] = result.reference_cache


def _mtime(rd: RunDir) -> float | None:
    """When the final model (sDPO: its last stage's) was written (an evaluation of an earlier model is not
    kept)."""
    rd = rd.last_stage()
    final = rd.final_model()
    path = Path(final) if final is not None else rd.final_adapter()
    return path.stat().st_mtime if path is not None else None


def _options_key(o: EvalOptions) -> dict[str, Any]:
    return {k: v for k, v in vars(o).items() if k not in ("progress",)}


def run_sweep(
    config: str | Path,
    grid: Sequence[str] | Sequence[tuple[str, Sequence[str]]],
    *,
    out: str | Path | None = None,
    overrides: Sequence[str] = (),
    data_eval: str | None = None,
    options: EvalOptions | None = None,
    only_plan: bool = False,
    after_point: Callable[[Point, RunDir], None] | None = None,
    baseline: str | None = None,
) -> SweepResult:
    """Run (or resume) the sweep and write its table and frontier; see the module docstring.

    ``after_point`` is called with each point and its run directory once it is trained and evaluated (for
    work of the caller's own per run, e.g. evaluating its checkpoints and then deleting them). ``baseline``
    names a point every other point is compared with prompt by prompt (:mod:`tether.evaluation.compare`);
    the table shows the comparison's columns."""
    t0 = time.time()
    parsed = parse_grid(grid) if grid and isinstance(grid[0], str) else list(grid)  # type: ignore[arg-type]
    sweep, base, points = plan(config, parsed, out, overrides)  # type: ignore[arg-type]
    data = data_eval or points[0].cfg.data.eval
    if not data:
        raise TetherError("--data-eval: needed (the base config has no data.eval to evaluate the runs on)")
    if not str(data).startswith("hf:") and not Path(data).exists():
        raise TetherError(f"--data-eval: {data}: file not found")
    names = [p.name for p in points]
    if baseline is not None and baseline not in names:
        raise TetherError(
            f"--baseline: no grid point '{shown_text(baseline)}'{closest(baseline, names)}; points: {', '.join(names)}"
        )
    check_manifest(sweep, base)
    check_data(points)
    options = options or EvalOptions()
    if baseline is not None and not options.generate_text:
        raise TetherError("--baseline: compares the points' generations prompt by prompt; drop --no-generate")
    sweep.path.mkdir(parents=True, exist_ok=True)
    manifest = sweep.read_manifest() or {"base": base, "config": str(config), "points": {}}
    manifest["grid"] = [[k, list(v)] for k, v in parsed]
    manifest["data_eval"] = str(data)
    for p in points:
        manifest["points"][p.name] = p.values
    sweep.write_manifest(manifest)
    if not only_plan:
        for p in points:
            rd = sweep.run(p.name)
            _train(p, rd)
            _evaluate(p, rd, str(data), options)
            if after_point is not None:
                after_point(p, rd)
    against = _against(sweep, points, baseline) if baseline is not None and not only_plan else {}
    table, frontier, key = write_summary(sweep, points, against)
    return SweepResult(sweep.path, points, table, frontier, key, round(time.time() - t0, 3), against)


def write_summary(
    sweep: SweepDir, points: Sequence[Point], against: dict[str, dict[str, Any]] | None = None
) -> tuple[Path, Path | None, str | None]:
    """The sweep's table and frontier plot over ``points`` (and the performance key they were read on)."""
    key = performance_key([p.metrics for p in points])
    return write_table(sweep, points, key, against), write_frontier(sweep, points, key), key


def _against(sweep: SweepDir, points: Sequence[Point], baseline: str) -> dict[str, dict[str, Any]]:
    """Each point's paired comparison with the baseline point (``tether compare``'s columns)."""
    from tether.evaluation.compare import as_rows, compare

    others = [p.name for p in points if p.name != baseline]
    got = as_rows(compare([sweep.run(n).path for n in [baseline, *others]]))
    return {n: r for n, r in zip(others, got, strict=True)}


def performance_key(metrics: Sequence[dict[str, Any]]) -> str | None:
    """The performance metric every point has (the first of :func:`performance`'s order)."""
    keys = [performance(m) for m in metrics]
    names = {k[0] for k in keys if k is not None}
    if not names or any(k is None for k in keys):
        return None
    return next(iter(names)) if len(names) == 1 else None


def rows(
    points: Sequence[Point], key: str | None, against: dict[str, dict[str, Any]] | None = None
) -> list[dict[str, Any]]:
    """One row per point: its grid values, KL, performance and whether it is on its method's frontier;
    with a baseline point, the paired comparison's columns (``against``, by point name)."""
    from tether.evaluation.report import pareto_front

    out = []
    for p in points:
        method, _ = p.cfg.resolved_method()
        out.append(
            {
                "run": p.name,
                "method": method.name,
                **{k: v for k, v in p.values.items() if k != "method.name"},
                "kl": p.metrics.get("kl"),
                "performance": p.metrics.get(key) if key else None,
                "train": p.status,
                "eval": p.eval_status,
                **_against_columns(against, p.name),
            }
        )
    for method in {r["method"] for r in out}:
        mine = [r for r in out if r["method"] == method and _finite(r["kl"]) and _finite(r["performance"])]
        front = pareto_front([(r["kl"], r["performance"]) for r in mine])
        for r, on in zip(mine, front, strict=True):
            r["frontier"] = on
    return out


AGAINST = ("difference", "ci_low", "ci_high", "mcnemar_p", "run_only", "first_only")
"""The columns of a paired comparison a sweep's table shows for each point against its baseline."""


def _against_columns(against: dict[str, dict[str, Any]] | None, name: str) -> dict[str, Any]:
    if not against:
        return {}
    row = against.get(name)
    metric = next(iter(against.values()))["metric"]
    return {"against": "baseline" if row is None else metric, **{k: (row or {}).get(k) for k in AGAINST}}


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def write_table(
    sweep: SweepDir,
    points: Sequence[Point],
    key: str | None,
    against: dict[str, dict[str, Any]] | None = None,
) -> Path:
    from tether.evaluation.report import md_table

    table = rows(points, key, against)
    header = list(dict.fromkeys(k for r in table for k in r))
    fmt = lambda v: "–" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = [
        f"# Sweep {sweep.path.name}",
        "",
        f"Performance: `{key or 'none'}`; KL: `kl` (KL(π‖π_ref) on sampled completions, `tether eval`). "
        "`frontier`: not dominated by a point of the same method with lower KL and higher performance.",
        "",
        md_table(header, [[fmt(r.get(h)) for h in header] for r in table]),
    ]
    sweep.table.write_text("\n".join(lines) + "\n")
    return sweep.table


def write_frontier(sweep: SweepDir, points: Sequence[Point], key: str | None) -> Path | None:
    from tether.evaluation.report import plot_sweep_frontier

    if key is None:
        sweep.frontier.unlink(missing_ok=True)
        return None
    pts = [
        (r["method"], r["run"], r["kl"], r["performance"])
        for r in rows(points, key)
        if _finite(r["kl"]) and _finite(r["performance"])
    ]
    plot = plot_sweep_frontier(pts, key, title=f"Sweep {sweep.path.name}: {key} against KL")
    if plot is None:
        return None
    plot.figure.savefig(sweep.frontier, dpi=130)
    return sweep.frontier
