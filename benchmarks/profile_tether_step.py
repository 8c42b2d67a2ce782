"""Where one tether DPO step spends its time (CPU): phase timers plus the top ops from torch.profiler.

Builds the same run as ``bench_dpo.py`` (SmolLM2-135M fp32, the synthetic pairs, ``--batch-size`` pairs per
step) through tether's own pieces, runs ``--warmup`` untimed steps, then times ``--steps`` steps split into
collate, reference forward, policy forward (decoder / LM head + log-softmax), backward and optimizer step,
and prints the ops with the most self CPU time of one profiled step.

    HF_HUB_OFFLINE=1 python benchmarks/profile_tether_step.py --mode copy --steps 3
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
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--rows", type=int, default=25, help="profiler table rows")
    args = ap.parse_args()

    import torch
    from accelerate import Accelerator
    from make_pairs import write_pairs

    import tether.engine.logprobs as lp
    import tether.engine.models as models
    from tether.config import from_dict
    from tether.engine.logprobs import LogProbModel, loss_inputs
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

    phases: dict[str, list[float]] = defaultdict(list)
    head_time = [0.0]
    orig_chunk = lp._chunk_logps

    def timed_chunk(*a, **kw):  # LM head + log-softmax + gather (called again by checkpoint in backward)
        t0 = time.perf_counter()
        out = orig_chunk(*a, **kw)
        head_time[0] += time.perf_counter() - t0
        return out

    lp._chunk_logps = timed_chunk

    def step(record: bool) -> None:
        tr = trainer
        idx = tr.schedule.micro_batches(tr.step, cfg.train.batch_size, 1, 0)[0]
        tr.policy.train()
        marks = [time.perf_counter()]
        batch = tr._batch(idx, tr.train_examples)
        marks.append(time.perf_counter())
        ref_sum = tr.reference(batch, "train")[0] if tr.reference is not None else None
        marks.append(time.perf_counter())
        head_time[0] = 0.0
        hidden = tr.policy.hidden(batch.input_ids, batch.attention_mask)
        marks.append(time.perf_counter())
        rows = tr.policy.from_hidden(hidden, batch.input_ids, batch.response_mask)
        out = tr.method(loss_inputs(rows, batch, ref_sum), tr.hparams)
        marks.append(time.perf_counter())
        head_fwd = head_time[0]
        head_time[0] = 0.0
        (out.losses.sum() / len(idx)).backward()
        marks.append(time.perf_counter())
        head_bwd = head_time[0]
        torch.nn.utils.clip_grad_norm_(tr.policy.parameters(), 1.0)
        tr.optimizer.step()
        tr.optimizer.zero_grad(set_to_none=True)
        tr.state.step += 1
        marks.append(time.perf_counter())
        if record:
            names = [
                "collate",
                "reference forward",
                "policy decoder forward",
                "policy head+loss forward",
                "backward (incl. head recompute)",
                "clip + optimizer",
            ]
            for n, a, b in zip(names, marks[:-1], marks[1:], strict=True):
                phases[n].append(b - a)
            phases["  of which head recompute in backward"].append(head_bwd)
            phases["  head fwd (chunks)"].append(head_fwd)
            phases["total"].append(marks[-1] - marks[0])
            phases["tokens"].append(batch.n_tokens)
            phases["width"].append(batch.input_ids.shape[1])

    for _ in range(args.warmup):
        step(False)
    for _ in range(args.steps):
        step(True)
    print(
        f"\nphase medians over {args.steps} steps (mode={args.mode}, batch {args.batch_size} pairs, "
        f"{torch.get_num_threads()} threads):"
    )
    for k, v in phases.items():
        if k in ("tokens", "width"):
            print(f"  {k:40s} {statistics.median(v):8.0f}")
        else:
            print(f"  {k:40s} {statistics.median(v):8.2f} s")

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(False)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
