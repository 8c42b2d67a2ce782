"""The whole DPO job a user waits for, TRL vs tether: one epoch over the pairs, model load, tokenization,
any reference precompute and the trained model's save included; and a 4-point β sweep that shares one
precompute.

Each job is one process (``bench_dpo.py --worker ...``: the same model, data, batches, optimizer and
settings as the step-time benchmark), timed by its wall clock from start to exit, so the Python imports,
the model load, the data tokenization and the precompute count; peak memory is the process's peak RSS.
Configurations are interleaved within a round (their order rotated from round to round) and the rounds
repeated, so a burst of load from other processes hits one round's runs, not one configuration's; the
table gives, per configuration, the median over the rounds of the same-round ratio to TRL and its range.

β sweep (``--betas``, 4 points): tether's first point computes the reference table into a fresh cache, the
other three read it (the cache key does not depend on β). Each round measures the first point and one
cache-reading point (its β cycling through the other three from round to round); the sweep's wall time is
first + 3 × cache-reading. TRL has no precompute to share: each β point is the same job again, so its sweep
is 4 × its job (counted, not run four times).

Model FLOP/s (``of peak``): the model FLOPs of the epoch's steps (6·N per position computed, + 2·N per
position of a reference forward; recomputation not counted; ``bench_dpo.flops_per_step``) over the summed
step times, as a fraction of the device's measured matmul peak in the run's precision (fp32, or bf16 with ``--bf16``).

    HF_HUB_OFFLINE=1 python benchmarks/bench_dpo.py --end-to-end            # the full table (defaults)
    HF_HUB_OFFLINE=1 python benchmarks/end_to_end.py --shapes tasks --rounds 1 --pairs 4   # a smoke run

Writes ``--out`` (JSON, default ``benchmarks/results/dpo-end-to-end.json``) and the Markdown table next to
it (``.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import bench_dpo  # noqa: E402

DEFAULT_CONFIGS = ("trl", "tether-precomputed", "tether-precomputed-gc")
SWEPT = "tether-precomputed"
"""The configuration whose β sweep is measured (tether's default)."""


def _job(args: argparse.Namespace, shape_dir: Path, data: Path, n: int, config: str, beta: float) -> dict:
    """One whole job in its own process; its result file plus the process wall time."""
    res_file = shape_dir / f"result-{config}-{beta:g}.json"
    res_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(HERE / "bench_dpo.py"), "--worker", config, "--result", str(res_file)]
    cmd += ["--data", str(data), "--workdir", str(shape_dir), "--steps", str(n // args.batch_size)]
    cmd += ["--warmup", "0", "--batch-size", str(args.batch_size), "--max-length", str(args.max_length)]
    cmd += ["--pairs", str(n), "--lr", str(args.lr), "--seed", str(args.seed), "--beta", str(beta)]
    cmd += ["--bf16"] if args.bf16 else []
    cmd += ["--save"]  # the job ends with the model saved: TRL's save_model, tether's final/
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=HERE.parent, capture_output=not args.verbose, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0 or not res_file.is_file():
        tail = "" if args.verbose else (proc.stderr or "")[-2000:]
        print(f"   {config} β={beta:g} FAILED (exit {proc.returncode})\n{tail}", flush=True)
        return {"config": config, "beta": beta, "error": f"exit code {proc.returncode}", "wall_s": wall}
    r = json.loads(res_file.read_text())
    keep = ("peak_rss_mb", "precompute_s", "setup_s", "train_s", "step_seconds", "step_tokens", "losses")
    out = {"config": config, "beta": beta, "wall_s": wall, "loadavg_end": r.get("loadavg_end")}
    out.update({k: r.get(k) for k in keep})
    pre = f", precompute {r['precompute_s']:.1f} s" if r.get("precompute_s") else ""
    print(
        f"   {config} β={beta:g}: wall {wall:.1f} s (steps {sum(r['step_seconds']):.1f} s{pre}), "
        f"peak RSS {r['peak_rss_mb']:.0f} MB",
        flush=True,
    )
    return out


def _clean(shape_dir: Path, keep_caches: bool) -> None:
    for d in shape_dir.iterdir():  # runs, checkpoints: GBs, never read again
        if d.is_dir() and not (keep_caches and d.name.startswith("refcache-")):
            shutil.rmtree(d, ignore_errors=True)


def run(args: argparse.Namespace) -> dict:
    peak = bench_dpo.peak_flops(args.bf16)
    n_params = bench_dpo.model_params()
    print(f"matmul peak {peak / 1e9:.1f} GFLOP/s; model {n_params / 1e6:.1f} M parameters", flush=True)
    shapes: dict[str, dict] = {}
    for shape in args.shapes:
        shape_dir = args.workdir / shape
        shape_dir.mkdir(parents=True, exist_ok=True)
        data = bench_dpo.write_data(shape, shape_dir / "pairs.jsonl", args.pairs, args.seed)
        wargs = argparse.Namespace(**{**vars(args), "steps": args.pairs // args.batch_size})
        work = bench_dpo.work_fractions(data, wargs)
        shapes[shape] = {"data": data, "work": work, "rounds": []}
    first, others = args.betas[0], args.betas[1:]
    for rnd in range(args.rounds):
        k = rnd % len(args.configs)
        order = [*args.configs[k:], *args.configs[:k]]  # rotated: no configuration always runs first
        for shape, s in shapes.items():
            print(f"== round {rnd + 1}/{args.rounds}, {shape}: {', '.join(order)}", flush=True)
            shape_dir = args.workdir / shape
            n = s["work"]["examples"]
            runs: dict[str, dict] = {}
            for config in order:
                shutil.rmtree(shape_dir / f"refcache-{config.removeprefix('tether-')}", ignore_errors=True)
                runs[config] = _job(args, shape_dir, s["data"], n, config, first)
                if config == SWEPT and others and "error" not in runs[config]:
                    beta = others[rnd % len(others)]
                    runs[f"{config}/cached"] = _job(args, shape_dir, s["data"], n, config, beta)
                _clean(shape_dir, keep_caches=False)
            s["rounds"].append(runs)
    for s in shapes.values():
        s["data"] = str(s["data"])
    return {"peak": peak, "n_params": n_params, "shapes": shapes}


def _ratio_cell(values: list[float]) -> str:
    if not values:
        return "n/a"
    return f"{statistics.median(values):.2f}× ({min(values):.2f}–{max(values):.2f})"


def shape_summary(name: str, s: dict, peak: float, n_params: int, n_betas: int) -> dict:
    """Per configuration: medians over the rounds and the same-round ratios to TRL."""
    out: dict[str, dict] = {}
    ok = [r for r in s["rounds"] if "error" not in r.get("trl", {"error": 1})]
    for config in {c for r in s["rounds"] for c in r if "/" not in c}:
        runs = [r for r in s["rounds"] if "error" not in r.get(config, {"error": 1})]
        if not runs:
            out[config] = {"error": True}
            continue
        walls = [r[config]["wall_s"] for r in runs]
        steps = [sum(r[config]["step_seconds"]) for r in runs]
        flops = bench_dpo.flops_per_step(config, s["work"], n_params) * len(runs[0][config]["step_seconds"])
        row = {
            "rounds": len(runs),
            "wall_s": statistics.median(walls),
            "peak_rss_mb": statistics.median(r[config]["peak_rss_mb"] for r in runs),
            "precompute_s": statistics.median(r[config]["precompute_s"] or 0.0 for r in runs),
            "step_mfu": statistics.median(flops / x / peak for x in steps),
            "losses": runs[0][config]["losses"],
        }
        row["fixed_s"] = statistics.median(
            w - x - (r[config]["precompute_s"] or 0.0) for w, x, r in zip(walls, steps, runs, strict=True)
        )
        both = [r for r in ok if config in r and "error" not in r[config]]
        row["speedup"] = [r["trl"]["wall_s"] / r[config]["wall_s"] for r in both]
        row["work_speedup"] = [  # the per-pair work: what the job's ratio tends to as the epoch grows
            sum(r["trl"]["step_seconds"])
            / (sum(r[config]["step_seconds"]) + (r[config]["precompute_s"] or 0.0))
            for r in both
        ]
        row["memory"] = [r[config]["peak_rss_mb"] / r["trl"]["peak_rss_mb"] for r in both]
        cached = f"{config}/cached"
        if config == "trl":
            row["sweep_s"] = [n_betas * r["trl"]["wall_s"] for r in ok]
        elif any(cached in r and "error" not in r[cached] for r in runs):
            sw = [(r, r[config]["wall_s"] + (n_betas - 1) * r[cached]["wall_s"]) for r in runs if cached in r]
            row["sweep_s"] = [x for _, x in sw]
            row["sweep_speedup"] = [n_betas * r["trl"]["wall_s"] / x for r, x in sw if r in ok]
        out[config] = row
    return out


def summarise(report: dict) -> None:
    for shape, s in report["shapes"].items():
        s["summary"] = shape_summary(
            shape,
            s,
            report["machine"]["matmul_peak_flops"],
            report["model_params"],
            len(report["settings"]["betas"]),
        )


def markdown(report: dict) -> str:
    n_betas = len(report["settings"]["betas"])
    lines = []
    for shape, s in report["shapes"].items():
        w = s["work"]
        lines += [
            f"### {shape}",
            "",
            f"{w['examples']} pairs, one epoch of {w['examples'] // report['settings']['batch_size']} steps; "
            f"positions per step {w['positions_per_step_before']:.0f} padded (TRL) → "
            f"{w['positions_per_step_after']:.0f} shared + packed (tether).",
            "",
            "| config | job wall s | job vs TRL | β sweep s | sweep vs TRL | peak RSS MB | memory vs TRL "
            "| precompute s | steps + precompute vs TRL's steps | fixed s | model FLOP/s, of matmul peak |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        summary = s["summary"]
        for config in report["settings"]["configs"]:
            r = summary.get(config)
            if r is None or r.get("error"):
                lines.append(f"| {config} | failed | | | | | | | | | |")
                continue
            sweep = f"{statistics.median(r['sweep_s']):.0f}" if r.get("sweep_s") else "—"
            sweep_ratio = "1.00×" if config == "trl" else _ratio_cell(r.get("sweep_speedup", []))
            if config != "trl" and not r.get("sweep_speedup"):
                sweep_ratio = "—"
            lines.append(
                f"| {config} | {r['wall_s']:.0f} | {_ratio_cell(r['speedup'])} | {sweep} | {sweep_ratio} | "
                f"{r['peak_rss_mb']:.0f} | {_ratio_cell(r['memory'])} | {r['precompute_s']:.1f} | "
                f"{_ratio_cell(r['work_speedup'])} | {r['fixed_s']:.1f} | {r['step_mfu']:.0%} |"
            )
        lines.append("")
    st = report["settings"]
    lines.append(
        f"Medians over {st['rounds']} interleaved rounds (range in brackets: the same-round ratios); "
        f"β sweep over {n_betas} points ({', '.join(f'{b:g}' for b in st['betas'])}); batch {st['batch_size']} "
        f"pairs, max_length {st['max_length']}, {'bf16 autocast' if st.get('bf16') else 'fp32'}, {report['machine']['cores']} cores "
        f"({report['machine']['cpu']}), load average at the start {report['machine']['loadavg'][0]:.1f}. "
        "*Steps + precompute vs TRL's steps*: TRL's summed step time over tether's summed step time plus its "
        "precompute, per round: the ratio a longer epoch tends to. *Fixed s*: the job's wall time less its steps "
        "and precompute (imports, model load, tokenization, the final save; tether: also its final checkpoint "
        "and plots)."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shapes", nargs="+", choices=bench_dpo.SHAPES, default=list(bench_dpo.SHAPES))
    ap.add_argument("--configs", nargs="+", choices=bench_dpo.CONFIGS, default=list(DEFAULT_CONFIGS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--pairs",
        type=int,
        default=8,
        help="pairs per shape: the epoch (8 = two steps of 4: the 4-shape, 3-round table in ~28 min idle)",
    )
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--lr", type=float, default=5e-6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast over fp32 weights (TRL and tether)")
    ap.add_argument("--betas", nargs="+", type=float, default=[0.1, 0.01, 0.05, 0.5])
    ap.add_argument("--out", type=Path, default=HERE / "results" / "dpo-end-to-end.json")
    ap.add_argument("--workdir", type=Path, default=None, help="default: a temp dir, deleted at the end")
    ap.add_argument("--verbose", action="store_true", help="show the jobs' own output")
    ap.add_argument("--table", type=Path, help="only print the Markdown of an earlier --out file")
    args = ap.parse_args(argv)
    if args.table:  # the summaries recomputed from the rounds' raw timings
        report = json.loads(args.table.read_text())
        summarise(report)
        print(markdown(report))
        return
    if "trl" not in args.configs:
        ap.error("--configs: the ratios need trl")
    if args.pairs < args.batch_size or args.pairs % args.batch_size:
        ap.error("--pairs must be a multiple of --batch-size")
    tmp = args.workdir is None
    args.workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tether-e2e-"))
    start_load = os.getloadavg()
    try:
        res = run(args)
    finally:
        if tmp:
            shutil.rmtree(args.workdir, ignore_errors=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "table"}
    report = {
        "settings": settings,
        "machine": {
            "cpu": bench_dpo._cpu_model(),
            "cores": os.cpu_count(),
            "loadavg": start_load,
            "loadavg_end": os.getloadavg(),
            "matmul_peak_flops": res["peak"],
        },
        "versions": bench_dpo._versions(),
        "model_params": res["n_params"],
        "shapes": res["shapes"],
    }
    summarise(report)
    text = markdown(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    args.out.with_suffix(".md").write_text(text + "\n")
    print()
    print(text)


if __name__ == "__main__":
    main()
