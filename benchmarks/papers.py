"""The four papers' comparisons, in miniature: train each paper's methods from SmolLM2-135M-Instruct on the
bundled verifiable tasks, evaluate them all the same way, and write the comparison tables and plots.

    python benchmarks/papers.py --out docs/results            # the committed run (see docs/results.md)
    python benchmarks/papers.py --steps 2 --eval-samples 8    # a smoke run
    python benchmarks/papers.py --table docs/results/results.json   # re-render the committed tables
    python benchmarks/papers.py --model <hub id> --steps 200 --batch-size 16 --dtype bfloat16   # on a GPU

Comparisons (METHODS.md, "What the papers measured"):
- MinorSFT vs SFT vs SFT-using-DPO on SFT rows: held-out task success, multiple-choice accuracy, deviation.
- ASFT vs DPO vs ORPO on pairs: success, BLEU-4/ROUGE-L, likelihood margin, step time, peak memory.
- ε-DPO vs DPO on pairs: success, win rate against the starting model, KL to it.
- sDPO vs DPO on the same pairs: success, gamma_ref per stage.
Every run starts from the same model with the same data order, steps, batch and learning rate per family,
and runs in its own process, so its peak RSS (``ru_maxrss``) is its own and not the high-water mark of
the runs before it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from papers_scale import _f, _table, gamma_by_reference, median, step_times

from tether.config import from_dict
from tether.evaluation.evaluate import evaluate
from tether.training.job import train

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
# (run name, method, lr): each method at its paper-best lr, and MinorSFT at SFT's lr as well, which
# separates the effect of its per-sample weight from that of its doubled learning rate.
SFT_RUNS = [(m, m, SFT_LR[m]) for m in SFT_METHODS]
SFT_RUNS.insert(2, ("minor_sft_same_lr", "minor_sft", SFT_LR["sft"]))


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
    """Train one run and evaluate it (in the calling process; see :func:`in_own_process`)."""
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
        "settings": run_settings(args),
        "method": raw["method"]["name"],
        "lr": raw["train"]["lr"],
        "seconds": seconds,
        "step_seconds": median(step_times(run_dir)),
        "step_seconds_all": step_times(run_dir),
        "train": result.train_metrics,
        "eval": ev,
        "gamma_ref": result.gamma_ref,
        "stages": result.stages,
        "peak_rss_mb": result.peak_rss_mb,
        "tokens_per_second": result.tokens_per_second,
    }
    if raw.get("stages"):
        row["gamma_last_chunk"] = gamma_by_reference(run_dir, raw["model"]["name"], raw)
    if mc:
        row["mc"] = evaluate(
            str(run_dir), str(DATA / "mc.heldout.jsonl"), metrics=["mc"], progress=not args.quiet
        )
    return row


def run_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The command-line settings a run's numbers depend on (compared when ``--only`` keeps other runs)."""
    return {k: getattr(args, k) for k in ("model", "dtype", "steps", "batch_size", "eval_samples", "seed")}


def in_own_process(args, name, raw, eval_data: str, mc: bool) -> dict[str, Any]:
    """:func:`train_and_eval` in a fresh (spawned) process, so peak memory is measured per run."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(train_and_eval, args, name, raw, eval_data, mc).result()


def dump(rows: list[dict[str, Any]]) -> str:
    """results.json's text, with paths inside this checkout written relative to it."""
    return json.dumps(rows, indent=1, default=str).replace(f"{REPO}/", "")


def _get(result: dict | None, key: str, who: str = "metrics") -> Any:
    """A metric of a ``tether.evaluate.evaluate`` result (``None`` when it was not measured)."""
    return ((result or {}).get(who) or {}).get(key)


def tables(rows: list[dict[str, Any]]) -> str:
    """The four comparisons as Markdown tables; each starts with the starting model's own numbers."""
    by = {r["run"]: r for r in rows}
    out: list[str] = []

    def success(r: dict, who: str = "metrics") -> str:
        return _f(_get(r["eval"], "generation/success", who))

    sft = [r for r in rows if r["method"] in SFT_METHODS]
    if sft:
        first = sft[0]
        lines = [
            [
                "starting model",
                "-",
                success(first, "reference_metrics"),
                _f(_get(first.get("mc"), "mc/accuracy", "reference_metrics")),
                "0",
                "0",
                "-",
            ]
        ]
        for r in sft:
            lines.append(
                [
                    r["run"],
                    _f(r.get("lr"), "{:g}"),
                    success(r),
                    _f(_get(r.get("mc"), "mc/accuracy")),
                    _f(_get(r["eval"], "deviation")),
                    _f(_get(r["eval"], "kl"), "{:.2f}"),
                    _f(r.get("step_seconds"), "{:.2f}"),
                ]
            )
        out += ["### MinorSFT vs SFT vs SFT-using-DPO (SFT rows)", ""]
        out += _table(
            ["run", "lr", "task success", "MC accuracy", "deviation m_θ", "KL to start", "s/step (median)"],
            lines,
        )

    def pair_table(title: str, names: list[str], header: list[str], cells) -> None:
        present = [by[n] for n in names if n in by]
        if not present:
            return
        nonlocal out
        out += [f"### {title}", ""]
        lines = [cells(present[0], True)] + [cells(r, False) for r in present]
        out += _table(header, lines)

    def asft_cells(r: dict, start: bool) -> list[str]:
        who = "reference_metrics" if start else "metrics"
        e = r["eval"]
        return [
            "starting model" if start else r["run"],
            success(r, who),
            _f(_get(e, "pairwise/likelihood_accuracy", who)),
            _f(_get(e, "pairwise/likelihood_margin", who)),
            _f(_get(e, "bleu", who), "{:.1f}"),
            _f(_get(e, "rouge1", who)),
            _f(_get(e, "rouge2", who)),
            _f(_get(e, "rougeL", who)),
            "-" if start else _f(r.get("step_seconds"), "{:.2f}"),
            "-" if start else f"{r['peak_rss_mb']:.0f}",
        ]

    pair_table(
        "ASFT vs DPO vs ORPO (pairs)",
        ["dpo", "asft", "orpo"],
        [
            "run",
            "task success",
            "likelihood accuracy",
            "likelihood margin",
            "BLEU-4",
            "ROUGE-1",
            "ROUGE-2",
            "ROUGE-L",
            "s/step (median)",
            "peak RSS MB",
        ],
        asft_cells,
    )

    drift_header = ["run", "task success", "win rate vs start", "KL to start", "reward accuracy"]

    def drift_cells(r: dict, start: bool, extra: int) -> list[str]:
        """The cells ε-DPO and sDPO are judged by (the start row: its success, 0.5, 0, then dashes)."""
        if start:
            return ["starting model", success(r, "reference_metrics"), "0.5", "0"] + ["-"] * (1 + extra)
        e = r["eval"]
        return [
            r["run"],
            success(r),
            _f(_get(e, "win_rate")),
            _f(_get(e, "kl"), "{:.3f}"),
            _f(_get(e, "pairwise/reward_accuracy")),
        ]

    def eps_cells(r: dict, start: bool) -> list[str]:
        if start:
            return drift_cells(r, True, 2)
        beta = r["train"].get("kl/beta", r["train"].get("hparams/beta"))
        return [*drift_cells(r, False, 2), _f(beta, "{:.4f}"), _f(r.get("step_seconds"), "{:.2f}")]

    pair_table(
        "ε-DPO vs DPO (pairs)",
        ["dpo", "epsilon_dpo"],
        [*drift_header, "final β", "s/step (median)"],
        eps_cells,
    )

    def sdpo_cells(r: dict, start: bool) -> list[str]:
        if start:
            return drift_cells(r, True, 2)
        gref = (
            " → ".join(f"{s['gamma_ref']:.2f}" for s in r["stages"])
            if r.get("stages")
            else _f(r.get("gamma_ref"), "{:.2f}")
        )
        last = " → ".join(f"{g['gamma_ref']:.2f}" for g in r.get("gamma_last_chunk") or []) or "-"
        return [*drift_cells(r, False, 2), gref, last]

    pair_table(
        "sDPO vs DPO (the same pairs)",
        ["dpo", "sdpo"],
        [*drift_header, "γ_ref per stage (own chunk)", "γ_ref of M_0..M_{T-1} on the last chunk"],
        sdpo_cells,
    )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument(
        "--steps",
        type=int,
        default=40,
        help="optimizer steps per run (sDPO: the same total, split evenly over its 4 stages)",
    )
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--eval-samples", type=int, default=80, help="held-out prompts for generation metrics")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", default="runs/papers")
    ap.add_argument("--out", default="runs/papers/report")
    ap.add_argument(
        "--only",
        nargs="*",
        help="run names to (re)run; the other runs' saved results are kept (default: all)",
    )
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument(
        "--table", metavar="RESULTS_JSON", help="print the tables of a saved results.json and exit"
    )
    args = ap.parse_args()
    if args.table:
        print(tables(json.loads(Path(args.table).read_text())))
        return
    plan: list[tuple[str, dict, str, bool]] = []
    for name, m, lr in SFT_RUNS:
        raw = run_config(args, name, m, SFT_METHODS[m], "sft.train.jsonl", lr)
        plan.append((name, raw, "sft.heldout.jsonl", True))
    for m, params in PAIR_METHODS.items():
        lr = 1e-5 if m in ("asft", "orpo") else 5e-6
        plan.append(
            (m, run_config(args, m, m, params, "pairs.train.jsonl", lr), "pairs.heldout.jsonl", False)
        )
    stages = {"by": "column", "column": "source", "order": ["arithmetic", "choice", "format", "reverse"]}
    sdpo = run_config(args, "sdpo", "dpo", {"beta": 0.1}, "pairs.train.jsonl", 5e-6, stages)
    sdpo["train"]["max_steps"] = max(1, args.steps // 4)  # same total steps as one-shot DPO
    plan.append(("sdpo", sdpo, "pairs.heldout.jsonl", False))
    saved = Path(args.runs) / "results.json"
    done: dict[str, dict] = {}
    if args.only and saved.exists():  # rerun some runs: keep the others' results
        done = {r["run"]: r for r in json.loads(saved.read_text())}
        now = run_settings(args)
        other = sorted(n for n, r in done.items() if n not in args.only and r.get("settings", now) != now)
        if other:
            print(f"warning: kept runs {other} were made with other settings than {now}", file=sys.stderr)
    unknown = set(args.only or []) - {name for name, *_ in plan}
    if unknown:
        ap.error(f"--only: unknown run(s) {sorted(unknown)} (runs: {[name for name, *_ in plan]})")
    for name, raw, eval_data, mc in plan:
        if args.only and name not in args.only:
            continue
        print(f"== {name}", flush=True)
        done[name] = in_own_process(args, name, raw, eval_data, mc)
        Path(args.runs).mkdir(parents=True, exist_ok=True)
        saved.write_text(dump([done[n] for n, *_ in plan if n in done]))
    rows = [done[n] for n, *_ in plan if n in done]
    from tether.evaluation.report import write_report

    report = write_report([Path(args.runs) / r["run"] for r in rows], Path(args.out))
    text = tables(rows)
    (Path(args.out) / "tables.md").write_text(text + "\n")
    (Path(args.out) / "results.json").write_text(dump(rows))
    print(text)
    print(f"\nreport: {report}")


if __name__ == "__main__":
    main()
