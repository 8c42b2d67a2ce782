"""DPO step time, throughput and peak memory: TRL's DPOTrainer vs tether, on several data shapes.

Data shapes (``--shapes``): ``synthetic`` (``benchmarks/make_pairs.py``: prompts ~20-150 tokens, answers
~10-200), ``tasks`` (the bundled verifiable tasks, ``data/tasks/pairs.train.jsonl``, rendered with the
model's chat template: prompt-heavy), ``ultrafeedback`` (long prompts, ~1.5x the answers) and ``hh``
(short prompts, long answers, like Anthropic-HH). Per shape the script prints the fraction of token
positions that are padding or a repeated prompt before (padded rows, what TRL and
``tether-precomputed-plain`` compute) and after (``train.share_prompt`` + ``train.packing``, tether's
default), and each configuration's model FLOP/s against this CPU's measured fp32 matmul peak.

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
* ``tether-copy`` / ``tether-precomputed``: ``tether.training.job.train`` with ``reference.mode`` copy /
  precomputed (shared prompts and packing on, the default); ``tether-precomputed-plain`` with both off
  (padded rows, as before issue 11); ``tether-eps`` / ``tether-eps-copy``: ε-DPO (ε=0.01) with the
  precomputed reference (hidden states at response tokens, no reference forward) / the frozen copy;
  ``tether-trdpo-copy``: TR-DPO (α=0.6, τ=1: the frozen copy mixed with the policy after *every* step, the
  update's worst case; compare with ``tether-copy``), its one pass of the original reference's log-probs
  (for ``tr_dpo/ref_deviation``) timed as the precompute.
  Step time and tokens (the same count: ``attention_mask.sum()``) come from ``metrics.jsonl``. The
  precomputed run uses a fresh ``reference.cache_dir``, so the one-time precompute is timed and reported
  separately (it is not part of any step).

Median step time and tokens/s are over the steps after the first ``--warmup`` steps; tokens/s is
Σ tokens / Σ seconds over those steps.

    HF_HUB_OFFLINE=1 python benchmarks/bench_dpo.py --steps 12 --batch-size 4 --max-length 512 --out results.json

This is the step-time view. ``--end-to-end`` (``benchmarks/end_to_end.py``, its own options) measures what a
user waits for: the whole job (model load, reference precompute, one epoch) and a β sweep, in interleaved,
repeated rounds with the ratio's range.

Tokens/s counts tokens as TRL does (each row's ``attention_mask.sum()``: a pair's prompt twice); the
per-shape header also gives the count with each prompt once.
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
CONFIGS = (
    "trl",
    "tether-copy",
    "tether-precomputed",
    "tether-precomputed-plain",
    "tether-precomputed-gc",
    "trl-no-gc",
    "tether-asft",
    "tether-eps",
    "tether-eps-copy",
    "tether-trdpo-copy",
    "trl-liger",
)
#: tether configurations: (method, reference mode, gradient checkpointing, shared prompts and packing)
TETHER = {
    "copy": ("dpo", "copy", False, True),
    "precomputed": ("dpo", "precomputed", False, True),
    "precomputed-plain": ("dpo", "precomputed", False, False),
    "precomputed-gc": ("dpo", "precomputed", True, True),
    "asft": ("asft", "none", False, True),
    "eps": ("epsilon_dpo", "precomputed", False, True),
    "eps-copy": ("epsilon_dpo", "copy", False, True),
    "trdpo-copy": ("tr_dpo", "copy", False, True),
}
SHAPES = ("synthetic", "tasks", "ultrafeedback", "hh")
BETA = 0.1


def _peak_rss_mb() -> float:
    """The process's peak RSS; on a GPU, the peak of torch's allocated GPU memory instead."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_flops(bf16: bool) -> float:
    """The measured matmul peak of this run's device (the GPU if there is one) and precision."""
    import torch

    cuda = torch.cuda.is_available()
    dtype = "bfloat16" if bf16 else "float32"
    return matmul_peak_flops(8192 if cuda else 2048, device="cuda" if cuda else "cpu", dtype=dtype)


def _step_order(n_examples: int, args: argparse.Namespace) -> list[int]:
    """The example order tether's schedule uses (seed, batch size, grad_accum 1, one process)."""
    from tether.training.schedule import Schedule

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


def run_trl(
    args: argparse.Namespace, model_dir: Path, gradient_checkpointing: bool = True, liger=False
) -> dict:
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
            _sync()
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            _sync()
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
        beta=args.beta,
        seed=args.seed,
        report_to="none",
        logging_steps=1,
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        bf16=args.bf16,  # TRL's default is bf16 autocast (also on CPU); the comparison is fp32 unless --bf16
        use_liger_kernel=liger,  # liger's layer kernels; TRL keeps its own chunked LM head
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
    if args.save:  # the end-to-end job ends with the trained model on disk, as tether's does (final/)
        trainer.save_model(str(args.workdir / "trl-out" / "final"))
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
    import tether.engine.reference_build as build_mod
    import tether.training.run as run_mod
    from tether.config import from_dict

    precompute: list[float] = []
    compute_table = build_mod.compute_table

    def timed_compute_table(*a, **kw):  # the one-time reference precompute (reference.mode=precomputed)
        t = time.perf_counter()
        try:
            return compute_table(*a, **kw)
        finally:
            precompute.append(time.perf_counter() - t)

    build_mod.compute_table = timed_compute_table
    compute_states = build_mod.compute_states

    def timed_compute_states(*a, **kw):  # ε-DPO's reference hidden states (precomputed)
        t = time.perf_counter()
        try:
            return compute_states(*a, **kw)
        finally:
            precompute.append(time.perf_counter() - t)

    build_mod.compute_states = timed_compute_states
    out_dir = args.workdir / f"tether-{mode}"
    name, ref_mode, gc, segments = TETHER[mode]
    method = {"name": name, "beta": args.beta}
    if name == "epsilon_dpo":
        method["epsilon"] = 0.01
    if name == "tr_dpo":  # the reference updated after every step: the update's worst case
        method.update(alpha=0.6, tau=1)
    cache = args.workdir / f"refcache-{mode}"
    mode = ref_mode
    cfg = from_dict(
        {
            "model": {"name": str(model_dir), "dtype": "float32", "gradient_checkpointing": gc},
            "data": {"train": str(args.data), "max_length": args.max_length, "chat_template": "never"},
            "method": method,
            "reference": {"mode": mode, "cache_dir": str(cache)},
            "train": {
                "output_dir": str(out_dir),
                "mixed_precision": "bf16" if args.bf16 else "no",
                "seed": args.seed,
                "lr": args.lr,
                "batch_size": args.batch_size,
                "grad_accum": 1,
                "max_steps": args.steps,
                "scheduler": "linear",
                "max_grad_norm": 1.0,
                "progress": False,
                "overwrite": True,
                "share_prompt": segments,
                "packing": segments,
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
        res = run_trl(args, model_dir, args.worker != "trl-no-gc", liger=args.worker == "trl-liger")
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
    """The tables of one or more ``--out`` files of identical settings; per step, the fastest run counts."""
    reports = [json.loads(Path(p).read_text()) for p in paths]
    s0 = reports[0]["settings"]
    keys = ("steps", "warmup", "batch_size", "max_length", "pairs", "lr", "seed")
    if any(r["settings"][k] != s0[k] for r in reports for k in keys):
        raise SystemExit("--table: the result files were made with different settings")
    peak = max(r["machine"]["fp32_matmul_peak_flops"] for r in reports)
    out = []
    for shape in reports[0]["shapes"]:
        merged: dict[str, dict] = {}
        for name in CONFIGS:
            runs = [
                r["shapes"][shape]["results"].get(name, {"error": 1}) for r in reports if shape in r["shapes"]
            ]
            runs = [x for x in runs if "error" not in x]
            if not runs:
                continue
            best = [min(v) for v in zip(*(x["step_seconds"] for x in runs), strict=True)]
            merged[name] = {
                **_summary(best, runs[0]["step_tokens"], s0["warmup"]),
                "peak_rss_mb": max(x["peak_rss_mb"] for x in runs),
            }
        res = {"work": reports[0]["shapes"][shape]["work"], "results": merged}
        out.append(shape_table(shape, res, s0["warmup"], reports[0]["model_params"], peak))
    return "\n\n".join(out)


def write_data(shape: str, path: Path, n: int, seed: int) -> Path:
    """The pairs of one data shape as plain-text prompts (the bundled tasks rendered with the model's chat
    template here, so TRL and tether see the same strings)."""
    from make_pairs import write_pairs

    if shape != "tasks":
        return write_pairs(path, n, seed, shape)
    from tether.engine.models import load_tokenizer, resolve_model_dir

    tok = load_tokenizer(resolve_model_dir("smollm2"))
    rows = [json.loads(x) for x in (HERE.parent / "data/tasks/pairs.train.jsonl").read_text().splitlines()]
    with path.open("w") as f:
        for r in rows[:n]:
            msgs = [{"role": "user", "content": r["prompt"]}]
            prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            f.write(json.dumps({"prompt": prompt, "chosen": r["chosen"], "rejected": r["rejected"]}) + "\n")
    return path


def work_fractions(data: Path, args: argparse.Namespace) -> dict:
    """Per step, token positions computed: padded rows (before) vs shared prompts + packing (after); the
    fraction of them that is padding or a repeated prompt; tokens counted as TRL counts them."""
    from tether.data import read_rows, tokenize_rows
    from tether.engine.logprobs import collate
    from tether.engine.models import load_tokenizer, resolve_model_dir

    tok = load_tokenizer(resolve_model_dir("smollm2"))
    ex = tokenize_rows(
        read_rows(str(data)), tok, kind="pairs", max_length=args.max_length, chat_template="never"
    ).examples
    order = _step_order(len(ex), args)
    before = after = tokens = pad = repeated = 0
    for s in range(args.steps):
        idx = order[s * args.batch_size : (s + 1) * args.batch_size]
        batch = [ex[i] for i in idx]
        plain = collate(batch, idx, 0)
        before += plain.n_positions
        after += collate(batch, idx, 0, share_prompt=True, packing=True).n_positions
        tokens += plain.n_tokens
        pad += plain.n_positions - plain.n_tokens
        repeated += sum(len(e.prompt_ids) for e in batch)
    return {
        "positions_per_step_before": before / args.steps,
        "positions_per_step_after": after / args.steps,
        "tokens_per_step": tokens / args.steps,
        "tokens_once_per_step": (tokens - repeated) / args.steps,
        "padding_fraction_before": pad / before,
        "repeated_prompt_fraction_before": repeated / before,
        "padding_fraction_after": 0.0,
        "repeated_prompt_fraction_after": 0.0,
        "examples": len(ex),
    }


def matmul_peak_flops(n: int = 2048, reps: int = 5, device: str = "cpu", dtype: str = "float32") -> float:
    """This device's matmul rate in ``dtype`` (best of ``reps`` n×n×n products, all threads)."""
    import torch

    a, b = (torch.randn(n, n, device=device, dtype=getattr(torch, dtype)) for _ in range(2))
    a @ b
    best = min(_timed(lambda: (a @ b, _sync())) for _ in range(reps))
    return 2 * n**3 / best


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def model_params() -> int:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tether.engine.models import resolve_model_dir

    cfg = AutoConfig.from_pretrained(resolve_model_dir("smollm2"))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in model.parameters())


def flops_per_step(name: str, w: dict, n_params: int) -> float:
    """Model FLOPs a step computes: 6·N per position (forward + backward) over the positions the
    configuration runs, + 2·N per position for a reference forward (TRL, copy modes); the recomputation of
    gradient checkpointing is not counted (it is overhead, not model work)."""
    plain = name.startswith("trl") or name.endswith("-plain")
    pos = w["positions_per_step_before"] if plain else w["positions_per_step_after"]
    ref = name.startswith("trl") or name.endswith("copy")
    return (6 + 2 * ref) * n_params * pos


def run_shape(shape: str, args: argparse.Namespace) -> dict:
    workdir = args.workdir / shape
    workdir.mkdir(parents=True, exist_ok=True)
    data = write_data(shape, workdir / "pairs.jsonl", args.pairs, args.seed)
    work = work_fractions(data, args)
    results: dict[str, dict] = {}
    for name in args.configs:
        res_file = workdir / f"result-{name}.json"
        res_file.unlink(missing_ok=True)
        shutil.rmtree(workdir / f"refcache-{name.removeprefix('tether-')}", ignore_errors=True)  # fresh
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--result", str(res_file)]
        cmd += ["--data", str(data), "--workdir", str(workdir), "--steps", str(args.steps)]
        cmd += ["--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
        cmd += ["--max-length", str(args.max_length), "--pairs", str(work["examples"]), "--lr", str(args.lr)]
        cmd += ["--seed", str(args.seed), "--beta", str(args.beta), *(["--bf16"] if args.bf16 else [])]
        print(f"== {shape} / {name}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=HERE.parent)
        wall = time.perf_counter() - t0
        for d in workdir.iterdir():  # the configuration's model, checkpoints, caches: GBs, not read again
            if d.is_dir():
                shutil.rmtree(d, ignore_errors=True)
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
    return {"work": work, "results": results}


def shape_table(shape: str, res: dict, warmup: int, n_params: int, peak: float) -> str:
    w = res["work"]
    head = (
        f"### {shape}\n\n{w['tokens_per_step']:.0f} tokens per step as TRL counts them "
        f"({w['tokens_once_per_step']:.0f} with each prompt once); positions computed per step: "
        f"{w['positions_per_step_before']:.0f} padded rows → {w['positions_per_step_after']:.0f} shared + packed; "
        f"padding {w['padding_fraction_before']:.1%} and repeated prompt "
        f"{w['repeated_prompt_fraction_before']:.1%} of the positions before, 0% and 0% after.\n\n"
    )
    lines = [
        table(res["results"], warmup),
        "",
        "| config | model FLOP/s | of the measured matmul peak |",
        "|---|---:|---:|",
    ]
    for name, r in res["results"].items():
        if "error" in r:
            continue
        f = flops_per_step(name, w, n_params) / r["median_step_s"]
        lines.append(f"| {name} | {f / 1e9:.1f} G | {f / peak:.0%} |")
    return head + "\n".join(lines)


def parent(args: argparse.Namespace) -> None:
    args.workdir.mkdir(parents=True, exist_ok=True)
    peak = peak_flops(args.bf16)
    n_params = model_params()
    print(f"matmul peak {peak / 1e9:.1f} GFLOP/s; model {n_params / 1e6:.1f} M parameters", flush=True)
    shapes = {shape: run_shape(shape, args) for shape in args.shapes}
    tables = [shape_table(s, r, args.warmup, n_params, peak) for s, r in shapes.items()]
    report = {
        "settings": {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("worker", "result", "data")
        },
        "machine": {
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg": os.getloadavg(),
            "fp32_matmul_peak_flops": peak,
        },
        "versions": _versions(),
        "model_params": n_params,
        "shapes": shapes,
        "tables": tables,
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    print()
    print("\n\n".join(tables))


def main() -> None:
    if "--end-to-end" in sys.argv[1:]:  # the whole job and a β sweep, interleaved rounds: end_to_end.py
        import end_to_end

        end_to_end.main([a for a in sys.argv[1:] if a != "--end-to-end"])
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2, help="first steps left out of the medians")
    ap.add_argument("--batch-size", type=int, default=4, help="pairs per optimizer step")
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--lr", type=float, default=5e-6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--beta", type=float, default=BETA)
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast over fp32 weights (TRL and tether)")
    ap.add_argument("--configs", nargs="+", choices=CONFIGS, default=list(CONFIGS))
    ap.add_argument("--shapes", nargs="+", choices=SHAPES, default=list(SHAPES), help="data shapes")
    ap.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="data, runs and caches (default: a new temp dir, deleted at the end)",
    )
    ap.add_argument("--out", default=None, help="write all results as JSON here")
    ap.add_argument("--worker", choices=CONFIGS, help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--save", action="store_true", help=argparse.SUPPRESS)  # TRL saves its model (end to end)
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
    if args.workdir is not None:
        parent(args)
        return
    args.workdir = Path(tempfile.mkdtemp(prefix="tether-bench-"))
    try:
        parent(args)
    finally:
        shutil.rmtree(args.workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    main()
