"""The four papers' comparisons at a scale that can separate the methods (issue 14), in resumable parts.

    python benchmarks/papers_scale.py --parts sft          # part 1: the MinorSFT grid (also gives the SFT start)
    python benchmarks/papers_scale.py --parts pairs        # part 2: every comparator from the SFT start
    python benchmarks/papers_scale.py --parts frontier asft sdpo   # part 3: the β frontier, ASFT, sDPO
    python benchmarks/papers_scale.py --status             # what is done, what is left
    python benchmarks/papers_scale.py --collect docs/results/scale/results.json   # results, tables, plots

The seeds' pipeline: SFT on the task's SFT rows first (the ``sft`` sweep's point at ``--start-lr``), and
that model is the reference and starting point of every preference method; ASFT is also run from the
un-fine-tuned model (its paper says it needs no SFT stage). Every run is a point of a ``tether sweep``
(:mod:`tether.training.sweep`): a killed part is resumed by running it again (finished runs and
evaluations are kept, a half-trained run continues from its last checkpoint), so the parts can be cut
anywhere, e.g. ``timeout 85m python benchmarks/papers_scale.py --parts pairs`` and again later. A first
pass over every comparator at one learning rate is ``--pair-lrs 5e-06``; the default grid
then adds only the missing points; ``--methods kto simpo`` cuts the sweeps to those methods. ``--collect``
keeps the rows already in its file whose runs are no longer on this disk. A finished run's checkpoints
are deleted once it is evaluated (Figure 3's runs after their checkpoints are; ``--keep-checkpoints``
keeps them): each is 1.6 GB.

Sizes, and why: SmolLM2-135M-Instruct in fp32, full fine-tuning. SFT runs 100 steps × 8 rows (two epochs
of the 400 SFT rows), preference runs 100 steps × 4 pairs (half an epoch of the 800 pairs): hundreds of
rows per run, 2.5× the 40 steps of the earlier rerun (after which DPO had not moved a greedy output), and on
2 cores a run's training takes 4–7 min. The held-out split is the bundled
generator's (:func:`tether.data.tasks.write`, seed 0) grown to ``--heldout`` tasks (default 400, 100 per
family); the log-prob metrics (m_θ, pairwise accuracy) read all of them, generation and KL the first
``--eval-prompts`` (default 200, 50 per family: one task = 0.5 % of success, the 95 % interval ≈ ±6 points
at 30 % success), because generating is most of an evaluation's ~3 min. The training rows are the bundled
ones, byte for byte (checked). Success and win rate carry 95 % bootstrap intervals over prompts
(``tether eval``). On a GPU the same script scales by its arguments (``--model``, ``--steps``,
``--batch-size``, ``--dtype bfloat16``, ``--eval-prompts 400``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from tether.errors import closest
from tether.methods.registry import METHODS

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "data" / "tasks"

# ε-DPO's Table 1 comparators (arXiv 2502.13177), split by whether they read a reference model, each at
# its registry defaults (the papers' settings) over a small learning-rate grid; with MinorDPO (the MinorSFT
# paper's DPO, whose claim is that the chosen answer's likelihood is not pushed below the reference's).
# The papers' own methods (and ASFT's rival ORPO) first, so that a call cut short by its timeout has them.
WITH_REFERENCE = ["dpo", "epsilon_dpo", "minor_dpo", "ipo", "r_dpo", "kto", "beta_dpo"]
REFERENCE_FREE = ["asft", "orpo", "cpo", "slic_hf", "rrhf", "simpo"]
# TR-DPO at a run of ~100 steps: the paper's soft (α) and hard (τ) variants with the update period scaled
# to the run (TRL's α = 0.6, τ = 512 never updates in 100 steps)
TR_DPO = {"soft": {"alpha": 0.6, "tau": 8}, "hard": {"alpha": 1.0, "tau": 32}}
TR_DPO_LABEL = {"tr_dpo_soft": "tr_dpo (soft, α)", "tr_dpo_hard": "tr_dpo (hard, τ)"}
# ε-DPO's Figure 5 over β: the paper's grid {0.01, 0.05, 0.1, 0.5} less 0.05 (the cost of a point is a run),
# each method's point at its default β being its run of the comparators' table at the frontier lr
FRONTIER_METHODS = ["dpo", "epsilon_dpo", "beta_dpo", "tr_dpo"]
FRONTIER_BETAS = ["0.01", "0.1", "0.5"]
# The headline rows repeated at seed 1 (each paper's claim compares them): DPO and ε-DPO (the frontier at
# its default β), MinorDPO, ASFT and ORPO at the frontier lr; SFT and MinorSFT at the start lr; sDPO
SEED1_PAIRS = ["dpo", "epsilon_dpo", "minor_dpo", "asft", "orpo"]


@dataclass
class Sweep:
    """One ``tether sweep``: a base config, its grid, the held-out file it is evaluated on."""

    name: str
    part: str
    base: dict[str, Any]
    grid: list[tuple[str, list[str]]]
    eval_data: str
    extra: dict[str, Any] = field(default_factory=dict)


def _f(v: Any, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def _table(header: list[str], lines: list[list[str]]) -> list[str]:
    """A Markdown table (tether's report renderer) and the blank line after it, as lines."""
    from tether.evaluation.report import md_table

    return [*md_table(header, lines).split("\n"), ""]


def median(xs: list[float]) -> float | None:
    """The median (robust to a step slowed by another process on a shared machine)."""
    xs = sorted(xs)
    return None if not xs else (xs[len(xs) // 2] + xs[(len(xs) - 1) // 2]) / 2


def step_times(run_dir: Path) -> list[float]:
    """Every optimizer-step time of a run (all stages), each stage's first (warm-up) step left out."""
    times = []
    for path in sorted(run_dir.rglob("metrics.jsonl")):
        steps = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        times += [s["step_seconds"] for s in steps if "step_seconds" in s][1:]
    return times


def gamma_by_reference(run_dir: Path, start: str, raw: dict[str, Any]) -> list[dict[str, Any]]:
    """γ_ref of every sDPO stage's reference M_0..M_{T-1}, all on the LAST chunk D_T.

    The per-stage ``gamma_ref`` of a run is each reference on its own chunk, so it mixes the model change
    with the data change; the paper's claim (arXiv:2403.19270: γ_ref rises, −38.6 → −25.1 on
    UltraFeedback, its last chunk) compares the references on the same data. This measures exactly that.
    """
    import torch

    import tether.engine.models as models
    from tether.data import read_rows, tokenize_rows
    from tether.engine.logprobs import LogProbModel
    from tether.engine.reference import compute_table

    order = raw["stages"]["order"]
    column = raw["stages"]["column"]
    rows = [r for r in read_rows(raw["data"]["train"]) if r.data.get(column) == order[-1]]
    refs = [start] + [str(run_dir / f"stage-{t}" / "final") for t in range(1, len(order))]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    out = []
    for t, ref in enumerate(refs):
        path = models.resolve_model_dir(ref)
        tok = models.load_tokenizer(path)
        ex = tokenize_rows(rows, tok, kind="pairs", max_length=raw["data"]["max_length"]).examples
        table = compute_table(
            LogProbModel(models.load_model(path, dtype=raw["model"]["dtype"]).to(device).eval()),
            ex,
            batch_size=8,
            pad_id=tok.pad_token_id,
            device=device,
            desc=f"gamma_ref of M_{t} on the last chunk",
        )
        out.append({"reference": f"M_{t}", "gamma_ref": float((table[:, 0] - table[:, 1]).mean())})
    return out


def base_config(args, *, model: str, data: Path, steps: int, batch: int, lr: float, method: dict) -> dict:
    return {
        "model": {"name": model, "dtype": args.dtype},
        "data": {"train": str(data), "max_length": 256},
        "method": method,
        "train": {
            "batch_size": batch,
            "max_steps": steps,
            "lr": lr,
            "warmup_ratio": 0.1,
            "scheduler": "cosine",
            "seed": 0,
            "save_every": max(1, steps // 4),  # resumable, and Figure 3's checkpoints
            "save_total_limit": 4,
            "progress": not args.quiet,
        },
    }


def start_model(args) -> str:
    """The SFT start of the preference methods: the ``sft`` sweep's SFT point at ``--start-lr``."""
    return str(Path(args.runs) / "sft" / f"sft_lr={args.start_lr}" / "final")


def plan(args, data: Path) -> list[Sweep]:
    sft_rows, pairs = data / "sft.train.jsonl", data / "pairs.train.jsonl"
    sft_eval, pair_eval = str(data / "sft.heldout.jsonl"), str(data / "pairs.heldout.jsonl")
    lrs = args.sft_lrs
    sft = base_config(
        args, model=args.model, data=sft_rows, steps=args.sft_steps, batch=args.sft_batch, lr=1e-5,
        method={"name": "sft"},
    )  # fmt: skip
    start = start_model(args)

    def pair_base(method: dict, model: str = start, lr: float = 5e-6) -> dict:
        return base_config(args, model=model, data=pairs, steps=args.steps, batch=args.batch_size, lr=lr,
                           method=method)  # fmt: skip

    out = [
        Sweep(
            "sft",
            "sft",
            sft,
            [("method.name", ["sft", "minor_sft", "sft_dpo"]), ("train.lr", lrs)],
            sft_eval,
            {"mc": True},
        ),
        Sweep(
            "sft_seed1",
            "sft",
            sft,
            [("method.name", ["sft", "minor_sft"]), ("train.lr", [args.start_lr]), ("train.seed", ["1"])],
            sft_eval,
            {"mc": True},
        ),
        Sweep(
            "with_reference",
            "pairs",
            pair_base({"name": "dpo"}),
            [("method.name", WITH_REFERENCE), ("train.lr", args.pair_lrs)],
            pair_eval,
            {"checkpoints": [f"{m}_lr={args.frontier_lr}" for m in ("dpo", "epsilon_dpo")]},
        ),
        Sweep(
            "reference_free",
            "pairs",
            pair_base({"name": "orpo"}),
            [("method.name", REFERENCE_FREE), ("train.lr", args.pair_lrs)],
            pair_eval,
        ),
    ]
    for variant, params in TR_DPO.items():
        out.append(Sweep(f"tr_dpo_{variant}", "pairs", pair_base({"name": "tr_dpo", **params}),
                         [("train.lr", args.pair_lrs)], pair_eval))  # fmt: skip
    frontier_lr = args.frontier_lr
    for m in FRONTIER_METHODS:
        params = TR_DPO["soft"] if m == "tr_dpo" else {}
        betas = [b for b in FRONTIER_BETAS if float(b) != METHODS[m].defaults["beta"]]
        out.append(Sweep(f"frontier_{m}", "frontier", pair_base({"name": m, **params}, lr=float(frontier_lr)),
                         [("method.beta", betas)], pair_eval))  # fmt: skip
    out += [
        Sweep("pairs_seed1", "frontier", pair_base({"name": "dpo"}, lr=float(frontier_lr)),
              [("method.name", SEED1_PAIRS), ("train.seed", ["1"])], pair_eval),
        Sweep("asft_from_instruct", "asft", pair_base({"name": "asft"}, model=args.model),
              [("train.lr", args.pair_lrs)], pair_eval),
    ]  # fmt: skip
    sdpo = pair_base({"name": "dpo"}, lr=float(frontier_lr))
    sdpo["train"]["max_steps"] = max(1, args.steps // 4)  # per stage: the same total as one-shot DPO
    sdpo["train"]["save_every"] = max(1, args.steps // 8)
    out.append(Sweep("sdpo", "sdpo", sdpo, [("train.lr", [frontier_lr])], pair_eval, {"stages": True}))
    out.append(Sweep("sdpo_seed1", "sdpo", sdpo, [("train.seed", ["1"])], pair_eval, {"stages": True}))
    return out


def only_methods(sweep: Sweep, methods: list[str]) -> Sweep | None:
    """The sweep with its method grid cut to ``methods`` (None when none of its runs is of them)."""
    grid = dict(sweep.grid)
    names = grid.get("method.name", [sweep.base["method"]["name"]])
    kept = [m for m in names if m in methods]
    if not kept:
        return None
    if "method.name" in grid:
        grid["method.name"] = kept
    return replace(sweep, grid=list(grid.items()))


def write_data(args) -> Path:
    """The bundled tasks with the held-out split grown to ``--heldout`` tasks; training rows unchanged."""
    from tether.data import tasks

    out = Path(args.runs) / "data"
    tasks.write(out, seed=0, n_train=400, n_heldout=args.heldout)
    for name in ("sft.train.jsonl", "pairs.train.jsonl", "mc.train.jsonl"):
        if (out / name).read_bytes() != (BUNDLED / name).read_bytes():
            raise SystemExit(f"{name}: the generator no longer reproduces the bundled training rows")
    return out


def sdpo_order(args, data: Path) -> list[str]:
    """Task families easy → hard, as sDPO orders its chunks: by the SFT start's held-out success per family
    (the reference's accuracy; ties by name)."""
    ev = json.loads((Path(start_model(args)).parent / "eval.json").read_text())["metrics"]
    fams = ["arithmetic", "choice", "format", "reverse"]
    return sorted(fams, key=lambda f: (-ev[f"generation/success/{f}"], f))


def run_part(args, sweep: Sweep, data: Path) -> None:
    from tether.evaluation.evaluate import EvalOptions, evaluate, evaluate_checkpoints
    from tether.training.sweep import run_sweep

    base = json.loads(json.dumps(sweep.base))
    if base["model"]["name"] == start_model(args) and not Path(start_model(args)).is_dir():
        raise SystemExit(
            f"{sweep.name}: starts from the SFT model {start_model(args)}, not trained yet: run --parts sft first"
        )
    if sweep.extra.get("stages"):
        order = sdpo_order(args, data)
        base["stages"] = {"by": "column", "column": "source", "order": order}
    cfg_dir = Path(args.runs) / "configs"
    cfg_dir.mkdir(parents=True, exist_ok=True)
    cfg = cfg_dir / f"{sweep.name}.yaml"
    cfg.write_text(yaml.safe_dump(base, sort_keys=False))
    options = EvalOptions(
        max_samples=args.eval_prompts,
        max_new_tokens=args.max_new_tokens,
        batch_size=32,
        progress=not args.quiet,
    )
    checkpoints = set(sweep.extra.get("checkpoints", []))

    def after(p, rd) -> None:
        """Per run, once trained and evaluated: the MC evaluation, Figure 3's evaluation of the checkpoints
        (KL and success along training), then the checkpoints deleted (a finished run is never trained
        again, and at 1.6 GB per checkpoint the whole plan would not fit on the disk)."""
        if sweep.extra.get("mc") and not (rd.path / "eval_mc.json").exists():
            evaluate(str(rd.path), str(data / "mc.heldout.jsonl"), metrics=["mc"], progress=not args.quiet,
                     out=rd.path / "eval_mc.json")  # fmt: skip
        if p.name in checkpoints and not rd.eval_checkpoints.exists():
            evaluate_checkpoints(str(rd.path), sweep.eval_data, options)
        if not args.keep_checkpoints:
            for d in [rd, *rd.stage_dirs()]:
                shutil.rmtree(d.checkpoints, ignore_errors=True)

    t0 = time.time()
    result = run_sweep(
        cfg, sweep.grid, out=Path(args.runs) / sweep.name, data_eval=sweep.eval_data, options=options,
        after_point=after,
    )  # fmt: skip
    if sweep.extra.get("stages"):  # sDPO's claim: each stage's reference is better, on the same (last) chunk
        for p in result.points:
            run = result.path / p.name
            if not (run / "gamma_last_chunk.json").exists():
                gammas = gamma_by_reference(run, base["model"]["name"], base)
                (run / "gamma_last_chunk.json").write_text(json.dumps(gammas, indent=1))
    print(f"== {sweep.name}: {len(result.points)} runs, {time.time() - t0:.0f} s", flush=True)


# ------------------------------------------------------------------------------------------ results

SERIES = (  # per-step training series kept in results.json (plots: likelihood dynamics, β trajectory)
    "loss", "logps/chosen", "logps/rejected", "minor_sft/weight", "minor_sft/weight_sq", "kl/beta",
    "kl/p_epsilon_steps", "kl/n_epsilon_steps", "beta_dpo/beta", "tr_dpo/updates", "rewards/margins",
)  # fmt: skip
KEEP = ("generation/success", "win_rate", "kl", "deviation", "pairwise/accuracy", "pairwise/reward_accuracy",
        "pairwise/likelihood_accuracy", "mc/accuracy")  # fmt: skip


def _kept(metrics: dict[str, Any]) -> dict[str, Any]:
    return {
        k: v for k, v in metrics.items() if k.split("/ci_")[0] in KEEP or k.startswith("generation/success/")
    }


def finished(run_dir: Path) -> bool:
    """Trained to the end (sDPO: its last stage) and evaluated."""
    from tether.rundir import RunDir

    rd = RunDir(run_dir)
    return rd.last_stage().is_finished() and rd.eval.exists()


def collect(args, sweeps: list[Sweep]) -> list[dict[str, Any]]:
    """One record per finished run: grid values, evaluation (with intervals), per-step series, timing."""
    from tether.rundir import RunDir

    out = []
    for sw in sweeps:
        root = Path(args.runs) / sw.name
        for run_dir in sorted(d for d in root.iterdir() if d.is_dir()) if root.is_dir() else []:
            if not finished(run_dir):
                continue
            rd = RunDir(run_dir)
            last = rd.last_stage()
            manifest = json.loads((root / "sweep.json").read_text())
            ev = rd.read_eval() or {}
            train = [r for st in (rd.stage_dirs() if rd.is_staged() else [rd]) for r in st.read_metrics()[0]]
            summary = last.read_summary()
            cfg = last.read_config_mapping()
            hparams = last.read_config().resolved_method()[1]  # with the method's defaults
            rec = {
                "sweep": sw.name,
                "run": run_dir.name,
                "values": manifest["points"].get(run_dir.name, {}),
                "method": summary.get("method"),
                "lr": cfg["train"]["lr"],
                "seed": cfg["train"]["seed"],
                "hparams": hparams,
                "beta": hparams.get("beta"),
                "metrics": _kept(ev.get("metrics", {})),
                "reference_metrics": _kept(ev.get("reference_metrics", {})),
                "series": {k: [r.get(k) for r in train] for k in SERIES if any(k in r for r in train)},
                "seconds": summary.get("seconds"),
                "step_seconds": median(step_times(run_dir)),  # each stage's warm-up step left out
            }
            mc = run_dir / "eval_mc.json"
            if mc.exists():
                m = json.loads(mc.read_text())
                rec["metrics"].update(_kept(m.get("metrics", {})))
                rec["reference_metrics"].update(_kept(m.get("reference_metrics", {})))
            if rd.eval_checkpoints.exists():
                rec["checkpoints"] = [
                    {"step": r["step"], **_kept(r.get("metrics", {}))}
                    for r in json.loads(rd.eval_checkpoints.read_text())["rows"]
                ]
            if (run_dir / "gamma_last_chunk.json").exists():
                rec["gamma_last_chunk"] = json.loads((run_dir / "gamma_last_chunk.json").read_text())
            if (run_dir / "stages.json").exists():
                rec["stages"] = json.loads((run_dir / "stages.json").read_text())
            out.append(rec)
    return out


def merged(rows: list[dict[str, Any]], out: Path, sweeps: list[Sweep]) -> list[dict[str, Any]]:
    """``rows`` with the rows already in ``out`` whose runs are not on this disk (deleted for space, or
    trained on another machine): a run collected again replaces its old row. In the plan's order."""
    old = json.loads(out.read_text()) if out.exists() else []
    new = {(r["sweep"], r["run"]) for r in rows}
    order = {s.name: i for i, s in enumerate(sweeps)}
    keep = [r for r in old if (r["sweep"], r["run"]) not in new and r["sweep"] in order]
    return sorted(keep + rows, key=lambda r: (order[r["sweep"]], r["run"]))


def _ci(m: dict[str, Any], key: str) -> str:
    """``0.412 [0.36, 0.46]``: a value and its 95 % bootstrap interval (``-`` when not measured)."""
    v = m.get(key)
    if v is None:
        return "-"
    lo, hi = m.get(f"{key}/ci_low"), m.get(f"{key}/ci_high")
    return f"{v:.3f}" + ("" if lo is None else f" [{lo:.2f}, {hi:.2f}]")


def weight_spread(series: dict[str, list]) -> float | None:
    """MinorSFT's per-sample weight: the mean over steps of its standard deviation within the step's batch."""
    w, w2 = series.get("minor_sft/weight"), series.get("minor_sft/weight_sq")
    if not w or not w2:
        return None
    stds = [max(0.0, b - a * a) ** 0.5 for a, b in zip(w, w2, strict=True) if a is not None and b is not None]
    return sum(stds) / len(stds) if stds else None


def tail_mean(series: list | None, n: int = 10) -> float | None:
    """The mean of a per-step series over its last ``n`` logged steps (one step's batch is a few pairs)."""
    xs = [x for x in series or [] if x is not None][-n:]
    return sum(xs) / len(xs) if xs else None


def frontier_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The β frontier: the ``frontier_*`` sweeps, with each method's point at its default β taken from the
    comparators' runs at the frontier's lr (TR-DPO: the soft variant), and the seed-1 repeats."""
    sweeps = {r["sweep"] for r in rows if r["sweep"].startswith("frontier_")}
    lrs = {r["lr"] for r in rows if r["sweep"] in sweeps or r["sweep"] == "pairs_seed1"}
    own = {"with_reference": set(FRONTIER_METHODS) - {"tr_dpo"}, "tr_dpo_soft": {"tr_dpo"}}
    return [
        r
        for r in rows
        if r["sweep"] in sweeps
        or (r["sweep"] == "pairs_seed1" and r["method"] in FRONTIER_METHODS)
        or (r["method"] in own.get(r["sweep"], ()) and r["lr"] in lrs)
    ]


def method_label(row: dict[str, Any]) -> str:
    """A run's method as the tables name it: ``sdpo`` for sDPO's runs (they train with DPO's loss)."""
    return "sdpo" if row["sweep"].startswith("sdpo") else row["method"]


def seed_rows(rows: list[dict[str, Any]]) -> list[tuple[str, str, dict[int, dict[str, Any]]]]:
    """The headline rows and their runs by seed: ``(label, lr, {seed: run})`` for SFT and MinorSFT at the
    start lr, the seed-1 pair methods at theirs, and sDPO; a row is listed once its seed-1 run is finished,
    with its seed-0 run from the grids."""
    by_key: dict[tuple[str, float], dict[int, dict[str, Any]]] = {}
    seed1 = [r for r in rows if r["sweep"] in ("sft_seed1", "pairs_seed1", "sdpo_seed1")]
    keys = {(method_label(r), r["lr"]) for r in seed1}
    # the runs at the default β (the frontier sweeps hold the same method and lr at other βs)
    grids = ("sft", "with_reference", "reference_free", "sdpo", "sft_seed1", "pairs_seed1", "sdpo_seed1")
    for r in rows:
        key = (method_label(r), r["lr"])
        if r["sweep"] in grids and key in keys:
            by_key.setdefault(key, {})[r["seed"]] = r
    return [(k, f"{lr:g}", runs) for (k, lr), runs in sorted(by_key.items())]


def deviation_at(points: list[tuple[float, float]], success: float) -> float | None:
    """m_θ at a task success by linear interpolation between a method's learning-rate points
    ``(success, m_θ)``; None outside their range (no extrapolation)."""
    pts = sorted(points)
    for (s0, d0), (s1, d1) in itertools.pairwise(pts):
        if s0 <= success <= s1:
            return d0 if s1 == s0 else d0 + (d1 - d0) * (success - s0) / (s1 - s0)
    return pts[0][1] if len(pts) == 1 and pts[0][0] == success else None


def matched(sft: list[dict[str, Any]]) -> tuple[list[list[str]], list[str]]:
    """MinorSFT's claim at equal accuracy: at each success level one of the methods reached (seed 0), every
    method's deviation m_θ interpolated over its learning-rate grid (the table's lines, the methods)."""
    curves: dict[str, list[tuple[float, float]]] = {}
    for r in sft:
        m = r["metrics"]
        if r["seed"] == 0 and m.get("generation/success") is not None and m.get("deviation") is not None:
            curves.setdefault(r["method"], []).append((m["generation/success"], m["deviation"]))
    levels = sorted({s for pts in curves.values() for s, _ in pts})
    return [[f"{x:.3f}", *(_f(deviation_at(curves[k], x)) for k in sorted(curves))] for x in levels], sorted(
        curves
    )


def tables(rows: list[dict[str, Any]]) -> str:
    """The comparisons as Markdown (``docs/results.md`` embeds exactly this)."""
    by_sweep: dict[str, list[dict]] = {}
    for r in rows:
        by_sweep.setdefault(r["sweep"], []).append(r)
    out: list[str] = []

    def lr(r: dict) -> str:
        return f"{r['lr']:g}"

    sft = by_sweep.get("sft", []) + by_sweep.get("sft_seed1", [])
    if sft:
        start = sft[0]["reference_metrics"]
        lines = [["starting model", "-", "-", _ci(start, "generation/success"), _f(start.get("mc/accuracy")),
                  "0", "0", "-", "-"]]  # fmt: skip
        for r in sorted(sft, key=lambda r: (r["method"], r["lr"], r["seed"])):
            m = r["metrics"]
            lines.append([r["method"], lr(r), str(r["seed"]), _ci(m, "generation/success"),
                          _f(m.get("mc/accuracy")), _f(m.get("deviation")), _f(m.get("kl"), "{:.2f}"),
                          _f(weight_spread(r["series"])), _f(r["step_seconds"], "{:.2f}")])  # fmt: skip
        out += ["### MinorSFT vs SFT vs SFT-using-DPO (SFT rows, from the instruct model)", ""]
        out += _table(["method", "lr", "seed", "task success [95% CI]", "MC accuracy", "deviation m_θ",
                    "KL to start", "weight spread (std in batch)", "s/step"], lines)  # fmt: skip
        levels, methods = matched(sft)
        if len(methods) > 1:
            out += ["Deviation m_θ at equal task success (each method interpolated over its learning rates; "
                    "`-`: outside the success range it reached):", ""]  # fmt: skip
            out += _table(["task success", *(f"m_θ {k}" for k in methods)], levels)
    comparators = [r for k in ("with_reference", "reference_free", "tr_dpo_soft", "tr_dpo_hard")
                   for r in by_sweep.get(k, [])]  # fmt: skip
    if comparators:
        start = comparators[0]["reference_metrics"]
        lines = [["SFT start", "-", _ci(start, "generation/success"), "0.5", "0", "0",
                  _f(start.get("pairwise/likelihood_accuracy")), "-"]]  # fmt: skip
        groups: dict[str, list[dict]] = {}
        for r in comparators:
            name = TR_DPO_LABEL.get(r["sweep"], r["method"])
            groups.setdefault(name, []).append(r)
        for name, rs in groups.items():
            best = max(
                rs,
                key=lambda r: (
                    r["metrics"].get("generation/success") or 0,
                    r["metrics"].get("win_rate") or 0,
                ),
            )
            m = best["metrics"]
            others = ", ".join(
                f"{lr(r)}: {_f(r['metrics'].get('generation/success'))}" for r in rs if r is not best
            )
            lines.append([name, lr(best), _ci(m, "generation/success"), _ci(m, "win_rate"), _f(m.get("kl"), "{:.2f}"),
                          _f(m.get("deviation")), _f(m.get("pairwise/likelihood_accuracy")),
                          others or "-"])  # fmt: skip
        out += ["### Every comparator at its best learning rate (pairs, from the SFT start)", ""]
        out += _table(["method", "best lr", "task success [95% CI]", "win rate vs start [95% CI]", "KL to start",
                    "deviation m_θ (chosen)", "likelihood accuracy", "success at the other lr"], lines)  # fmt: skip
    frontier = frontier_rows(rows)
    if frontier:
        lines = []
        for r in sorted(frontier, key=lambda r: (r["method"], r["beta"], r["seed"])):
            m = r["metrics"]
            # β-DPO's β is per batch (a quarter to two fifths of its steps at the 1e-3 floor): a mean
            final_beta = tail_mean(r["series"].get("kl/beta") or r["series"].get("beta_dpo/beta"))
            lines.append([r["method"], f"{r['beta']:g}", str(r["seed"]), _ci(m, "generation/success"),
                          _ci(m, "win_rate"), _f(m.get("kl"), "{:.2f}"), _f(final_beta, "{:.4f}")])  # fmt: skip
        out += [
            f"### KL–performance frontier: DPO, ε-DPO, β-DPO, TR-DPO over β (lr {frontier[0]['lr']:g})",
            "",
        ]
        out += _table(["method", "β", "seed", "task success [95% CI]", "win rate vs start [95% CI]", "KL to start",
                    "β, last 10 steps (ε-DPO, β-DPO)"], lines)  # fmt: skip
    sdpo = by_sweep.get("sdpo", []) + by_sweep.get("sdpo_seed1", [])
    if sdpo:
        lr = sdpo[0]["lr"]
        dpo = [d for w in ("with_reference", "pairs_seed1") for d in by_sweep.get(w, [])
               if d["method"] == "dpo" and d["lr"] == lr]  # fmt: skip
        lines = []
        for x in sorted(dpo, key=lambda d: d["seed"]) + sorted(sdpo, key=lambda d: d["seed"]):
            m = x["metrics"]
            stages = " → ".join(f"{st['gamma_ref']:.2f}" for st in x.get("stages") or []) or "-"
            last = " → ".join(f"{g['gamma_ref']:.2f}" for g in x.get("gamma_last_chunk") or []) or "-"
            lines.append([method_label(x), str(x["seed"]), _ci(m, "generation/success"),
                          _ci(m, "win_rate"), _f(m.get("kl"), "{:.2f}"), stages, last])  # fmt: skip
        out += [f"### sDPO vs one-shot DPO (the same pairs and steps, lr {lr:g})", ""]
        out += _table(["method", "seed", "task success [95% CI]", "win rate vs start [95% CI]", "KL to start",
                    "γ_ref per stage (own chunk)", "γ_ref of M_0..M_3 on the last chunk"], lines)  # fmt: skip
    seeds = seed_rows(rows)
    if seeds:
        lines = []
        for label, lr_, runs in seeds:
            succ = [runs[s]["metrics"].get("generation/success") for s in sorted(runs)]
            lines.append([label, lr_, *(_ci(runs[s]["metrics"], "generation/success") if s in runs else "-"
                                        for s in (0, 1)),
                          _f(sum(succ) / len(succ)) if len(succ) > 1 and None not in succ else "-",
                          *(_f(runs[s]["metrics"].get("kl"), "{:.2f}") if s in runs else "-" for s in (0, 1))])  # fmt: skip
        out += ["### The headline rows at two seeds", ""]
        out += _table(["method", "lr", "success, seed 0 [95% CI]", "success, seed 1 [95% CI]", "mean",
                    "KL, seed 0", "KL, seed 1"], lines)  # fmt: skip
    asft = [r for r in by_sweep.get("reference_free", []) + by_sweep.get("with_reference", [])
            if r["method"] in ("asft", "orpo", "dpo")] + by_sweep.get("asft_from_instruct", [])  # fmt: skip
    if any(r["method"] == "asft" for r in asft):
        lines = []
        for r in asft:
            m, series = r["metrics"], r["series"]
            start = "instruct" if r["sweep"] == "asft_from_instruct" else "SFT"
            lines.append([r["method"], start, f"{r['lr']:g}", _ci(m, "generation/success"),
                          _f(m.get("pairwise/likelihood_accuracy")),
                          _f(tail_mean(series.get("logps/chosen")), "{:.2f}"),
                          _f(tail_mean(series.get("logps/rejected")), "{:.2f}"),
                          _f(r["step_seconds"], "{:.2f}")])  # fmt: skip
        out += ["### ASFT vs DPO vs ORPO (pairs), and ASFT without the SFT stage", ""]
        out += _table(["method", "start", "lr", "task success [95% CI]", "likelihood accuracy",
                    "log p(chosen), last 10 steps", "log p(rejected), last 10 steps", "s/step"],
                      lines)  # fmt: skip
    return "\n".join(out)


def plots(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """The papers' figures from ``results.json``: the KL–success frontier with 95 % intervals (ε-DPO
    Figure 5), ε-DPO's β along training with its s = ±1 fractions (Figure 4), KL and success along training
    from checkpoints (Figure 3), chosen/rejected log-probs along training (the ASFT paper's dynamics) and
    MinorSFT's deviation against success (its claim: less drift at equal accuracy)."""
    from tether.evaluation.report import _figure

    out.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, name: str) -> None:
        fig.savefig(out / name, dpi=120)
        written.append(out / name)

    def start_line(ax, value: float | None, label: str = "the SFT start", vertical: bool = False) -> None:
        if value is not None:
            (ax.axvline if vertical else ax.axhline)(value, color="grey", ls="--", lw=1, label=label)

    frontier = [r for r in frontier_rows(rows) if r["seed"] == 0]
    if frontier:
        fig = _figure((6.5, 4.5))
        ax = fig.subplots()
        for method in sorted({r["method"] for r in frontier}):
            mine = sorted(
                (r for r in frontier if r["method"] == method), key=lambda r: r["metrics"].get("kl") or 0.0
            )
            pts = [(r["metrics"].get("kl"), r["metrics"], r["beta"]) for r in mine]
            pts = [(k, m, b) for k, m, b in pts if k is not None and m.get("generation/success") is not None]
            if not pts:
                continue
            xs = [k for k, _, _ in pts]
            ys = [m["generation/success"] for _, m, _ in pts]
            err = [[y - m.get("generation/success/ci_low", y) for y, (_, m, _) in zip(ys, pts, strict=True)],
                   [m.get("generation/success/ci_high", y) - y for y, (_, m, _) in zip(ys, pts, strict=True)]]  # fmt: skip
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=method)
            for x, y, (_, _, b) in zip(xs, ys, pts, strict=True):
                ax.annotate(f"β={b:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
        start_line(ax, frontier[0]["reference_metrics"].get("generation/success"))
        ax.set_xlabel("KL(π‖π_ref) on sampled completions")
        ax.set_ylabel("held-out task success (95% CI)")
        ax.set_title("Success against KL over β (ε-DPO Figure 5), points joined in KL order")
        ax.legend(fontsize=8)
        save(fig, "frontier.png")
    eps = [r for r in rows if r["method"] == "epsilon_dpo" and r["series"].get("kl/beta")]
    if eps:
        fig = _figure((9.0, 3.6))
        a1, a2 = fig.subplots(1, 2)
        for i, r in enumerate(eps):
            label = f"{r['sweep']}/{r['run']}"
            a1.plot(
                range(1, len(r["series"]["kl/beta"]) + 1), r["series"]["kl/beta"], color=f"C{i}", label=label
            )
            for key, style in (("kl/p_epsilon_steps", "-"), ("kl/n_epsilon_steps", "--")):
                ys = [y for y in r["series"].get(key) or [] if y is not None]
                if ys:  # a 10-step moving mean: one step's batch is 4 pairs
                    smooth = [tail_mean(ys[: j + 1]) for j in range(len(ys))]
                    a2.plot(range(1, len(ys) + 1), smooth, style, color=f"C{i}",
                            label=f"{label} {'s=+1' if 'p_' in key else 's=−1'}")  # fmt: skip
        a1.set_yscale("log")
        a1.set(xlabel="step", ylabel="β (log scale)", title="ε-DPO: β along training")
        a2.set(xlabel="step", ylabel="fraction of pairs, 10-step mean", title="ε-DPO: s = +1 / −1 per step")
        a1.legend(fontsize=6)
        a2.legend(fontsize=5)
        save(fig, "epsilon_beta.png")
    along = [r for r in rows if r.get("checkpoints")]
    if along:
        fig = _figure((9.0, 3.6))
        a1, a2 = fig.subplots(1, 2)
        for r in along:  # step 0 is the start itself: KL 0, its own success
            steps = [0] + [c["step"] for c in r["checkpoints"]]
            a1.plot(steps, [0.0] + [c.get("kl") for c in r["checkpoints"]], marker="o", label=r["run"])
            success = [r["reference_metrics"].get("generation/success")]
            success += [c.get("generation/success") for c in r["checkpoints"]]
            a2.plot(steps, success, marker="o", label=r["run"])
        start_line(a2, along[0]["reference_metrics"].get("generation/success"))
        a1.set(xlabel="step", ylabel="KL to the SFT start", title="KL along training (ε-DPO Figure 3)")
        a2.set(xlabel="step", ylabel="held-out task success", title="Success along training")
        a1.legend(fontsize=8)
        a2.legend(fontsize=8)
        save(fig, "along_training.png")
    dyn = [
        r
        for r in rows
        if r["sweep"] in ("with_reference", "reference_free") and r["method"] in ("dpo", "orpo", "asft")
    ]
    if any(r["method"] == "asft" for r in dyn):
        fig = _figure((6.5, 4.2))
        ax = fig.subplots()
        for i, r in enumerate(dyn):
            for key, style in (("logps/chosen", "-"), ("logps/rejected", "--")):
                ys = [y for y in r["series"].get(key) or [] if y is not None]
                if ys:  # a 10-step moving mean: one step's batch is 4 pairs
                    smooth = [tail_mean(ys[: j + 1]) for j in range(len(ys))]
                    ax.plot(range(1, len(ys) + 1), smooth, style, color=f"C{i}",
                            label=f"{r['run']} {key.split('/')[1]}")  # fmt: skip
        ax.set(xlabel="step", ylabel="summed log-prob per pair, 10-step mean",
               title="Likelihood dynamics (ASFT paper)")  # fmt: skip
        ax.legend(fontsize=6, ncol=2)
        save(fig, "likelihood_dynamics.png")
    sft = [r for r in rows if r["sweep"] in ("sft", "sft_seed1")]
    if sft:
        fig = _figure((6.0, 4.2))
        ax = fig.subplots()
        for method in sorted({r["method"] for r in sft}):
            mine = [r for r in sft if r["method"] == method and r["metrics"].get("deviation") is not None]
            xs = [r["metrics"].get("generation/success") for r in mine]
            ys = [r["metrics"]["deviation"] for r in mine]
            lo = [x - r["metrics"].get("generation/success/ci_low", x) for x, r in zip(xs, mine, strict=True)]
            hi = [
                r["metrics"].get("generation/success/ci_high", x) - x for x, r in zip(xs, mine, strict=True)
            ]
            ax.errorbar(xs, ys, xerr=[lo, hi], fmt="o", capsize=3, alpha=0.8, label=method)
            for x, y, r in zip(xs, ys, mine, strict=True):
                ax.annotate(f"{r['lr']:g}" + (f" s{r['seed']}" if r["seed"] else ""), (x, y), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")  # fmt: skip
        start_line(
            ax, sft[0]["reference_metrics"].get("generation/success"), "the instruct model", vertical=True
        )
        ax.set(xlabel="held-out task success (95% CI), points labelled by lr", ylabel="deviation m_θ (MinorSFT Eq. 8)",
               title="Drift at equal accuracy (MinorSFT)")  # fmt: skip
        ax.legend(fontsize=8)
        save(fig, "minor_sft_deviation.png")
    return written


def _lr(text: str) -> str:
    """A learning rate, kept as written (the runs' names are made from it)."""
    try:
        float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="*", default=["sft", "pairs", "frontier", "asft", "sdpo"])
    ap.add_argument("--runs", default="runs/papers_scale")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--steps", type=int, default=100, help="optimizer steps of a preference run")
    ap.add_argument("--batch-size", type=int, default=4, help="pairs per optimizer step")
    ap.add_argument("--sft-steps", type=int, default=100)
    ap.add_argument("--sft-batch", type=int, default=8)
    ap.add_argument("--sft-lrs", nargs="+", type=_lr, default=["1e-05", "2e-05", "4e-05"])
    ap.add_argument(
        "--start-lr", type=_lr, default="2e-05", help="the SFT point that starts the preference methods"
    )
    ap.add_argument(
        "--pair-lrs",
        nargs="+",
        type=_lr,
        default=["5e-06", "2e-05"],
        help="every preference method's lr grid",
    )
    ap.add_argument(
        "--frontier-lr",
        type=_lr,
        default="5e-06",
        help="the lr of the β frontier, the seed-1 repeats, sDPO and Figure 3 (one of --pair-lrs)",
    )
    ap.add_argument("--heldout", type=int, default=400, help="held-out tasks (100 per family by default)")
    ap.add_argument(
        "--eval-prompts",
        type=int,
        default=200,
        help="held-out prompts generated from (success, win rate, KL); the log-prob metrics use all",
    )
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--keep-checkpoints", action="store_true", help="keep each finished run's checkpoints")
    ap.add_argument("--sweeps", nargs="*", help="only these sweeps of the parts (names as --status lists)")
    ap.add_argument(
        "--methods", nargs="*", help="only these methods of the sweeps (e.g. to rerun a few points of a grid)"
    )
    ap.add_argument("--status", action="store_true")
    ap.add_argument("--collect", metavar="OUT", help="write the finished runs' results to OUT (results.json)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    for key, grid in (("frontier_lr", "pair_lrs"), ("start_lr", "sft_lrs")):
        # one of its grid's values, and spelled as there (2e-5 is 2e-05): the runs' names are made from it
        same = [x for x in getattr(args, grid) if float(x) == float(getattr(args, key))]
        if not same:
            flag = "--" + key.replace("_", "-")
            ap.error(
                f"{flag} {getattr(args, key)}: not one of --{grid.replace('_', '-')} {getattr(args, grid)}"
            )
        setattr(args, key, same[0])
    data = write_data(args)
    sweeps = plan(args, data)
    if args.status:
        for s in sweeps:
            d = Path(args.runs) / s.name
            done = [r for r in d.iterdir() if r.is_dir() and finished(r)] if d.is_dir() else []
            print(f"{s.part:9s} {s.name:20s} finished: {len(done)}")
        return
    if args.collect:
        rows = merged(collect(args, sweeps), Path(args.collect), sweeps)
        Path(args.collect).parent.mkdir(parents=True, exist_ok=True)
        Path(args.collect).write_text(json.dumps(rows, indent=1, default=str).replace(f"{REPO}/", ""))
        print(f"{args.collect}: {len(rows)} runs")
        print(tables(rows))
        for path in plots(rows, Path(args.collect).parent):
            print(f"plot: {path}")
        return
    for flag, chosen, known in (
        ("--parts", args.parts, {s.part for s in sweeps}),
        ("--sweeps", args.sweeps or [], {s.name for s in sweeps}),
    ):
        for name in chosen:
            if name not in known:
                ap.error(
                    f"{flag}: unknown {name!r}{closest(name, known)}; choices: {', '.join(sorted(known))}"
                )
    if args.methods:
        for name in args.methods:
            if name not in METHODS:
                ap.error(f"--methods: unknown {name!r}{closest(name, METHODS)}")
        sweeps = [s for s in (only_methods(s, args.methods) for s in sweeps) if s is not None]
    for s in sweeps:
        if s.part in args.parts and (not args.sweeps or s.name in args.sweeps):
            run_part(args, s, data)


if __name__ == "__main__":
    sys.exit(main())
