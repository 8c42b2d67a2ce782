"""The LM head + log-softmax under autograd: checkpointed chunks (before issue 28) vs ``HeadLogps`` (logits
recomputed per chunk in the backward pass and turned in place into the gradient).

SmolLM2's head (576 → 49152, fp32) over ``--positions`` response positions (1141: the synthetic shape's
positions per step), forward + backward with per-position upstream gradients, at two chunk sizes. Each
(method, chunk) runs in its own process, so its peak RSS above the process's baseline (after the inputs
exist) is the head's own working memory; time is the best of ``--reps``.

    python benchmarks/bench_head.py --positions 1141 --reps 3
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

VOCAB, HIDDEN = 49152, 576


def worker(method: str, chunk: int, n: int, reps: int) -> dict:
    import torch
    from torch.utils.checkpoint import checkpoint

    from tether.engine.logprobs import HeadLogps, _chunk_logps

    torch.manual_seed(0)
    head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    h = torch.randn(n, HIDDEN, requires_grad=True)
    y = torch.randint(0, VOCAB, (n,))
    g = torch.randn(n)
    head.weight.grad = torch.zeros_like(head.weight)  # the gradient buffer exists before, as in training
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def step() -> None:
        if method == "fused":
            out = HeadLogps.apply(h, head.weight, None, y, None, chunk, None)
        else:
            out = torch.cat(
                [
                    checkpoint(
                        _chunk_logps, h[s : s + chunk], y[s : s + chunk], head, None, use_reentrant=False
                    )
                    for s in range(0, n, chunk)
                ]
            )
        (out * g).sum().backward()

    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - t)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"method": method, "chunk": chunk, "best_s": best, "head_peak_mb": peak - base}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--positions", type=int, default=1141)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker[0], int(args.worker[1]), args.positions, args.reps)))
        return
    print("| head | chunk | best forward+backward s | peak working memory MB |\n|---|---:|---:|---:|")
    for chunk in (256, 1024):
        for method in ("checkpoint", "fused"):
            cmd = [sys.executable, __file__, "--worker", method, str(chunk)]
            cmd += ["--positions", str(args.positions), "--reps", str(args.reps)]
            r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
            print(f"| {method} | {chunk} | {r['best_s']:.2f} | {r['head_peak_mb']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
