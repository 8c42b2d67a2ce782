"""Where one tether DPO step spends its time (CPU): the trainer's own steps, timed, then one step under
torch.profiler, its self CPU time grouped into matrix products, attention, the optimizer and the rest.

Builds the same run as ``bench_dpo.py`` (SmolLM2-135M fp32, the synthetic pairs, ``--batch-size`` pairs per
step, shared prompts and packing: tether's defaults) through tether's own pieces, runs ``--warmup`` untimed
steps and times ``--steps`` steps of ``Trainer.train_step``; then profiles one more and prints the ops with
the most self CPU time and the share of each group. A step's matrix products (``aten::mm``/``addmm``/
``bmm``) are where its model FLOPs are; every other op's time is what keeps the step's model FLOP/s below
the matmul peak.

    HF_HUB_OFFLINE=1 python benchmarks/profile_tether_step.py --mode precomputed --steps 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mode", choices=("copy", "precomputed"), default="copy")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--rows", type=int, default=25, help="profiler table rows")
    args = ap.parse_args()

    import torch
    from accelerate import Accelerator
    from make_pairs import write_pairs

    import tether.engine.models as models
    from tether.config import from_dict
    from tether.engine.logprobs import LogProbModel
    from tether.engine.reference_build import build_reference
    from tether.training.run import _disable_dropout, prepare, reference_spec
    from tether.training.sink import MetricsSink
    from tether.training.trainer import Trainer

    work = Path(tempfile.mkdtemp(prefix="tether-prof-"))
    data = write_pairs(work / "pairs.jsonl", args.pairs, 0)
    cfg = from_dict(
        {
            "model": {"name": str(models.resolve_model_dir("smollm2"))},
            "data": {"train": str(data), "max_length": args.max_length, "chat_template": "never"},
            "method": {"name": "dpo", "beta": 0.1},
            "reference": {"mode": args.mode, "cache_dir": str(work / "cache")},
            "train": {
                "output_dir": str(work / "run"),
                "batch_size": args.batch_size,
                "max_steps": args.warmup + args.steps + 1,
                "progress": False,
            },
        }
    )
    p = prepare(cfg)
    acc = Accelerator(cpu=True)
    model = models.load_model(p.model_dir, dtype="float32")
    _disable_dropout(model)
    policy = LogProbModel(model, cfg.train.logprob_chunk)
    t = time.perf_counter()
    reference = build_reference(reference_spec(cfg, p, args.mode), policy, p.train, p.eval, acc)
    print(f"build_reference({args.mode}): {time.perf_counter() - t:.1f} s")
    (work / "run").mkdir(parents=True, exist_ok=True)
    trainer = Trainer(
        accelerator=acc,
        policy=policy,
        method=p.method,
        hparams=p.hparams,
        reference=reference,
        cfg=cfg.train,
        run_dir=work / "run",
        train_examples=p.train,
        eval_examples=[],
        pad_id=p.tokenizer.pad_token_id,
        sink=MetricsSink(work / "run", [], {}, enabled=False),
    )

    for _ in range(args.warmup):
        trainer.train_step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        trainer.train_step()
        times.append(time.perf_counter() - t0)
    print(f"\nstep seconds (mode={args.mode}, batch {args.batch_size} pairs, {torch.get_num_threads()} threads): "
          f"median {statistics.median(times):.2f}, each {', '.join(f'{t:.2f}' for t in times)}")  # fmt: skip

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        trainer.train_step()
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.rows))
    groups: dict[str, float] = defaultdict(float)
    for e in events:
        groups[group_of(e.key)] += e.self_cpu_time_total
    total = sum(groups.values())
    print("self CPU time of the profiled step by group:")
    for g, us in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {g:48s} {us / 1e6:7.2f} s  {us / total:6.1%}")


MATMUL = {"aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::baddbmm"}  # addmm_: the head's ∂W
ATTENTION = ("scaled_dot_product", "flash_attention", "_efficient_attention")
OPTIMIZER = (
    "Optimizer.step",
    "_fused_adam",
    "_foreach_",
    "aten::lerp",
    "aten::addcdiv",
    "aten::addcmul",
    "aten::sqrt",
)


def group_of(name: str) -> str:
    if name in MATMUL:
        return "matrix products (mm, addmm, addmm_, bmm)"
    if any(a in name for a in ATTENTION):
        return "attention (scaled dot product, per segment)"
    if any(o in name for o in OPTIMIZER):
        return "optimizer (AdamW's element-wise updates)"
    if "copy_" in name or "cat" in name or "index" in name or "gather" in name or "scatter" in name:
        return "copies, gathers, concatenations"
    return "other element-wise ops (norms, activations, softmax, ...)"


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
