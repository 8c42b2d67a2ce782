"""Peak RSS per process of DPO on 1 and 2 CPU processes, unsharded and sharded (``train.sharding: fsdp``).

Each configuration is one ``torchrun`` launch of ``tether train`` on the same synthetic pairs
(``benchmarks/make_pairs.py``) with the same global batch; every process reports its own peak RSS
(``ru_maxrss``) when it exits. The global batch is 4 pairs (1 process: 2 × 2 accumulated; 2 processes:
1 × 2 each). The reference is precomputed (cached after the first configuration, so every configuration
reads it from the cache).

    HF_HUB_OFFLINE=1 python benchmarks/bench_sharding.py --model smollm2 --steps 3

``--model`` takes anything ``model.name`` does (a local directory, a hub id in the local cache, ``smollm2``
for the embedded SmolLM2-135M). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = [  # (processes, sharding, batch_size, grad_accum)
    (1, "none", 2, 2),
    (2, "none", 1, 2),
    (2, "fsdp", 1, 2),
]


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def worker(argv: list[str]) -> None:
    """One process of a launch: ``tether train``, then on one line its peak RSS, the RSS it held right after
    the last optimizer step, and the bytes of this process's weights + optimizer state (its shards)."""
    import resource

    import tether.training.trainer as trainer
    from tether.cli import main

    held, state = [0.0], [0.0]
    step = trainer.Trainer.train_step

    def measured(self):
        out = step(self)
        held[0] = _rss_mb()
        from torch.distributed.tensor import DTensor

        local = lambda t: t.to_local() if isinstance(t, DTensor) else t  # noqa: E731
        opt = getattr(self.optimizer, "optimizer", self.optimizer)
        tensors = [*self.policy.parameters(), *(v for st in opt.state.values() for v in st.values())]
        state[0] = sum(local(t).nbytes for t in tensors if hasattr(t, "nbytes")) / 2**20
        return out

    trainer.Trainer.train_step = measured
    code = main(argv)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"PEAK_RSS rank={os.environ.get('RANK', '0')} mb={peak:.0f} held={held[0]:.0f} state={state[0]:.0f}",
        flush=True,
    )
    sys.exit(code)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--max-prompt-length", type=int, default=None, help="truncate prompts (a small model)")
    ap.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from make_pairs import write_pairs

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pairs = write_pairs(root / "pairs.jsonl", n=args.pairs)
        for nproc, shard, bs, ga in CONFIGS:
            name = f"{nproc}-{shard}"
            overrides = [
                f"model.name={args.model}",
                f"data.train={pairs}",
                f"data.max_length={args.max_length}",
                "method.name=dpo",
                f"reference.cache_dir={root / 'cache'}",
                f"train.output_dir={root / name}",
                f"train.batch_size={bs}",
                f"train.grad_accum={ga}",
                f"train.max_steps={args.steps}",
                f"train.sharding={shard}",
                *([f"data.max_prompt_length={args.max_prompt_length}"] if args.max_prompt_length else []),
                "train.progress=false",
                "train.save_total_limit=1",
            ]
            cfg = root / f"{name}.yaml"
            cfg.write_text("{}\n")
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
            cmd += [str(Path(__file__).resolve()), "--worker", "train", str(cfg), *overrides]
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // nproc))}
            t = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            wall = time.perf_counter() - t
            if proc.returncode != 0:
                sys.exit(f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
            found = re.findall(r"PEAK_RSS rank=(\d+) mb=(\d+) held=(\d+) state=(\d+)", proc.stdout)
            peaks = {int(r): float(m) for r, m, _, _ in found}
            held = {int(r): float(h) for r, _, h, _ in found}
            state = {int(r): float(x) for r, _, _, x in found}
            summary = json.loads((root / name / "summary.json").read_text())
            rows.append(
                {
                    "processes": nproc,
                    "sharding": shard,
                    "peak_rss_mb": [peaks[r] for r in sorted(peaks)],
                    "rss_after_step_mb": [held[r] for r in sorted(held)],
                    "weights_and_optimizer_mb": [state[r] for r in sorted(state)],
                    "step_seconds": summary["seconds"] / summary["steps"],
                    "loss": summary["train_metrics"]["loss"],
                    "wall_seconds": wall,
                }
            )
    print(
        f"model {args.model}, DPO, global batch 4 pairs, max_length {args.max_length}, {args.steps} steps\n"
    )
    head = "| processes | train.sharding | peak RSS per process (MB) | RSS after the last step (MB) "
    print(head + "| weights + optimizer state per process (MB) | s/step | last loss |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        rss = ", ".join(f"{x:.0f}" for x in r["peak_rss_mb"])
        held = ", ".join(f"{x:.0f}" for x in r["rss_after_step_mb"])
        state = ", ".join(f"{x:.0f}" for x in r["weights_and_optimizer_mb"])
        print(
            f"| {r['processes']} | {r['sharding']} | {rss} | {held} | {state} | {r['step_seconds']:.1f} "
            f"| {r['loss']:.4f} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(sys.argv[2:])
    else:
        main()
