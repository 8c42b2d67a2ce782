"""TR-DPO's reference update alone: ``mix_parameters`` (``ref ← (1 − α)·ref + α·θ`` over every parameter,
fp32 math) on SmolLM2-135M, the cost TR-DPO adds to an optimizer step at which it updates its reference
(every τ-th step; τ = 512 by default, so per step it is this divided by τ).

    HF_HUB_OFFLINE=1 python benchmarks/bench_tr_dpo_update.py --reps 6
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=6)
    ap.add_argument("--alpha", type=float, default=0.6)
    args = ap.parse_args()
    import torch

    from tether.engine.models import load_model, resolve_model_dir
    from tether.engine.reference import mix_parameters

    policy = load_model(resolve_model_dir("smollm2"), dtype="float32")
    n = sum(p.numel() for p in policy.parameters())
    print(
        f"{n / 1e6:.1f} M parameters, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}"
    )
    for dtype in (torch.float32, torch.bfloat16):
        policy = policy.to(dtype)
        ref = copy.deepcopy(policy).requires_grad_(False)
        seconds = []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            mix_parameters(ref, policy, args.alpha)
            seconds.append(time.perf_counter() - t0)
        rest = seconds[1:] or seconds
        print(
            f"{str(dtype).removeprefix('torch.')} weights: median {statistics.median(rest):.3f} s, min {min(rest):.3f} s"
        )


if __name__ == "__main__":
    main()
