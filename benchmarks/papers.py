"""The four papers' comparisons, in miniature: train each paper's methods from SmolLM2-135M-Instruct on the
bundled verifiable tasks, evaluate them all the same way, and write the comparison tables and plots.

    python benchmarks/papers.py --out docs/results            # the committed run (see docs/results.md)
    python benchmarks/papers.py --steps 2 --eval-samples 8    # a smoke run
    python benchmarks/papers.py --model <hub id> --steps 200 --batch-size 16 --dtype bfloat16   # on a GPU

Comparisons (METHODS.md, "What the papers measured"):
- MinorSFT vs SFT vs SFT-using-DPO on SFT rows: held-out task success, multiple-choice accuracy, deviation.
- ASFT vs DPO vs ORPO on pairs: success, BLEU-4/ROUGE-L, likelihood margin, step time, peak memory.
- ε-DPO vs DPO on pairs: success, win rate against the starting model, KL to it.
- sDPO vs DPO on the same pairs: success, gamma_ref per stage.
Every run starts from the same model with the same data order, steps, batch and learning rate per family.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from tether.config import from_dict
from tether.evaluate import evaluate
from tether.run import train

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data" / "tasks"

SFT_METHODS = {"sft": {}, "minor_sft": {"beta": 0.04}, "sft_dpo": {"beta": 0.04}}
PAIR_METHODS = {
    "dpo": {"beta": 0.1},
    "asft": {"beta": 0.1},
    "orpo": {"beta": 0.1},
    "epsilon_dpo": {"beta": 0.1, "epsilon": 0.01},
}
SFT_LR = {"sft": 1e-5, "minor_sft": 2e-5, "sft_dpo": 2e-5}  # the MinorSFT paper's best learning rates


def run_config(
    args: argparse.Namespace,
    name: str,
    method: str,
    params: dict,
    data: str,
    lr: float,
    stages: dict | None = None,
) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "model": {"name": args.model, "dtype": args.dtype},
        "data": {"train": str(DATA / data), "max_length": 256},
        "method": {"name": method, **params},
        "reference": {"mode": "copy" if method == "epsilon_dpo" else "auto"},
        "train": {
            "output_dir": str(Path(args.runs) / name),
            "overwrite": True,
            "batch_size": args.batch_size,
            "max_steps": args.steps,
            "lr": lr,
            "warmup_ratio": 0.1,
            "scheduler": "cosine",
            "seed": args.seed,
            "progress": not args.quiet,
        },
    }
    if stages:
        raw["stages"] = stages
    return raw


def train_and_eval(args, name, raw, eval_data: str, mc: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = train(from_dict(raw))
    seconds = time.perf_counter() - t0
    run_dir = Path(raw["train"]["output_dir"])
    ev = evaluate(
        str(run_dir),
        str(DATA / eval_data),
        max_samples=args.eval_samples,
        batch_size=8,
        progress=not args.quiet,
        out=run_dir / "eval.json",
    )
    row = {
        "run": name,
        "method": raw["method"]["name"],
        "seconds": seconds,
        "train": result.train_metrics,
        "eval": ev,
        "gamma_ref": result.gamma_ref,
        "stages": result.stages,
        "peak_rss_mb": result.peak_rss_mb,
        "tokens_per_second": result.tokens_per_second,
    }
    if mc:
        row["mc"] = evaluate(
            str(run_dir), str(DATA / "mc.heldout.jsonl"), metrics=["mc"], progress=not args.quiet
        )
    return row


def _get(result: dict, key: str) -> Any:
    """A metric of a ``tether.evaluate.evaluate`` result (``None`` when it was not measured)."""
    return result.get("metrics", {}).get(key)


def _f(v: Any, fmt: str = "{:.3f}") -> str:
    return "-" if v is None else fmt.format(v)


def tables(rows: list[dict[str, Any]]) -> str:
    out = []
    sft = [r for r in rows if r["method"] in SFT_METHODS]
    if sft:
        out += [
            "### MinorSFT vs SFT vs SFT-using-DPO",
            "",
            "| run | task success | MC accuracy | deviation (held-out) | final train deviation | time s |",
            "|---|---|---|---|---|---|",
        ]
        for r in sft:
            out.append(
                f"| {r['run']} | {_f(_get(r['eval'], 'generation/success'))} | "
                f"{_f(_get(r.get('mc', {}), 'mc/accuracy'))} | {_f(_get(r['eval'], 'deviation'))} | "
                f"{_f(r['train'].get('deviation'))} | {r['seconds']:.0f} |"
            )
        out.append("")
    pairs = [r for r in rows if r["method"] not in SFT_METHODS]
    if pairs:
        out += [
            "### Preference methods (ASFT vs DPO vs ORPO; ε-DPO vs DPO; sDPO vs DPO)",
            "",
            "| run | task success | win rate vs start | KL to start | likelihood margin | BLEU-4 | ROUGE-L | "
            "s/step | peak RSS MB | gamma_ref |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in pairs:
            e = r["eval"]
            gref = (
                " → ".join(f"{s['gamma_ref']:.2f}" for s in r["stages"])
                if r.get("stages")
                else _f(r.get("gamma_ref"), "{:.2f}")
            )
            out.append(
                f"| {r['run']} | {_f(_get(e, 'generation/success'))} | {_f(_get(e, 'win_rate'))} | "
                f"{_f(_get(e, 'kl'))} | {_f(_get(e, 'pairwise/likelihood_margin'))} | {_f(_get(e, 'bleu'), '{:.1f}')} | "
                f"{_f(_get(e, 'rougeL'))} | {_f(r['train'].get('step_seconds'), '{:.1f}')} | "
                f"{r['peak_rss_mb']:.0f} | {gref} |"
            )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--steps", type=int, default=24, help="optimizer steps per run (per stage for sDPO)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--eval-samples", type=int, default=40, help="held-out prompts for generation metrics")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default="runs/papers")
    ap.add_argument("--out", default="runs/papers/report")
    ap.add_argument("--only", nargs="*", help="run names to run (default: all)")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    plan: list[tuple[str, dict, str, bool]] = []
    for m, params in SFT_METHODS.items():
        plan.append(
            (m, run_config(args, m, m, params, "sft.train.jsonl", SFT_LR[m]), "sft.heldout.jsonl", True)
        )
    for m, params in PAIR_METHODS.items():
        lr = 1e-5 if m in ("asft", "orpo") else 5e-6
        plan.append(
            (m, run_config(args, m, m, params, "pairs.train.jsonl", lr), "pairs.heldout.jsonl", False)
        )
    stages = {"by": "column", "column": "source", "order": ["arithmetic", "choice", "format", "reverse"]}
    sdpo = run_config(args, "sdpo", "dpo", {"beta": 0.1}, "pairs.train.jsonl", 5e-6, stages)
    sdpo["train"]["max_steps"] = max(1, args.steps // 4)  # same total steps as one-shot DPO
    plan.append(("sdpo", sdpo, "pairs.heldout.jsonl", False))
    rows = []
    for name, raw, eval_data, mc in plan:
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        rows.append(train_and_eval(args, name, raw, eval_data, mc))
        Path(args.runs).mkdir(parents=True, exist_ok=True)
        (Path(args.runs) / "results.json").write_text(json.dumps(rows, indent=1, default=str))
    from tether.report import write_report

    report = write_report([Path(args.runs) / r["run"] for r in rows], Path(args.out))
    text = tables(rows)
    (Path(args.out) / "tables.md").write_text(text + "\n")
    print(text)
    print(f"\nreport: {report}")


if __name__ == "__main__":
    main()
