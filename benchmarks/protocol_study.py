"""The papers' comparison rerun on their own protocol (issue 27), in resumable parts.

    python benchmarks/protocol_study.py --parts start data pairs reward   # item 1: on-policy pairs, a reward model
    python benchmarks/protocol_study.py --parts pilot          # item 2: DPO at three lrs on the on-policy pairs
    python benchmarks/protocol_study.py --parts frontier table judged --lrs A B   # items 3, 4, 7 at the chosen lrs
    python benchmarks/protocol_study.py --plan                 # every sweep, its grid and its number of runs
    python benchmarks/protocol_study.py --status               # what is finished
    python benchmarks/protocol_study.py --collect docs/results/protocol/results.json

The seeds' protocol (ε-DPO after SimPO's "Instruct" setting): sample K completions per training prompt
from the starting model at temperature 0.8, have a judge score them, train on best-vs-worst pairs; then
evaluate every trained model greedily (task success, KL to the start) and sampled at temperature 1 (the
judge's win rate against the held-out chosen answers), prompt by prompt, so that runs are compared with
paired tests (``tether compare``: paired-bootstrap interval, McNemar's exact p).

- ``start``: the SFT start, ``papers_scale.py``'s SFT point at lr 2e-5 (it trains bit-identically again on
  an idle machine with the default threads), under ``--runs``/papers_scale.
- ``data``: 800 distinct training prompts (the 400 bundled SFT prompts, then 400 more from the same
  generator) and 600 held-out tasks (the first 400 are ``papers_scale.py``'s held-out set), no prompt
  shared; every row keeps ``source`` and ``answer``, so the task checker can judge it.
- ``pairs``: ``tether pairs`` from the start over the training prompts, judged by the task checker.
- ``reward``: a Bradley–Terry reward model (``method: reward``) trained from the start on the bundled
  pairs, its held-out pairwise accuracy, then a second pair set judged by it (the learned-judge path).
- ``pilot``: DPO at lr 1e-6, 2e-6 and 5e-6 on the checker's pairs, to choose a grid that brackets the
  optimum (``--lrs``: the two learning rates the later parts run at; the frontier at the first).
- ``frontier``: ε-DPO's Figure 5, DPO, ε-DPO, β-DPO and TR-DPO (soft, τ scaled to the run) over β
  {0.01, 0.05, 0.1, 0.5}.
- ``table``: ε-DPO's Table 1 and ASFT's Table 2, every comparator with MinorDPO and ASFT at ``--lrs``.
- ``judged``: DPO and ε-DPO on the reward model's pairs (evaluated by the task checker here; the judge's
  own win rates come from ``tether eval --judge``).

Every step is a command that resumes where it was killed (``tether pairs`` keeps finished batches; a
sweep keeps finished runs and evaluations and continues a half-trained run from its last checkpoint), so a
part can be cut anywhere: ``timeout 85m python benchmarks/protocol_study.py --parts ...`` and again later.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import papers_scale  # (the SFT start and the collection of runs are shared with it)

PARTS = ("start", "data", "pairs", "reward", "pilot", "frontier", "table", "judged")
TABLE = ["dpo", "epsilon_dpo", "minor_dpo", "ipo", "r_dpo", "kto", "beta_dpo", "tr_dpo",
         "asft", "orpo", "cpo", "slic_hf", "rrhf", "simpo"]  # fmt: skip
FRONTIER = ["dpo", "epsilon_dpo", "beta_dpo", "tr_dpo"]
BETAS = ["0.01", "0.05", "0.1", "0.5"]
TR_SOFT = {"alpha": 0.6, "tau": 8}  # TR-DPO's soft update, its period scaled to a 100-step run
PILOT_LRS = ["1e-06", "2e-06", "5e-06"]


def tether(*args: str) -> None:
    """Run a tether command (it resumes by itself); stop the part on failure."""
    cmd = [sys.executable, "-m", "tether", *args]
    print("$ tether " + " ".join(args), flush=True)
    if subprocess.call(cmd) != 0:
        raise SystemExit(f"failed: tether {' '.join(args)}")


def paths(args) -> dict[str, Path]:
    root = Path(args.runs) / "protocol"
    return {
        "root": root,
        "data": root / "data",
        "prompts": root / "data" / "prompts.train.jsonl",
        "heldout": root / "data" / "pairs.heldout.jsonl",
        "mc": root / "data" / "mc.heldout.jsonl",
        "task_pairs": root / "pairs" / f"tasks_k{args.samples}.jsonl",  # K in the name: K = 8 beside K = 4
        "rm": root / "reward",
        "rm_pairs": root / "pairs" / f"reward_k{args.samples}.jsonl",
    }


def start(args) -> str:
    return str(Path(args.runs) / "papers_scale" / "sft" / f"sft_lr={args.start_lr}" / "final")


def part_start(args) -> None:
    if Path(start(args)).is_dir():
        return
    subprocess.check_call([sys.executable, str(Path(__file__).parent / "papers_scale.py"), "--parts", "sft",
                           "--sweeps", "sft", "--methods", "sft", "--sft-lrs", args.start_lr,
                           "--runs", str(Path(args.runs) / "papers_scale"), "--quiet"])  # fmt: skip


def part_data(args) -> None:
    from tether.data import tasks

    p = paths(args)
    p["data"].mkdir(parents=True, exist_ok=True)
    drawn = tasks.generate(seed=0, n_train=400, n_heldout=args.heldout + 400)
    heldout, extra = drawn["heldout"][: args.heldout], drawn["heldout"][args.heldout :]
    train = tasks.to_rows(drawn["train"] + extra)["sft"]  # prompt, completion, source, answer
    rows = [{"prompt": r["prompt"], "source": r["source"], "answer": r["answer"]} for r in train]
    held = tasks.to_rows(heldout)
    for path, data in ((p["prompts"], rows), (p["heldout"], held["pairs"]), (p["mc"], held["mc"])):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in data))
    print(f"data: {len(rows)} training prompts, {len(heldout)} held-out tasks -> {p['data']}")


def sample_pairs(args, judge: str, out: Path) -> None:
    tether("pairs", start(args), "--prompts", str(paths(args)["prompts"]), "--judge", judge,
           "--samples", str(args.samples), "--temperature", "0.8", "--max-new-tokens", str(args.max_new_tokens),
           "--seed", "0", "--batch-size", "32", "--out", str(out))  # fmt: skip


def part_pairs(args) -> None:
    out = paths(args)["task_pairs"]
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        sample_pairs(args, "tasks", out)


def part_reward(args) -> None:
    p = paths(args)
    rm = p["rm"]
    if not (rm / "final").is_dir():
        cfg = papers_scale.base_config(
            args, model=start(args), data=papers_scale.BUNDLED / "pairs.train.jsonl", steps=args.steps,
            batch=args.batch_size, lr=1e-5, method={"name": "reward"},
        )  # fmt: skip
        rm.parent.mkdir(parents=True, exist_ok=True)
        cfg_path = p["root"] / "reward.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        tether("train", str(cfg_path), f"train.output_dir={rm}")
    if not (rm / "eval.json").exists():
        tether("eval", str(rm), "--data", str(p["heldout"]))
    if not p["rm_pairs"].exists():
        sample_pairs(args, str(rm), p["rm_pairs"])


def _base(args, method: dict, pairs: str = "task_pairs", lr: float = 5e-6) -> dict:
    return papers_scale.base_config(
        args, model=start(args), data=paths(args)[pairs], steps=args.steps, batch=args.batch_size, lr=lr,
        method=method,
    )  # fmt: skip


def sweeps(args) -> dict[str, list[papers_scale.Sweep]]:
    """Every part's sweeps (the later parts need ``--lrs``, chosen from the pilot)."""
    held = str(paths(args)["heldout"])
    out = {
        "pilot": [
            papers_scale.Sweep(
                "pilot", "pilot", _base(args, {"name": "dpo"}), [("train.lr", PILOT_LRS)], held
            )
        ]
    }
    if not args.lrs:
        return out
    lr0 = float(args.lrs[0])
    out["frontier"] = [
        papers_scale.Sweep(f"frontier_{m}", "frontier", _base(args, {"name": m, **(TR_SOFT if m == "tr_dpo" else {})}, lr=lr0),
                           [("method.beta", BETAS)], held)
        for m in FRONTIER
    ]  # fmt: skip
    plain = [m for m in TABLE if m != "tr_dpo"]
    out["table"] = [
        papers_scale.Sweep("table", "table", _base(args, {"name": "dpo"}), [("method.name", plain), ("train.lr", args.lrs)], held),
        papers_scale.Sweep("table_tr_dpo", "table", _base(args, {"name": "tr_dpo", **TR_SOFT}), [("train.lr", args.lrs)], held),
    ]  # fmt: skip
    out["judged"] = [
        papers_scale.Sweep("judged", "judged", _base(args, {"name": "dpo"}, pairs="rm_pairs", lr=lr0),
                           [("method.name", ["dpo", "epsilon_dpo"])], held),
    ]  # fmt: skip
    return out


def runs_of(sweep: papers_scale.Sweep) -> int:
    n = 1
    for _, values in sweep.grid:
        n *= len(values)
    return n


def run_sweep(args, sweep: papers_scale.Sweep) -> None:
    """A sweep evaluated greedily (success, KL, pairwise), then each run again sampled at temperature 1
    (win rate against the chosen answers, the paper's protocol) and on multiple choice."""
    from tether.evaluation.evaluate import EvalOptions, evaluate
    from tether.training.sweep import run_sweep as sweep_run

    p = paths(args)
    cfg = p["root"] / "configs" / f"{sweep.name}.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(yaml.safe_dump(sweep.base, sort_keys=False))
    greedy = EvalOptions(max_new_tokens=args.max_new_tokens, batch_size=32, progress=not args.quiet)
    sampled = EvalOptions(max_new_tokens=args.max_new_tokens, batch_size=32, temperature=1.0,
                          metrics=["generation"], progress=not args.quiet)  # fmt: skip

    def after(point, rd) -> None:
        if not (rd.path / "eval_t1.json").exists():
            evaluate(str(rd.path), sweep.eval_data, sampled, out=rd.path / "eval_t1.json")
        if not (rd.path / "eval_mc.json").exists():
            evaluate(str(rd.path), str(p["mc"]), metrics=["mc"], progress=not args.quiet,
                     out=rd.path / "eval_mc.json")  # fmt: skip
        if not args.keep_checkpoints:
            shutil.rmtree(rd.checkpoints, ignore_errors=True)

    t0 = time.time()
    result = sweep_run(cfg, sweep.grid, out=p["root"] / sweep.name, data_eval=sweep.eval_data,
                       options=greedy, after_point=after)  # fmt: skip
    print(f"== {sweep.name}: {len(result.points)} runs, {time.time() - t0:.0f} s", flush=True)


def counts(path: Path) -> dict[str, Any]:
    """The pair set's counts from its sidecar (written by ``tether pairs``)."""
    meta = path.with_suffix(".meta.json")
    return json.loads(meta.read_text()).get("counts", {}) if meta.exists() else {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--parts", nargs="*", default=list(PARTS), choices=PARTS)
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--start-lr", default="2e-05")
    ap.add_argument(
        "--samples", type=int, default=8, help="completions per training prompt (K; 4 left 311 pairs)"
    )
    ap.add_argument("--heldout", type=int, default=600, help="held-out tasks (≥ 500: one task = 0.17 %%)")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--keep-checkpoints", action="store_true")
    ap.add_argument(
        "--lrs", nargs="*", default=[], help="the two learning rates of the later parts (from the pilot)"
    )
    ap.add_argument("--plan", action="store_true", help="print every sweep, its grid and runs; run nothing")
    ap.add_argument("--status", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    p = paths(args)
    if args.plan:
        total = 0
        for part, group in sweeps(args).items():
            for s in group:
                total += runs_of(s)
                print(f"{part:9s} {s.name:22s} {runs_of(s):3d} runs  {s.grid}")
        print(
            f"{total} runs" + ("" if args.lrs else " (frontier, table, judged: give --lrs after the pilot)")
        )
        return
    if args.status:
        print(f"start: {'done' if Path(start(args)).is_dir() else 'left'}")
        for name in ("task_pairs", "rm_pairs"):
            print(f"{name}: {counts(p[name]) if p[name].exists() else 'left'}")
        print(f"reward model: {'evaluated' if (p['rm'] / 'eval.json').exists() else 'left'}")
        return
    steps = {"start": part_start, "data": part_data, "pairs": part_pairs, "reward": part_reward}
    planned = sweeps(args)
    for part in args.parts:
        if part not in steps and part not in planned:
            raise SystemExit(f"--parts {part}: give --lrs (the learning rates chosen from the pilot) first")
        t0 = time.time()
        if part in steps:
            steps[part](args)
        else:
            for s in planned[part]:
                run_sweep(args, s)
        print(f"== part {part}: {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
