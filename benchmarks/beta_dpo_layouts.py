"""β-DPO's batch β for one global batch split two ways: tether's global-batch statistics vs the authors'
per-micro-batch statistics (``method.per_micro_batch: 1``).

Trains the tiny random Llama of ``tests/tiny.py`` (or ``--model``) on 24 arithmetic pairs for ``--steps``
steps of 4 pairs, once as 1 micro-batch × 4 pairs and once as 2 micro-batches × 2 pairs (gradient
accumulation), each with ``per_micro_batch`` 0 and 1 (β 0.1, ρ 0.2, a 0.6, m 0.9, lr 1e-2, seed 0), and
prints β_b and the kept fraction per step as a markdown table (docs/paper_index.md quotes it):

    HF_HUB_OFFLINE=1 python benchmarks/beta_dpo_layouts.py
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
LAYOUTS = ((4, 1), (2, 2))  # (pairs per micro-batch, micro-batches per step)


def run(root: Path, model: Path, pairs: Path, steps: int, pmb: int, bs: int, acc: int) -> list[dict]:
    from tether.config import from_dict
    from tether.training.job import train

    cfg = {
        "model": {"name": str(model)},
        "data": {"train": str(pairs), "max_length": 64},
        "method": {"name": "beta_dpo", "per_micro_batch": pmb},
        "reference": {"cache_dir": str(root / "cache")},
        "train": {
            "output_dir": str(root / f"pmb{pmb}-{bs}x{acc}"),
            "batch_size": bs,
            "grad_accum": acc,
            "max_steps": steps,
            "lr": 1e-2,
            "progress": False,
        },
    }
    result = train(from_dict(cfg))
    return [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a model directory (default: tests/tiny.py's tiny random Llama)")
    ap.add_argument("--steps", type=int, default=5)
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    from tiny import pair_rows, tiny_model_dir, write_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = Path(args.model) if args.model else tiny_model_dir(root / "model")
        pairs = write_jsonl(root / "pairs.jsonl", pair_rows(24))
        cols = {}
        for pmb in (0, 1):
            for bs, acc in LAYOUTS:
                cols[(pmb, bs, acc)] = run(root, model, pairs, args.steps, pmb, bs, acc)
    head = [f"{acc}×{bs}, per_micro_batch {pmb}" for pmb, bs, acc in cols]
    print("| step | " + " | ".join(head) + " |")
    print("|---:|" + "---:|" * len(head))
    for i in range(args.steps):
        cells = [f"{m[i]['beta_dpo/beta']:.6f} ({m[i]['beta_dpo/kept_fraction']:.2f})" for m in cols.values()]
        print(f"| {i + 1} | " + " | ".join(cells) + " |")
    print("\nβ_b (fraction of the step's pairs kept); micro-batches × pairs per micro-batch.")


if __name__ == "__main__":
    main()
