"""The Python parts of ``benchmarks/gpu_check.sh``: each subcommand prints one Markdown table row (or a few
lines) on stdout and exits 0 when its check passed. They run on the GPU when there is one, else on the CPU
(``gpu_check.sh --dry-run``), and use only the embedded model (``smollm2``) and the bundled data.

    python benchmarks/gpu_checks.py env        # the device, versions, optional packages
    python benchmarks/gpu_checks.py head       # the fused LM head (HeadLogps) vs full logits on the device
    python benchmarks/gpu_checks.py fsdp       # FSDP2 on one process (NCCL on a GPU, gloo on the CPU)
    python benchmarks/gpu_checks.py generate   # generation throughput: transformers' batched generate vs tether
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
REPO = Path(__file__).resolve().parents[1]


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def env(args: argparse.Namespace) -> bool:
    import torch
    import transformers

    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU (no CUDA device)"
    opt = {m: importlib.util.find_spec(m) is not None for m in ("liger_kernel", "peft", "trl", "flash_attn")}
    print(f"device: {dev}; torch {torch.__version__} (CUDA {torch.version.cuda}), transformers "
          f"{transformers.__version__}; installed: {', '.join(k for k, v in opt.items() if v) or 'none'}; "
          f"missing: {', '.join(k for k, v in opt.items() if not v) or 'none'}")  # fmt: skip
    return True


def head(args: argparse.Namespace) -> bool:
    """HeadLogps against full logits, fp32 and bf16 autocast, values and gradients, at SmolLM2's head size."""
    import torch

    from tether.engine.logprobs import HeadLogps

    dev = _device()
    torch.manual_seed(0)
    n, hid, vocab = (2048, 576, 49152) if dev.type == "cuda" else (256, 576, 49152)
    w = torch.nn.Parameter(torch.randn(vocab, hid, device=dev) * 0.02)
    y = torch.randint(0, vocab, (n,), device=dev)
    g = torch.randn(n, device=dev)
    ok = True
    for amp in (False, True):
        h = torch.randn(n, hid, device=dev, requires_grad=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            full = torch.nn.functional.linear(h, w).float().log_softmax(-1).gather(-1, y[:, None]).squeeze(-1)
        ref = torch.autograd.grad((full * g).sum(), [h, w])
        del full
        torch.cuda.reset_peak_memory_stats() if dev.type == "cuda" else None
        _sync()
        t = time.perf_counter()
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            fused = HeadLogps.apply(h, w, None, y, None, 512, None)
        got = torch.autograd.grad((fused * g).sum(), [h, w])
        _sync()
        sec = time.perf_counter() - t
        peak = (
            f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB" if dev.type == "cuda" else "n/a on the CPU"
        )
        tol = 2e-2 if amp else 1e-4
        err = max(
            float((a - b).abs().max() / b.abs().max().clamp(min=1e-6)) for a, b in zip(got, ref, strict=True)
        )
        good = err <= tol
        ok &= good
        print(f"| fused LM head ({'bf16 autocast' if amp else 'fp32'}), {n} positions × {vocab} vocab | "
              f"{'pass' if good else 'FAIL'} | relative gradient error {err:.1e} (≤ {tol:g}); "
              f"{sec * 1e3:.1f} ms forward+backward; peak {peak} |")  # fmt: skip
    return ok


def fsdp(args: argparse.Namespace) -> bool:
    """One FSDP2 process (NCCL on a GPU): the sharded policy's log-probs and gradient norm equal the plain
    model's on a packed batch of the bundled pairs."""
    import torch
    import torch.distributed as dist

    from tether.data import read_rows, tokenize_rows
    from tether.engine.logprobs import LogProbModel
    from tether.engine.models import load_tokenizer, resolve_model_dir
    from tether.training import sharding

    dev = _device()
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29517")
    backend = "nccl" if dev.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=0, world_size=1)
    try:
        from transformers import AutoModelForCausalLM

        path = resolve_model_dir("smollm2")
        tok = load_tokenizer(path)
        rows = read_rows(str(REPO / "data/tasks/pairs.train.jsonl"))[:8]
        ex = tokenize_rows(rows, tok, kind="pairs", max_length=256, chat_template="never").examples

        def run(shard: bool) -> tuple[torch.Tensor, float, float]:
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=torch.float32, attn_implementation="sdpa"
            )
            policy = LogProbModel(model.to(dev), 256)
            batch = policy.collate(ex, range(len(ex)), tok.pad_token_id or 0, device=dev)
            if shard:
                sharding.shard(policy, dev, 1)
            _sync()
            t = time.perf_counter()
            out = policy(batch).sum
            out.sum().backward()
            grads = [p.grad for p in policy.parameters() if p.grad is not None]
            if shard:
                from torch.distributed.tensor import DTensor

                grads = [x.full_tensor() if isinstance(x, DTensor) else x for x in grads]
            norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(x) for x in grads])))
            _sync()
            return out.detach().cpu(), norm, time.perf_counter() - t

        plain, n0, _ = run(False)
        sharded, n1, sec = run(True)
        err = float((plain - sharded).abs().max())
        ok = err <= 1e-3 and abs(n0 - n1) <= 1e-3 * max(n0, 1.0)
        print(
            f"| FSDP2 ({backend}, 1 process), 8 pairs | {'pass' if ok else 'FAIL'} | log-prob difference "
            f"{err:.1e}, gradient norm {n1:.4g} vs {n0:.4g} unsharded; forward+backward {sec:.2f} s |"
        )
        return ok
    finally:
        dist.destroy_process_group()


def generate(args: argparse.Namespace) -> bool:
    """Greedy generation on the held-out prompts (chat template), bf16 on a GPU: transformers' batched
    ``generate`` (left padding, every row runs ``--new`` tokens) and tether's generation function."""
    import torch
    from transformers import AutoModelForCausalLM

    from tether.engine.models import load_tokenizer, resolve_model_dir
    from tether.evaluation.generation import generate as tether_generate

    dev = _device()
    path = resolve_model_dir("smollm2")
    tok = load_tokenizer(path)
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="sdpa").to(dev).eval()
    rows = [json.loads(x) for x in (REPO / "data/tasks/pairs.heldout.jsonl").read_text().splitlines()]
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": r["prompt"]}], add_generation_prompt=True)
        for r in rows[: args.prompts]
    ]
    prompts = [list(p["input_ids"] if hasattr(p, "keys") else p) for p in prompts]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :], mask[i, width - len(p) :] = torch.tensor(p), 1
    with torch.no_grad():
        model.generate(
            input_ids=ids[:2].to(dev), attention_mask=mask[:2].to(dev), max_new_tokens=4
        )  # warm-up
        _sync()
        t = time.perf_counter()
        out = model.generate(
            input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=args.new,
            min_new_tokens=args.new, do_sample=False, pad_token_id=pad,
        )  # fmt: skip
        _sync()
        hf_s = time.perf_counter() - t
    hf_tok = (out.shape[1] - width) * len(prompts)
    t = time.perf_counter()
    got = tether_generate(
        model, tok, prompts, max_new_tokens=args.new, batch_size=len(prompts), progress=False
    )
    _sync()
    te_s = time.perf_counter() - t
    te_tok = sum(len(s) for g in got for s in g)
    print(f"| generation, {len(prompts)} held-out prompts, greedy, ≤ {args.new} new tokens ({dtype}) | pass | "
          f"transformers batched generate {hf_tok / hf_s:.0f} tok/s ({hf_s:.2f} s, every row {args.new} tokens); "
          f"tether generate {te_tok / te_s:.0f} tok/s ({te_s:.2f} s, {te_tok} tokens, stops at EOS) |")  # fmt: skip
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("check", choices=("env", "head", "fsdp", "generate"))
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new", type=int, default=128, help="new tokens per prompt")
    args = ap.parse_args()
    sys.exit(0 if globals()[args.check](args) else 1)


if __name__ == "__main__":
    main()
