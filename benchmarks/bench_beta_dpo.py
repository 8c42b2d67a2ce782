"""Step cost of β-DPO against DPO, side by side in one run.

β-DPO's batch β and filter come from the whole global batch of a step. With one micro-batch per process
the margins come from the step's own forward (no extra work but the plan); with gradient accumulation the
trainer first runs a no-grad pre-pass over the step's micro-batches (one extra policy forward each). This
script measures both: DPO and β-DPO, each as 1 micro-batch × ``--pairs`` and as 2 micro-batches × half,
SmolLM2-135M-Instruct (``resolve_model_dir("smollm2")``) in fp32 on the CPU, the bundled task pairs,
precomputed reference (computed once, shared), same seed, lr and steps. The configurations run in turn,
``--rounds`` times, so a change in machine load hits all of them alike; the median and the minimum step
time over the steps after the first of every run are reported (on a shared machine the minimum is the
steadier figure).

    HF_HUB_OFFLINE=1 python benchmarks/bench_beta_dpo.py --steps 4 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
CONFIGS = (("dpo", 1), ("beta_dpo", 1), ("dpo", 2), ("beta_dpo", 2))  # (method, micro-batches per step)


def run(
    root: Path, model: str, data: str, method: str, acc: int, args: argparse.Namespace, tag: str
) -> list[float]:
    """One training run; the step times after its first step."""
    from tether.config import from_dict
    from tether.training.job import train

    cfg = {
        "model": {"name": model},
        "data": {"train": data, "max_length": args.max_length},
        "method": {"name": method},
        "reference": {"mode": "precomputed", "cache_dir": str(root / "cache")},
        "train": {
            "output_dir": str(root / f"{method}-{acc}-{tag}"),
            "batch_size": args.pairs // acc,
            "grad_accum": acc,
            "max_steps": args.steps,
            "lr": 1e-6,
            "progress": False,
        },
    }
    result = train(from_dict(cfg))
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    return [x["step_seconds"] for x in lines if "step_seconds" in x][1:]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--data", default=str(REPO / "data" / "tasks" / "pairs.train.jsonl"))
    ap.add_argument("--pairs", type=int, default=4, help="pairs per optimizer step (global batch)")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    times: dict[tuple[str, int], list[float]] = {c: [] for c in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for method, acc in CONFIGS:
                times[(method, acc)] += run(Path(tmp), args.model, args.data, method, acc, args, f"r{r}")
    print(
        "| method | micro-batches × pairs | median step (s) | vs DPO | min step (s) | vs DPO | steps timed |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for method, acc in CONFIGS:
        ts, base = times[(method, acc)], times[("dpo", acc)]
        med, low = statistics.median(ts), min(ts)
        print(
            f"| {method} | {acc} × {args.pairs // acc} | {med:.3f} | {med / statistics.median(base):.2f}x "
            f"| {low:.3f} | {low / min(base):.2f}x | {len(ts)} |"
        )


if __name__ == "__main__":
    main()
