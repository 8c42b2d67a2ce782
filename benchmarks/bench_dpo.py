"""DPO step time, throughput and peak memory: TRL's DPOTrainer vs tether (reference copy / precomputed).

Every configuration trains the same model (SmolLM2-135M-Instruct, the local safetensors directory from
``tether.engine.models.resolve_model_dir("smollm2")``) in fp32 on the CPU, on the same synthetic pairs
(``benchmarks/make_pairs.py``), with the same batch (``--batch-size`` pairs, grad_accum 1), max_length,
learning rate (linear decay, no warm-up), β=0.1, grad-norm clip 1.0 and number of optimizer steps. Each one
runs in its own subprocess, so the peak RSS (``ru_maxrss``) is that configuration's alone.

* ``trl``: ``trl.DPOTrainer`` with default settings (reference = the frozen copy TRL loads itself), except
  ``bf16=False`` (TRL defaults to bf16 autocast, also on the CPU; this benchmark is fp32). TRL's default
  ``gradient_checkpointing=True`` is kept; ``trl-no-gc`` is the same with it off (like tether). Its
  random sampler is replaced by tether's step order, so both see exactly the same batches, step by step.
  Step time = ``on_step_begin`` → ``on_step_end`` (forward, reference forward, backward, clip, optimizer
  step); tokens = ``attention_mask.sum()`` of the collated batch (prompt+chosen and prompt+rejected rows).
* ``tether-copy`` / ``tether-precomputed``: ``tether.training.job.train`` with ``reference.mode`` copy / precomputed.
  Step time and tokens (the same count: ``attention_mask.sum()``) come from ``metrics.jsonl``. The
  precomputed run uses a fresh ``reference.cache_dir``, so the one-time precompute is timed and reported
  separately (it is not part of any step).

Median step time and tokens/s are over the steps after the first ``--warmup`` steps; tokens/s is
Σ tokens / Σ seconds over those steps.

    HF_HUB_OFFLINE=1 python benchmarks/bench_dpo.py --steps 12 --batch-size 4 --max-length 512 --out results.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

HERE = Path(__file__).resolve().parent
CONFIGS = ("trl", "tether-copy", "tether-precomputed", "tether-precomputed-gc", "trl-no-gc", "tether-asft")
BETA = 0.1


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _step_order(n_examples: int, args: argparse.Namespace) -> list[int]:
    """The example order tether's schedule uses (seed, batch size, grad_accum 1, one process)."""
    from tether.training.trainer import Schedule

    sched = Schedule(n_examples, args.batch_size, args.seed, args.steps)
    return [i for s in range(args.steps) for i in sched.step_indices(s)]


def _summary(step_seconds: list[float], tokens: list[int], warmup: int) -> dict:
    sec, tok = step_seconds[warmup:], tokens[warmup:]
    return {
        "step_seconds": step_seconds,
        "step_tokens": tokens,
        "median_step_s": statistics.median(sec),
        "min_step_s": min(sec),
        "tokens_per_second": sum(tok) / sum(sec),
        "tokens_per_step": statistics.mean(tok),
    }


# ------------------------------------------------------------------------------------------ workers


def run_trl(args: argparse.Namespace, model_dir: Path, gradient_checkpointing: bool = True) -> dict:
    import torch
    from datasets import load_dataset
    from torch.utils.data import Sampler
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    order = _step_order(args.pairs, args)

    class FixedOrder(Sampler):
        def __init__(self, idx: list[int]):
            self.idx = idx

        def __iter__(self):
            return iter(self.idx)

        def __len__(self) -> int:
            return len(self.idx)

    class SameOrderDPOTrainer(DPOTrainer):
        def _get_train_sampler(self, train_dataset=None):
            return FixedOrder(order)

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.t0 = 0.0
            self.seconds: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.seconds.append(time.perf_counter() - self.t0)

    t_load = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    dataset = load_dataset("json", data_files=str(args.data), split="train")
    config = DPOConfig(
        output_dir=str(args.workdir / "trl-out"),
        per_device_train_batch_size=args.batch_size,
        gradient_accumulation_steps=1,
        max_length=args.max_length,
        max_steps=args.steps,
        learning_rate=args.lr,
        beta=BETA,
        seed=args.seed,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        bf16=False,  # TRL's default is bf16 autocast (also on CPU); the comparison is fp32
        gradient_checkpointing=gradient_checkpointing,  # TRL's default: True
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    timer = StepTimer()
    trainer = SameOrderDPOTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[timer]
    )
    if len(trainer.train_dataset) != args.pairs:
        raise RuntimeError(
            f"TRL kept {len(trainer.train_dataset)} of {args.pairs} pairs; orders would differ"
        )
    tokens: list[int] = []
    collate = trainer.data_collator

    def counting_collator(features):
        out = collate(features)
        tokens.append(int(out["attention_mask"].sum()))
        return out

    trainer.data_collator = counting_collator
    setup_s = time.perf_counter() - t_load
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    if len(timer.seconds) != args.steps or len(tokens) < args.steps:
        raise RuntimeError(f"expected {args.steps} steps, timed {len(timer.seconds)}, collated {len(tokens)}")
    return {
        **_summary(timer.seconds, tokens[: args.steps], args.warmup),
        "setup_s": setup_s,
        "train_s": train_s,
        "precompute_s": None,
        "losses": losses,
        "optimizer": str(config.optim),
        "gradient_checkpointing": gradient_checkpointing,
        "peak_rss_mb": _peak_rss_mb(),
    }


def run_tether(args: argparse.Namespace, model_dir: Path, mode: str) -> dict:
    import tether.training.run as run_mod
    from tether.config import from_dict

    precompute: list[float] = []
    compute_table = run_mod.compute_table

    def timed_compute_table(*a, **kw):  # the one-time reference precompute (reference.mode=precomputed)
        t = time.perf_counter()
        try:
            return compute_table(*a, **kw)
        finally:
            precompute.append(time.perf_counter() - t)

    run_mod.compute_table = timed_compute_table
    out_dir = args.workdir / f"tether-{mode}"
    gc = mode.endswith("-gc")
    mode = mode.removesuffix("-gc")
    method = {"name": "dpo", "beta": BETA}
    if mode == "asft":  # ASFT: reference-free, no reference copy and no reference forward
        method, mode = {"name": "asft", "beta": 0.1}, "none"
    cfg = from_dict(
        {
            "model": {"name": str(model_dir), "dtype": "float32", "gradient_checkpointing": gc},
            "data": {"train": str(args.data), "max_length": args.max_length, "chat_template": "never"},
            "method": method,
            "reference": {"mode": mode, "cache_dir": str(args.workdir / f"refcache-{mode}")},
            "train": {
                "output_dir": str(out_dir),
                "seed": args.seed,
                "lr": args.lr,
                "batch_size": args.batch_size,
                "grad_accum": 1,
                "max_steps": args.steps,
                "scheduler": "linear",
                "max_grad_norm": 1.0,
                "progress": False,
                "overwrite": True,
            },
        }
    )
    t0 = time.perf_counter()
    result = run_mod.train(cfg)
    total_s = time.perf_counter() - t0
    records = [json.loads(ln) for ln in (out_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    steps = [r for r in records if "step_seconds" in r]
    if len(steps) != args.steps:
        raise RuntimeError(f"expected {args.steps} logged steps, found {len(steps)}")
    return {
        **_summary([r["step_seconds"] for r in steps], [int(r["tokens"]) for r in steps], args.warmup),
        "setup_s": total_s - result.seconds,
        "train_s": result.seconds,
        "precompute_s": sum(precompute) if precompute else None,
        "reference_cache": result.reference_cache,
        "losses": [r["loss"] for r in steps],
        "optimizer": "torch.optim.AdamW (defaults)",
        "peak_rss_mb": _peak_rss_mb(),
    }


def worker(args: argparse.Namespace) -> None:
    import torch

    from tether.engine.models import resolve_model_dir

    model_dir = Path(resolve_model_dir("smollm2"))
    if args.worker.startswith("trl"):
        res = run_trl(args, model_dir, gradient_checkpointing=args.worker == "trl")
    else:
        res = run_tether(args, model_dir, args.worker.removeprefix("tether-"))
    # Other processes on the machine share the cores: the 1-minute load average at the end of the run
    res.update(config=args.worker, threads=torch.get_num_threads(), loadavg_end=os.getloadavg()[0])
    Path(args.result).write_text(json.dumps(res, indent=1))


# ------------------------------------------------------------------------------------------ parent


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "trl", "accelerate", "datasets", "tether"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "?"
    return out


def _cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return platform.processor() or "?"


def table(results: dict[str, dict], warmup: int) -> str:
    for r in results.values():  # result files written before min_step_s existed
        if "step_seconds" in r and "min_step_s" not in r:
            r["min_step_s"] = min(r["step_seconds"][warmup:])
    base = results.get("trl")
    lines = [
        "| config | median step s | min step s | tokens/s | peak RSS MB | throughput vs TRL | peak memory vs TRL |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in CONFIGS:
        r = results.get(name)
        if r is None:
            continue
        if "error" in r:
            lines.append(f"| {name} | failed | | | | | |")
            continue
        thr = mem = "n/a"
        if base and "error" not in base:
            thr = f"{r['tokens_per_second'] / base['tokens_per_second']:.2f}×"
            mem = f"{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}×"
        lines.append(
            f"| {name} | {r['median_step_s']:.2f} | {r['min_step_s']:.2f} | {r['tokens_per_second']:.1f} | "
            f"{r['peak_rss_mb']:.0f} | {thr} | {mem} |"
        )
    return "\n".join(lines)


def best_of_table(paths: list[str]) -> str:
    """The table of one or more ``--out`` files of identical settings; per step, the fastest run counts."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    s0 = reports[0]["settings"]
    keys = ("steps", "warmup", "batch_size", "max_length", "pairs", "lr", "seed")
    if any(r["settings"][k] != s0[k] for r in reports for k in keys):
        raise SystemExit("--table: the result files were made with different settings")
    merged: dict[str, dict] = {}
    for name in CONFIGS:
        runs = [r["results"][name] for r in reports if "error" not in r["results"].get(name, {"error": 1})]
        if not runs:
            continue
        best = [min(v) for v in zip(*(r["step_seconds"] for r in runs), strict=True)]
        merged[name] = {
            **_summary(best, runs[0]["step_tokens"], s0["warmup"]),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        }
    return table(merged, s0["warmup"])


def parent(args: argparse.Namespace) -> None:
    from make_pairs import write_pairs

    args.workdir.mkdir(parents=True, exist_ok=True)
    data = write_pairs(args.workdir / "pairs.jsonl", args.pairs, args.seed)
    results: dict[str, dict] = {}
    for name in args.configs:
        res_file = args.workdir / f"result-{name}.json"
        res_file.unlink(missing_ok=True)
        shutil.rmtree(
            args.workdir / f"refcache-{name.removeprefix('tether-')}", ignore_errors=True
        )  # fresh cache
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            name,
            "--result",
            str(res_file),
            "--data",
            str(data),
            "--workdir",
            str(args.workdir),
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--batch-size",
            str(args.batch_size),
            "--max-length",
            str(args.max_length),
            "--pairs",
            str(args.pairs),
            "--lr",
            str(args.lr),
            "--seed",
            str(args.seed),
        ]
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=HERE.parent)
        wall = time.perf_counter() - t0
        if proc.returncode != 0 or not res_file.is_file():
            results[name] = {"config": name, "error": f"exit code {proc.returncode}", "wall_s": wall}
            print(f"   {name} FAILED (exit {proc.returncode}); see the traceback above", flush=True)
            continue
        results[name] = {**json.loads(res_file.read_text()), "wall_s": wall}
        r = results[name]
        pre = f", precompute {r['precompute_s']:.1f} s" if r.get("precompute_s") else ""
        print(
            f"   median step {r['median_step_s']:.2f} s, {r['tokens_per_second']:.0f} tok/s, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB{pre}, process wall {wall:.0f} s",
            flush=True,
        )
    report = {
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("worker", "result", "data")
        },
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "platform": platform.platform()},
        "versions": _versions(),
        "results": results,
        "table": table(results, args.warmup),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    print()
    print(report["table"])
    pre = results.get("tether-precomputed", {}).get("precompute_s")
    if pre:
        print(
            f"\none-time reference precompute (tether-precomputed: the {args.steps * args.batch_size} of "
            f"{args.pairs} pairs the run uses): {pre:.1f} s"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    ap.add_argument("--batch-size", type=int, default=4, help="pairs per optimizer step")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--lr", type=float, default=5e-6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    ap.add_argument(
        "--workdir", type=Path, default=None, help="data, runs and caches (default: a new temp dir)"
    )
    ap.add_argument("--out", default=None, help="write all results as JSON here")
    ap.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument(
        "--table",
        nargs="+",
        metavar="RESULTS_JSON",
        help="only print the table of earlier --out files; with several (same settings), each step's time is its "
        "minimum over the runs (best of N, to filter out other processes' load)",
    )
    args = ap.parse_args()
    if args.table:
        print(best_of_table(args.table))
        return
    if args.steps <= args.warmup:
        ap.error("--steps must be larger than --warmup")
    if args.worker:
        worker(args)
        return
    if args.workdir is None:
        args.workdir = Path(tempfile.mkdtemp(prefix="tether-bench-"))
    parent(args)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
