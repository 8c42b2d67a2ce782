"""The papers' comparison rerun on their own protocol (issue 27), in resumable parts.

    python benchmarks/protocol_study.py --parts start data pairs reward   # item 1: on-policy pairs, a reward model
    python benchmarks/protocol_study.py --parts pilot          # item 2: DPO at three lrs on the on-policy pairs
    python benchmarks/protocol_study.py --parts frontier table judged [--lrs A B]   # items 3, 4, 7 at the chosen lrs
    python benchmarks/protocol_study.py --parts sdpo minorsft seeds [--lrs A B]      # items 5, 6 and the seeds
    python benchmarks/protocol_study.py --plan [--lrs A B]       # every sweep, its grid and its number of runs
    python benchmarks/protocol_study.py --status               # what is finished
    python benchmarks/protocol_study.py --collect docs/results/protocol/results.json --page docs/results.md

The learning rates the pilot chose are the defaults (docs/results.md says why): ``--lrs 5e-06 1e-05
--ref-free-lrs 2e-05``.

The seeds' protocol (ε-DPO after SimPO's "Instruct" setting): sample K completions per training prompt
from the starting model at temperature 0.8, have a judge score them, train on best-vs-worst pairs; then
evaluate every trained model greedily (task success, KL to the start) and with one sample at temperature 1,
prompt by prompt, so that runs are compared with paired tests (``tether compare``: paired-bootstrap
interval, McNemar's exact p) against the start (evaluated the same way) and against their baseline.

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
- ``judged``: DPO and ε-DPO on the reward model's pairs, evaluated also by that reward model (its win rate
  against the chosen answers and its mean reward, T = 1: ``eval_rm.json``).
- ``sdpo``: two stages easy → hard (by the start's success on each pair's prompt) and a random half split,
  each 2 × half of one-shot DPO's steps, 3 seeds; γ_ref per stage and of M_0, M_1 on the last chunk.
- ``minorsft``: SFT and MinorSFT from the instruct model at the start's lr, 3 seeds, m_θ along training
  (seed 0's checkpoints); run again once MinorSFT's seed 0 is done, it adds SFT at lr × MinorSFT's mean
  weight (the "it is just a smaller step" control; under AdamW a constant loss scale does not shrink the
  step, so the control is a smaller lr).
- ``seeds``: seeds 1 and 2 of DPO, ε-DPO, ASFT, ORPO and MinorDPO at the first lr.

``--collect`` writes results.json: every finished run with its paired comparisons against the start and
its baseline, and each paper's claims (:data:`CLAIMS`) as paired tests, seeds pooled by prompt (:func:`pool`).
The committed record is what the study continues from on a new machine (its run directories are not
kept): ``--collect OUT`` keeps the runs OUT holds that are not on this disk, writes every run's per-prompt
outcomes beside it (:data:`OUTCOMES`, from which every paired test is made) and keeps the pair sets beside
it (``pairs/``); a run the record holds is not trained again and a committed pair set is not sampled again
(``--record``, the committed record by default, when its settings are this study's).

Every step is a command that resumes where it was killed (``tether pairs`` keeps finished batches; a
sweep keeps finished runs and evaluations and continues a half-trained run from its last checkpoint), so a
part can be cut anywhere: ``timeout 85m python benchmarks/protocol_study.py --parts ...`` and again later.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from itertools import combinations, pairwise, product
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import papers_scale  # (the SFT start and the collection of runs are shared with it)

from tether.methods.registry import METHODS

PARTS = (
    "start",
    "data",
    "pairs",
    "reward",
    "pilot",
    "frontier",
    "table",
    "judged",
    "sdpo",
    "minorsft",
    "seeds",
)
TABLE = ["dpo", "epsilon_dpo", "beta_dpo", "minor_dpo", "asft", "orpo", "simpo", "ipo", "r_dpo", "kto", "cpo",
         "slic_hf", "rrhf", "tr_dpo"]  # fmt: skip
"""The 12 of ε-DPO's Table 1 with MinorDPO and ASFT, in the order they train: the frontier's default-β points
and the headline claims' methods first, so that a study cut short has them."""
FRONTIER = ["dpo", "epsilon_dpo", "beta_dpo", "tr_dpo"]
BETAS = ["0.01", "0.05", "0.1", "0.5"]
TR_SOFT = {"alpha": 0.6, "tau": 8}  # TR-DPO's soft update, its period scaled to a 100-step run
PILOT_LRS = ["1e-06", "2e-06", "5e-06"]
HEADLINE = ["dpo", "epsilon_dpo", "asft", "orpo", "minor_dpo", "simpo"]
"""The rows of the claims (:data:`CLAIMS`) that the seeds part repeats (SimPO for ε-DPO's Table 1 claim
against it); sDPO, SFT and MinorSFT have their seeds in their own parts."""
SEEDS = ["1", "2"]  # seed 0 is the table's run


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
        "staged_pairs": root / "pairs" / f"tasks_k{args.samples}.staged.jsonl",
        "sft_rows": papers_scale.BUNDLED / "sft.train.jsonl",
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


def committed_pairs(args, out: Path) -> bool:
    """The committed pair set named as ``out`` (:func:`pairs_dir`) copied into place with its sidecar (False when
    none is committed): every machine trains on the same pairs, although a new machine's start samples a
    little differently (2026-12-07: 24,391 generated tokens where the recorded set had 24,378)."""
    if record_of(args) is None or not (src := pairs_dir(args.record) / out.name).exists():
        return False
    copy_pair_set(src, out)
    print(f"pairs: {out.name} as committed in {src.parent}", flush=True)
    return True


def copy_pair_set(src: Path, dst: Path) -> None:
    """A pair set and its sidecar copied, the sidecar first and the set whole or absent (its presence is what
    says a part is done)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src.with_suffix(".meta.json"), dst.with_suffix(".meta.json"))
    shutil.copyfile(src, dst.with_suffix(".partial"))
    dst.with_suffix(".partial").replace(dst)


def part_pairs(args) -> None:
    out = paths(args)["task_pairs"]
    if not out.exists() and not committed_pairs(args, out):
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
        tether("train", str(cfg_path), f"train.output_dir={rm}", "train.resume=true")  # resumes if killed
    if not (rm / "eval.json").exists():
        tether("eval", str(rm), "--data", str(p["heldout"]))
    if not p["rm_pairs"].exists() and not committed_pairs(args, p["rm_pairs"]):
        sample_pairs(args, str(rm), p["rm_pairs"])


def part_staged_data(args) -> None:
    """sDPO's easy → hard split of the checker's pairs: a pair is easy when the start already solved its
    prompt often (the mean checker score of its K samples), the easier half first (ties in file order);
    ``difficulty`` is the column the stages are split by."""
    p = paths(args)
    if p["staged_pairs"].exists():
        return
    rows = [json.loads(line) for line in p["task_pairs"].read_text().splitlines()]
    mean = [sum(r["provenance"]["scores"]) / len(r["provenance"]["scores"]) for r in rows]
    order = sorted(range(len(rows)), key=lambda i: -mean[i])
    easy = set(order[: len(rows) // 2])
    out = [{**r, "difficulty": "easy" if i in easy else "hard"} for i, r in enumerate(rows)]
    tmp = p["staged_pairs"].with_suffix(".partial")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out))
    tmp.replace(p["staged_pairs"])  # whole or absent


def _base(args, method: dict, pairs: str = "task_pairs", lr: float = 5e-6) -> dict:
    cfg = papers_scale.base_config(
        args, model=start(args), data=paths(args)[pairs], steps=args.steps, batch=args.batch_size, lr=lr,
        method=method,
    )  # fmt: skip
    cfg["train"]["progress"] = False  # resuming checks the config: the same with or without --quiet
    return cfg


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
        papers_scale.Sweep(
            f"frontier_{m}",
            "frontier",
            _base(args, {"name": m, **(TR_SOFT if m == "tr_dpo" else {})}, lr=lr0),
            [("method.beta", [b for b in BETAS if float(b) != METHODS[m].defaults["beta"]])],
            held,
        )
        for m in FRONTIER
    ]  # fmt: skip (each method's default β is the table's run at the first lr)
    plain = [m for m in TABLE if m != "tr_dpo"]
    out["table"] = [  # TR-DPO (its own sweep: its soft-update settings) first: its default β ends the frontier
        papers_scale.Sweep("table_tr_dpo", "table", _base(args, {"name": "tr_dpo", **TR_SOFT}), [("train.lr", args.lrs)], held),
        # every method at the first lr before any at the second: a study cut short still has the first lr's table
        papers_scale.Sweep("table", "table", _base(args, {"name": "dpo"}), [("train.lr", args.lrs), ("method.name", plain)], held),
    ]  # fmt: skip
    free_lrs = [lr for lr in args.ref_free_lrs if float(lr) not in map(float, args.lrs)]
    if free_lrs:  # the reference-free methods' own (higher) learning rates, DPO beside them
        out["table"].append(
            papers_scale.Sweep("table_ref_free", "table", _base(args, {"name": "asft"}),
                               [("method.name", ["asft", "orpo", "dpo"]), ("train.lr", free_lrs)], held)
        )  # fmt: skip
    out["judged"] = [
        papers_scale.Sweep("judged", "judged", _base(args, {"name": "dpo"}, pairs="rm_pairs", lr=lr0),
                           [("method.name", ["dpo", "epsilon_dpo"])], held, {"judge": True}),
    ]  # fmt: skip
    staged = _base(args, {"name": "dpo"}, pairs="staged_pairs", lr=lr0)
    staged["train"]["max_steps"] = max(1, args.steps // 2)  # per stage: the same total as one-shot DPO
    staged["train"]["save_every"] = max(1, args.steps // 4)
    easy_hard = {**staged, "stages": {"by": "column", "column": "difficulty", "order": ["easy", "hard"]}}
    random_split = {**staged, "stages": {"by": "random", "fractions": [0.5, 0.5]}}
    out["sdpo"] = [
        papers_scale.Sweep("sdpo_easy_hard", "sdpo", easy_hard, [("train.seed", ["0", *SEEDS])], held),
        papers_scale.Sweep("sdpo_random", "sdpo", random_split, [("train.seed", ["0", *SEEDS])], held),
    ]
    sft = papers_scale.base_config(
        args, model=args.model, data=paths(args)["sft_rows"], steps=args.steps, batch=8, lr=float(args.start_lr),
        method={"name": "sft"},
    )  # fmt: skip
    sft["train"]["progress"] = False
    out["minorsft"] = [
        papers_scale.Sweep("minorsft", "minorsft", sft, [("method.name", ["sft", "minor_sft"]),
                           ("train.seed", ["0", *SEEDS])], held, {"checkpoints": ["minor_sft_seed=0", "sft_seed=0"]}),
    ]  # fmt: skip
    weight = minor_sft_weight(args)
    if weight is not None:  # the "it is just a smaller step" control, once MinorSFT's mean weight is measured
        small = f"{float(args.start_lr) * weight:.3g}"
        out["minorsft"].append(
            papers_scale.Sweep("sft_small_step", "minorsft", {**sft, "train": {**sft["train"], "lr": float(small)}},
                               [("train.seed", ["0", *SEEDS])], held)
        )  # fmt: skip
    out["seeds"] = [
        papers_scale.Sweep("seeds", "seeds", _base(args, {"name": "dpo"}, lr=lr0),
                           [("method.name", HEADLINE), ("train.seed", SEEDS)], held),
    ]  # fmt: skip
    return out


def minor_sft_weight(args) -> float | None:
    """MinorSFT's mean per-sample weight over its seed-0 run, here or in the record (None until it has finished)."""
    from tether.rundir import RunDir

    run = paths(args)["root"] / "minorsft" / "minor_sft_seed=0"
    if RunDir(run).is_finished():
        ws = [r["minor_sft/weight"] for r in RunDir(run).read_metrics()[0] if "minor_sft/weight" in r]
    else:  # made on another machine: its record's series
        rows = [
            r for r in (record_of(args) or {}).get("runs", []) if run_id(r) == "minorsft/minor_sft_seed=0"
        ]
        ws = [w for w in rows[0]["series"].get("minor_sft/weight", []) if w is not None] if rows else []
    return sum(ws) / len(ws) if ws else None


def runs_of(sweep: papers_scale.Sweep) -> int:
    n = 1
    for _, values in sweep.grid:
        n *= len(values)
    return n


@dataclass(frozen=True)
class Evaluation:
    """One evaluation every run gets: the file it writes in the run directory, the prefix of its metrics'
    keys in results.json, and the metrics compared prompt by prompt with the start and the baseline."""

    file: str
    prefix: str
    paired: tuple[str, ...]


EVALUATIONS = (
    Evaluation("eval.json", "", ("success",)),  # greedy: success, KL to the start, pairwise (the sweep's own)
    Evaluation("eval_t1.json", "t1/", ("success",)),  # one sample at T = 1, ε-DPO's protocol
    Evaluation("eval_rm.json", "rm/", ("win_rate/chosen", "judge/reward")),  # the learned judge (item 7)
    Evaluation("eval_mc.json", "", ()),  # multiple choice (sDPO's H4-like likelihood metric)
)
"""With the task checker as the judge, the win rate against a right chosen answer is 0 or ½ a prompt, i.e.
half the success, so success is what is compared; only the reward model's win rate is a number of its own."""


def evaluations(args) -> dict[str, tuple[Any, Path]]:
    """Each :data:`EVALUATIONS` file's options and data: greedy, one sample at T = 1 (also judged by the
    reward model), multiple choice."""
    from tether.evaluation.evaluate import EvalOptions

    p = paths(args)
    greedy = EvalOptions(max_new_tokens=args.max_new_tokens, batch_size=32, progress=not args.quiet)
    sampled = dataclasses.replace(greedy, temperature=1.0, metrics=["generation"])
    return {
        "eval.json": (greedy, p["heldout"]),
        "eval_t1.json": (sampled, p["heldout"]),
        "eval_rm.json": (dataclasses.replace(sampled, judge=str(p["rm"])), p["heldout"]),
        "eval_mc.json": (EvalOptions(metrics=["mc"], progress=not args.quiet), p["mc"]),
    }


def eval_start(args, judged: bool = False) -> None:
    """The start evaluated as the runs are (its own reference: KL 0), so that every run can be compared
    with it prompt by prompt."""
    from tether.evaluation.evaluate import evaluate

    out = paths(args)["root"] / "start"
    out.mkdir(parents=True, exist_ok=True)
    run = str(
        Path(start(args)).parent
    )  # its run directory: max_length and dtype from its config, as the runs'
    for name, (opts, data) in evaluations(args).items():
        if (judged or name != "eval_rm.json") and not (out / name).exists():
            evaluate(run, str(data), dataclasses.replace(opts, reference=start(args)), out=out / name)


RECORD = Path(__file__).resolve().parents[1] / "docs" / "results" / "protocol" / "results.json"
"""The study's committed record (``--collect``'s OUT): it outlives the machine whose run directories made it."""


def pairs_dir(record: str | Path) -> Path:
    """The committed pair sets, beside the record (``--collect OUT`` keeps each one it finds beside OUT)."""
    return Path(record).parent / "pairs"


def keep_pairs(files: list[Path], record: Path) -> None:
    """Each pair set here committed beside ``record`` (with its sidecar) unless one of that name is; one that
    differs from the committed copy is named (runs trained on it say so in their ``inputs``)."""
    for f in files:
        kept = pairs_dir(record) / f.name
        if not kept.exists():
            copy_pair_set(f, kept)
        elif sha256(kept) != sha256(f):
            print(f"pairs: {f} differs from the committed {kept}; the runs trained on it record its sha256")


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def record_of(args) -> dict[str, Any] | None:
    """``--record`` when it is this study's (the same :data:`SETTINGS`; None otherwise, said in one line): the
    runs and pair sets a new machine takes from it instead of making them again."""
    if not args.record or not Path(args.record).exists():
        return None
    path, stat = Path(args.record).resolve(), Path(args.record).stat()
    return _record(str(path), (stat.st_mtime_ns, stat.st_size), json.dumps(settings(args), sort_keys=True))


@functools.cache
def _record(path: str, version: tuple[int, int], wanted: str) -> dict[str, Any] | None:
    """:func:`record_of`'s reading, once per file version and settings (so its one line is said once); the
    dict is shared: read it, never change it."""
    record = json.loads(Path(path).read_text())
    if record.get("settings") != json.loads(wanted):
        print(f"--record {path}: made with other settings ({record.get('settings')}); nothing taken from it")
        return None
    return record


def recorded(args, sweep: str) -> set[str]:
    """The runs of ``sweep`` that the record (:func:`record_of`) holds with their per-prompt outcomes, by
    name. A run it holds without them (collected before they were kept) is made again when its part runs:
    no paired test can be made with it."""
    record = record_of(args)
    if not record:
        return set()
    outcomes = read_outcomes(Path(args.record))
    return {r["run"] for r in record["runs"] if r["sweep"] == sweep and outcomes.get(run_id(r))}


def seed_major(group: list[papers_scale.Sweep]) -> list[tuple[papers_scale.Sweep, str | None]]:
    """A part's sweeps, each with the seed whose points it runs: seed 0 of every sweep before seed 1 of any,
    so that a part cut short has every arm of its claims at one seed (``None``: all of a seedless sweep)."""

    def seeds(s: papers_scale.Sweep) -> list[str | None]:
        return dict(s.grid).get("train.seed", [None])

    rounds = dict.fromkeys(seed for s in group for seed in seeds(s))
    return [(s, seed) for seed in rounds for s in group if seed in seeds(s)]


def run_sweep(args, sweep: papers_scale.Sweep, seed: str | None = None) -> None:
    """A sweep (its points of ``seed`` only, when given) evaluated greedily (success, KL, pairwise), then
    each run again with one sample at temperature 1 (the paper's protocol), on multiple choice, and (the
    judged part) by the reward model. A run the record (``--record``) holds and this machine has no
    directory of is not run again."""
    from tether.evaluation.evaluate import evaluate, evaluate_checkpoints
    from tether.rundir import SweepDir
    from tether.training.sweep import Point, plan, write_summary
    from tether.training.sweep import run_sweep as sweep_run

    p = paths(args)
    cfg = p["root"] / "configs" / f"{sweep.name}.yaml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(yaml.safe_dump(sweep.base, sort_keys=False))
    evals = evaluations(args)
    greedy = evals["eval.json"][0]

    def after(point, rd) -> None:
        if point.name in sweep.extra.get("checkpoints", []) and not rd.eval_checkpoints.exists():
            evaluate_checkpoints(str(rd.path), sweep.eval_data, greedy)  # MinorSFT's m_θ along training
        for name, (opts, data) in evals.items():  # eval.json is the sweep's own
            if name == "eval_rm.json" and not sweep.extra.get("judge"):
                continue
            if not (rd.path / name).exists():
                evaluate(str(rd.path), str(data), opts, out=rd.path / name)
        if not args.keep_checkpoints:
            for d in [rd, *rd.stage_dirs()]:
                shutil.rmtree(d.checkpoints, ignore_errors=True)

    t0 = time.time()
    out = p["root"] / sweep.name
    every = plan(cfg, sweep.grid, out)[2]
    points = [pt for pt in every if seed in (None, pt.values.get("train.seed"))]
    done = recorded(args, sweep.name)
    left = [pt for pt in points if pt.name not in done or (out / pt.name).is_dir()]
    if len(left) < len(points):
        print(f"== {sweep.name}: {len(points) - len(left)} of its runs are in {args.record}; not run again")
    swept = SweepDir(out)
    this_seed = {pt.name for pt in points}
    finished: list[Point] = [  # the sweep's table covers its other seeds' points evaluated here too
        dataclasses.replace(pt, status="done", eval_status="kept", metrics=old.get("metrics", {}))
        for pt in every
        if pt.name not in this_seed and (old := swept.run(pt.name).read_eval()) is not None
    ]
    for pt in left:  # one point at a time, so that the record's points are left out
        grid = [(k, [v]) for k, v in pt.values.items()]
        finished += sweep_run(
            cfg, grid, out=out, data_eval=sweep.eval_data, options=greedy, after_point=after
        ).points
        write_summary(swept, finished)  # each call wrote its own point only: the table of all so far
        swept.write_manifest((swept.read_manifest() or {}) | {"grid": [[k, list(v)] for k, v in sweep.grid]})
        run = out / pt.name
        if (
            sweep.base.get("stages", {}).get("by") == "column"
            and not (run / "gamma_last_chunk.json").exists()
        ):
            # sDPO's claim: each stage's reference is better on the same (last) chunk
            gammas = papers_scale.gamma_by_reference(run, sweep.base["model"]["name"], sweep.base)
            (run / "gamma_last_chunk.json").write_text(json.dumps(gammas, indent=1))
    print(f"== {sweep.name}: {len(left)} runs, {time.time() - t0:.0f} s", flush=True)


def _kept(metrics: dict[str, Any]) -> dict[str, Any]:
    kept = papers_scale._kept(metrics)
    extra = ("win_rate/chosen", "win_rate/chosen/lc", "judge/reward")
    return {k: v for k, v in metrics.items() if k in kept or k.split("/ci_")[0] in extra}


def run_id(r: dict[str, Any]) -> str:
    return "start" if r["sweep"] == "start" else f"{r['sweep']}/{r['run']}"


def outcome_vectors(folder: Path, start: Path) -> dict[str, list[float | None]]:
    """A run's per-prompt outcomes on each metric :data:`EVALUATIONS` compares, in the start's prompt order:
    what every paired test needs, kept in :data:`OUTCOMES` so that a comparison outlives the run directory.
    An evaluation not made as the start's (other prompts, settings or judge) is refused (``tether compare``'s
    checks)."""
    from tether.evaluation.compare import METRICS, check_comparable, keyed, load_evaluated

    out: dict[str, list[float | None]] = {}
    for e in EVALUATIONS:
        if not (e.paired and (folder / e.file).exists() and (start / e.file).exists()):
            continue
        ref, ev = load_evaluated(start / e.file), load_evaluated(folder / e.file)
        mine = keyed(ev.outcomes)
        for metric in e.paired:
            check_comparable([ref, ev], metric)
            values = [getattr(mine[k], METRICS[metric]) for k in keyed(ref.outcomes)]
            out[f"{e.prefix}{metric}"] = [None if v is None else float(v) for v in values]
    return out


OUTCOMES = "outcomes.jsonl"
"""Beside results.json: one line per run, its id and its per-prompt outcomes (:func:`outcome_vectors`); the
start's line also names the prompts, so that outcomes collected on another machine are checked to align."""


def read_outcomes(record: Path) -> dict[str, dict[str, Any]]:
    path = record.with_name(OUTCOMES)
    lines = path.read_text().splitlines() if path.exists() else []
    return {(d := json.loads(line)).pop("run"): d for line in lines}


def write_outcomes(record: Path, outcomes: dict[str, dict[str, Any]]) -> None:
    compact = lambda v: int(v) if isinstance(v, float) and v.is_integer() else v  # noqa: E731  (0/1 as 0/1)
    lines = [json.dumps({"run": k, **{m: [compact(x) for x in xs] if m != "prompts" else xs
                                      for m, xs in v.items()}}, ensure_ascii=False, separators=(",", ":"))
             for k, v in sorted(outcomes.items(), key=lambda kv: kv[0] != "start")]  # fmt: skip
    record.with_name(OUTCOMES).write_text("".join(f"{line}\n" for line in lines))


def collect(
    args, prior: dict[str, Any] | None = None, prior_outcomes: dict[str, dict[str, Any]] | None = None
):
    """Every run's record and per-prompt outcomes: those on disk (``papers_scale.collect``'s record, plus its
    T = 1 and reward-model evaluations under ``t1/`` and ``rm/`` and the pair set it trained on), then the
    ``prior`` record's runs that are not on disk (a study continued on another machine keeps what it has
    collected); the start's record first. Each run's paired comparisons (:data:`EVALUATIONS`) with the start and
    with the runs :func:`against` names are made from the outcomes; where a side has none (a run collected
    before outcomes were kept), the prior record's comparison stays."""
    from tether.engine import models
    from tether.evaluation.compare import keyed, load_evaluated, paired_values
    from tether.rundir import RunDir

    root = paths(args)["root"]
    groups = [s for group in sweeps(args).values() for s in group]
    rows = papers_scale.collect(argparse.Namespace(runs=str(root)), groups)
    start_row = {"sweep": "start", "run": "start", "method": "start", "metrics": {}}
    outcomes: dict[str, dict[str, Any]] = {}
    for r, folder in [(start_row, root / "start"), *((r, root / r["sweep"] / r["run"]) for r in rows)]:
        for e in EVALUATIONS:
            if (folder / e.file).exists():
                m = _kept(json.loads((folder / e.file).read_text())["metrics"])
                r["metrics"].update({f"{e.prefix}{k}": v for k, v in m.items()})
        outcomes[run_id(r)] = outcome_vectors(folder, root / "start")
    if (root / "start" / "eval.json").exists():
        outcomes["start"]["prompts"] = [
            k[0] for k in keyed(load_evaluated(root / "start" / "eval.json").outcomes)
        ]
    fingerprint = functools.cache(lambda model: models.model_fingerprint(model)[:16])
    rm = paths(args)["rm"] / "final"  # the reward model that judged this machine's eval_rm.json files

    def judge(folder: Path) -> dict[str, str]:
        return {"judge": fingerprint(str(rm))} if (folder / "eval_rm.json").exists() and rm.is_dir() else {}

    if start_row["metrics"]:
        start_row["inputs"] = {"start": fingerprint(start(args))} | judge(root / "start")
    for r in rows:
        rd = RunDir(root / r["sweep"] / r["run"])
        cfg = rd.last_stage().read_config_mapping()
        first = (rd.stage_dirs()[0] if rd.is_staged() else rd).read_config_mapping()  # sDPO: stage 1's model
        r["pairs"] = Path(cfg["data"]["train"]).name.replace(".staged", "")
        source = root / "pairs" / r["pairs"] if cfg["data"]["train"].endswith(".staged.jsonl") else None
        r["inputs"] = {
            "start": fingerprint(first["model"]["name"]),
            "pairs": sha256(source or Path(cfg["data"]["train"])),
        } | judge(rd.path)
        r["paired"] = {}
    prior_rows = {run_id(r): r for r in (prior or {}).get("runs", [])}
    prior_outcomes = prior_outcomes or {}
    if not start_row["metrics"] and "start" in prior_rows:
        start_row, outcomes["start"] = prior_rows["start"], prior_outcomes.get("start", {})
    elif (
        "prompts" in prior_outcomes.get("start", {})
        and outcomes["start"].get("prompts") != prior_outcomes["start"]["prompts"]
    ):
        raise SystemExit("--collect: the start here was evaluated on other prompts than the recorded one")
    here = {run_id(r) for r in rows}
    kept = [r for k, r in prior_rows.items() if k != "start" and k not in here]
    outcomes.update({k: prior_outcomes.get(k, {}) for k in (run_id(r) for r in kept)})
    order = {s.name: i for i, s in enumerate(groups)}  # the plan's order, whichever machine made a run
    rows = sorted(rows + kept, key=lambda r: (order.get(r["sweep"], len(order)), r["run"]))
    starts = [(prior_rows.get("start"), prior_outcomes.get("start")), (start_row, outcomes["start"])]
    give_answers(starts, rows)
    for r in rows:
        others = {"start": start_row, **against(rows, r)}
        others = {k: o for k, o in others.items() if made_alike(r, o)}
        mine = outcomes[run_id(r)]
        for e in EVALUATIONS:
            for metric, (name, other) in product(e.paired, others.items()):
                key, theirs = f"{e.prefix}{metric}", outcomes[run_id(other)]
                if key not in mine or key not in theirs or not judged_alike(key, r, other):
                    continue
                both = list(prompt_values([theirs[key], mine[key]]).values())
                res = paired_values(*zip(*both, strict=True)) if both else {"n": 0}
                entry = {k: res.get(k) for k in ("n", "difference", "ci_low", "ci_high", "mcnemar_p")}
                if other is not start_row:
                    entry["against"] = run_id(other)
                r["paired"][f"{key} vs {name}"] = entry
    return [start_row, *rows], outcomes


@dataclass(frozen=True)
class Claim:
    """A paper's claim as a paired comparison: the runs of ``method`` in ``sweeps`` against the runs of
    ``other_method`` in ``other_sweeps`` that share ``match`` with them (the same pairs, lr and seed), on
    each of ``measures`` (keys as in a run's ``paired``: ``success`` greedy, ``t1/success`` at T = 1, ``rm/…``
    by the reward model); Δ is the claim's method minus the other."""

    paper: str
    claim: str
    method: str
    sweeps: tuple[str, ...]
    other_method: str
    other_sweeps: tuple[str, ...]
    match: tuple[str, ...] = ("pairs", "lr", "seed")
    measures: tuple[str, ...] = ("success", "t1/success")


TABLE_RUNS = ("table", "table_ref_free", "seeds")
CLAIMS = (
    Claim("ε-DPO", "ε-DPO above DPO (Table 1)", "epsilon_dpo", TABLE_RUNS, "dpo", TABLE_RUNS),
    Claim("ε-DPO", "ε-DPO above SimPO (Table 1)", "epsilon_dpo", TABLE_RUNS, "simpo", TABLE_RUNS),
    Claim("ε-DPO", "ε-DPO above DPO on the reward model's pairs, by the reward model (item 7)", "epsilon_dpo",
          ("judged",), "dpo", ("judged",), measures=("rm/win_rate/chosen", "rm/judge/reward")),
    Claim("MinorDPO", "MinorDPO above DPO (it keeps the chosen answer)", "minor_dpo", TABLE_RUNS, "dpo", TABLE_RUNS),
    Claim("ASFT", "ASFT above DPO (Table 2)", "asft", TABLE_RUNS, "dpo", TABLE_RUNS),
    Claim("ASFT", "ASFT above ORPO (Table 2)", "asft", TABLE_RUNS, "orpo", TABLE_RUNS),
    Claim("sDPO", "sDPO (easy → hard) above one-shot DPO (Table 2)", "dpo", ("sdpo_easy_hard",), "dpo", TABLE_RUNS),
    Claim("sDPO", "easy → hard above a random split", "dpo", ("sdpo_easy_hard",), "dpo", ("sdpo_random",)),
    Claim("MinorSFT", "MinorSFT above SFT", "minor_sft", ("minorsft",), "sft", ("minorsft",)),
    Claim("MinorSFT", "MinorSFT above SFT at lr × its mean weight (a smaller step)", "minor_sft", ("minorsft",),
          "sft", ("sft_small_step",), match=("seed",)),
)  # fmt: skip
"""The comparisons each paper's verdict rests on (docs/results.md); :func:`claims` tests them, seeds pooled."""

PERMUTATIONS = 20_000
BOOTSTRAPS = 10_000  # each end of a 95 % interval to about ±0.001


ANSWERED = ("prompts", "success", "t1/success")
"""The start's outcomes that identify it across machines (:func:`answers`): greedy and T = 1, by prompt."""


def answers(start_outcomes: dict[str, Any]) -> str | None:
    """The sha256 of the start's held-out answers (:data:`ANSWERED`; None before it is evaluated). Two
    machines' starts differ in their last bits; when they answer every held-out prompt alike, greedily and
    at T = 1, their runs are paired (:func:`made_alike`), and the claims say so ("alike")."""
    import hashlib

    if "success" not in start_outcomes:
        return None
    kept = {
        k: [v if k == "prompts" or v is None else float(v) for v in start_outcomes[k]]
        for k in ANSWERED
        if k in start_outcomes
    }
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode()).hexdigest()[:16]


def give_answers(
    starts: list[tuple[dict[str, Any] | None, dict[str, Any] | None]], rows: list[dict[str, Any]]
) -> None:
    """Each start (its row and outcomes: the record's, this machine's) and each run trained from its weights
    given the start's :func:`answers`; a run that has them keeps its own."""
    known: dict[str, str] = {}
    for row, vectors in starts:
        if row and (row.get("inputs") or {}).get("start") and (a := answers(vectors or {})):
            row["inputs"]["answers"] = known[row["inputs"]["start"]] = a
    for r in rows:
        if (i := r.get("inputs")) and "answers" not in i and i.get("start") in known:
            i["answers"] = known[i["start"]]


def judged_alike(measure: str, *runs: dict[str, Any]) -> bool:
    """Whether the runs' outcomes on ``measure`` can be paired: a reward model's verdicts (``rm/``) only
    when one reward model judged them all (each machine trains its own), any other measure always."""
    judges = [(r.get("inputs") or {}).get("judge") for r in runs]
    return not measure.startswith("rm/") or (judges[0] is not None and len(set(judges)) == 1)


def same_inputs(runs: list[dict[str, Any]]) -> str | None:
    """``same`` when the runs trained from one start and one pair set; ``alike`` when their starts differ in
    their weights but give the same held-out answers (:func:`answers`), the pair set the same; ``differ``
    otherwise (None when a run did not record its inputs)."""
    inputs = [r.get("inputs") for r in runs]
    if None in inputs:
        return None
    if len({(i.get("start"), i.get("pairs")) for i in inputs}) == 1:
        return "same"
    return "alike" if all(made_alike(a, b) for a, b in combinations(runs, 2)) else "differ"


def made_alike(run: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether ``run`` trained from ``other``'s start, or from a start that answers every held-out prompt as
    it does (:func:`answers`), and on its pair set when ``other`` is a run, not the start: only then are the
    two paired from their outcomes (a start that answers otherwise is another model)."""
    a, b = run.get("inputs"), other.get("inputs")
    if a is None or b is None:
        return False
    same = [k for k in ("start", "answers") if a.get(k) is not None and a.get(k) == b.get(k)]
    return bool(same) and (other.get("sweep") == "start" or a.get("pairs") == b.get("pairs"))


def pooled(pairs: list[tuple[list[float | None], list[float | None]]]) -> dict[str, Any] | None:
    """``run − other`` over seeds: each ``(other, run)`` pair of per-prompt outcomes is one seed, compared
    prompt by prompt (``tether compare``'s numbers: its Δ per seed), then pooled (:func:`pool`) over the
    prompts every seed has both values for (None when fewer than 2). For one seed with binary outcomes the p
    is McNemar's exact one, as ``tether compare`` gives it."""
    from tether.evaluation.compare import paired_values

    seeds = [prompt_values([other, run]) for other, run in pairs]
    shared = [i for i in range(len(pairs[0][0])) if all(i in s for s in seeds)]
    if len(shared) < 2:
        return None
    per_seed = [paired_values(*zip(*s.values(), strict=True)) for s in seeds]
    out = pool([[s[i] for s in seeds] for i in shared])
    out["per_seed"] = [x["difference"] for x in per_seed]
    if len(pairs) == 1 and per_seed[0].get("mcnemar_p") is not None:
        out["p"], out["test"] = per_seed[0]["mcnemar_p"], "McNemar"
    return out


def prompt_values(vectors: list[list[float | None]]) -> dict[int, tuple[float, ...]]:
    """Per prompt (by its index), the runs' outcomes: the prompts every run has a value for."""
    return {i: values for i, values in enumerate(zip(*vectors, strict=True)) if None not in values}


def pool(prompts: list[list[tuple[float, float]]]) -> dict[str, Any]:
    """Seeds pooled, the prompt the unit (a prompt's seeds are not independent): each prompt's ``(other,
    run)`` outcomes averaged over its seeds; the mean difference, its 95 % paired-bootstrap interval over
    prompts (``tether compare``'s), and a sign-flip permutation p: the share of :data:`PERMUTATIONS` random
    sign flips of the prompts' differences whose mean is at least as far from 0 (+1 in both counts)."""
    import numpy as np

    from tether.evaluation.compare import paired_bootstrap

    xs = np.array([np.mean([x for x, _ in v]) for v in prompts])
    ys = np.array([np.mean([y for _, y in v]) for v in prompts])
    d = ys - xs
    signs = np.random.default_rng(0).choice(np.array([-1.0, 1.0]), size=(PERMUTATIONS, d.size))
    extreme = np.sum(np.abs(signs @ d) >= abs(d.sum()) - 1e-9)
    if d.size < 2:
        raise ValueError(f"pool: {d.size} prompt(s) in common; a paired test needs at least 2")
    low, high = paired_bootstrap(xs.tolist(), ys.tolist(), n_boot=BOOTSTRAPS)
    return {"n": int(d.size), "run": float(ys.mean()), "other": float(xs.mean()), "difference": float(d.mean()),
            "ci_low": low, "ci_high": high, "p": float((1 + extreme) / (PERMUTATIONS + 1)), "test": "sign-flip"}  # fmt: skip


def matches(c: Claim, rows: list[dict[str, Any]]) -> dict[float, list[tuple[dict[str, Any], dict[str, Any]]]]:
    """The claim's ``(other, run)`` pairs of runs by the run's lr, in seed order: each run of ``c.method``
    in ``c.sweeps`` with the first run of ``c.other_method`` in ``c.other_sweeps`` that shares ``c.match``."""
    out: dict[float, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    mine = [r for r in rows if r["sweep"] in c.sweeps and r["method"] == c.method]
    for r in sorted(mine, key=lambda r: (r["lr"], r.get("seed", 0))):
        other = [o for o in rows if o["sweep"] in c.other_sweeps and o["method"] == c.other_method
                 and o is not r and all(o.get(k) == r.get(k) for k in c.match)]  # fmt: skip
        if other:
            out.setdefault(r["lr"], []).append((other[0], r))
    return out


def claims(outcomes: dict[str, dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each :data:`CLAIMS` entry at each lr its runs have (:func:`matches`): the runs, their mean KL and
    m_θ (the claim's method / the other), and :func:`pooled` on each measure every run has outcomes for."""
    out = []
    for c in CLAIMS:
        for lr, matched in matches(c, rows).items():
            entry: dict[str, Any] = {
                "paper": c.paper, "claim": c.claim, "lr": lr, "seeds": [r.get("seed") for _, r in matched],
                "runs": [f"{r['sweep']}/{r['run']}" for _, r in matched],
                "against": [f"{o['sweep']}/{o['run']}" for o, _ in matched], "measures": {},
                "same_inputs": same_inputs([x for pair in matched for x in pair]),
            }  # fmt: skip
            for key in ("kl", "deviation"):
                vals = [(r["metrics"].get(key), o["metrics"].get(key)) for o, r in matched]
                if all(a is not None and b is not None for a, b in vals):
                    entry[key] = [sum(a for a, _ in vals) / len(vals), sum(b for _, b in vals) / len(vals)]
            for measure in c.measures:
                pairs = [
                    (outcomes[run_id(o)].get(measure), outcomes[run_id(r)].get(measure)) for o, r in matched
                ]
                if (
                    all(a is not None and b is not None for a, b in pairs)
                    and judged_alike(measure, *(x for pair in matched for x in pair))
                    and (res := pooled(pairs))
                ):
                    entry["measures"][measure] = res
            out.append(entry)
    return out


def against(rows: list[dict[str, Any]], r: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The runs ``r`` is compared with besides the start, by name: ``baseline`` (:func:`baseline`), and for
    sDPO's easy → hard split also the random split of the same seed (``random split``)."""
    out = {}
    base = baseline(rows, r)
    if base is not None:
        out["baseline"] = base
    if r["sweep"] == "sdpo_easy_hard":
        rnd = [o for o in rows if o["sweep"] == "sdpo_random" and o.get("seed") == r.get("seed")]
        if rnd:
            out["random split"] = rnd[0]
    return out


def baseline(rows: list[dict[str, Any]], r: dict[str, Any]) -> dict[str, Any] | None:
    """DPO on the same pairs at the same lr and seed (at the same β in a frontier sweep, at DPO's default β
    elsewhere; one-shot DPO for sDPO); SFT for MinorSFT; MinorSFT of the same seed for the small-step SFT
    control; None for a baseline itself."""
    if r["sweep"] == "sft_small_step":
        same = [
            o
            for o in rows
            if o["sweep"] == "minorsft" and o["method"] == "minor_sft" and o.get("seed") == r.get("seed")
        ]
        return same[0] if same else None
    method = "sft" if r["method"] in ("sft", "minor_sft") else "dpo"
    if r["method"] == method and not r["sweep"].startswith("sdpo"):
        return None
    beta = r.get("beta") if r["sweep"].startswith("frontier") else METHODS[method].defaults.get("beta")
    same = [o for o in rows if o["method"] == method and not o["sweep"].startswith("sdpo") and o is not r
            and all(o.get(k) == r.get(k) for k in ("pairs", "lr", "seed"))]  # fmt: skip
    # the same β, then the same sweep, and the pilot's copy of a run last
    same.sort(key=lambda o: (o.get("beta") != beta, o["sweep"] != r["sweep"], o["sweep"] == "pilot"))
    return same[0] if same else None


def pair_set(path: Path) -> dict[str, Any] | None:
    """A pair set's counts (``tether pairs``'s sidecar), its pairs per task family, and how often its chosen
    answer is the right one where the task checker tells the two apart (1.0 for the checker's own)."""
    from tether.data import tasks

    if not path.exists():
        return None
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    apart = [r for r in rows if tasks.check(r, r["chosen"]) != tasks.check(r, r["rejected"])]
    meta = json.loads(path.with_suffix(".meta.json").read_text())
    return {
        "file": path.name,
        "sha256": sha256(path),
        "start": meta["model_weights"][:16],  # the model it was sampled from
        "judge": Path(meta["judge"]).name,
        "samples": meta["samples"],
        "counts": meta["counts"],
        "by_family": dict(sorted(Counter(r["source"] for r in rows).items())),
        "checker_apart": len(apart),
        "checker_agrees": sum(tasks.check(r, r["chosen"]) for r in apart),
    }


SETTINGS = ("model", "dtype", "start_lr", "samples", "heldout", "steps", "batch_size", "max_new_tokens", "lrs",
            "ref_free_lrs")  # fmt: skip
"""The study's arguments, recorded in results.json."""


def settings(args) -> dict[str, Any]:
    return {k: getattr(args, k) for k in SETTINGS}


def study_record(
    args, prior: dict[str, Any] | None = None, prior_outcomes: dict[str, dict[str, Any]] | None = None
):
    """results.json and its outcomes (:data:`OUTCOMES`): the pair sets, the reward model's held-out evaluation,
    every finished run here and in the ``prior`` record (:func:`collect`), and the papers' claims tested on them
    (:func:`claims`, :func:`on_dpo_curve`, :func:`on_dpo_lr_curve`). A test some of whose runs have no
    outcomes keeps the prior record's result (:func:`merged`); what this machine has not made (the pair sets,
    the reward model) is kept from the prior record too."""
    prior = prior or {}
    p = paths(args)
    files = sorted(f for f in (p["root"] / "pairs").glob("*.jsonl") if ".staged" not in f.name)
    if getattr(args, "collect", None):
        keep_pairs(files, Path(args.collect))
    rm = p["rm"] / "eval.json"
    parts = sweeps(args)
    runs, outcomes = collect(args, prior, prior_outcomes)
    lr = parts["frontier"][0].base["train"]["lr"] if "frontier" in parts else None
    by_run = lambda e: e["run"]  # noqa: E731
    record = {
        "settings": settings(args),
        "parts": {**prior.get("parts", {}), **{s.name: part for part, group in parts.items() for s in group}},
        "frontier_lr": lr,
        "pair_sets": merged(prior.get("pair_sets"), [pair_set(f) for f in files], lambda e: (e["file"], e.get("sha256")),
                            measures=""),  # another machine's set of the same name stays: runs trained on it
        "reward_model": json.loads(rm.read_text())["metrics"] if rm.exists() else prior.get("reward_model"),
        "runs": runs,
        "claims": merged(prior.get("claims"), claims(outcomes, runs[1:]), lambda e: (e["claim"], e["lr"])),
        "on_dpo_curve": merged(prior.get("on_dpo_curve"), on_dpo_curve(outcomes, runs[1:], lr) if lr else [], by_run),
        "on_dpo_lr_curve": merged(prior.get("on_dpo_lr_curve"),
                                  on_dpo_lr_curve(outcomes, runs[1:], p["task_pairs"].name), by_run),
    }  # fmt: skip
    return record, outcomes


def merged(prior: list[dict[str, Any]] | None, new: list[dict[str, Any]], key, measures: str = "measures"):
    """``new``'s entries, except where one lost the ``measures`` the ``prior`` record's entry with the same
    ``key`` has (its runs' outcomes were never kept: they were collected before :data:`OUTCOMES` existed, on a
    machine whose run directories are gone); then prior entries ``new`` has none for (in their order)."""
    old = {key(e): e for e in prior or []}
    lost = lambda e: measures and len(old.get(key(e), {}).get(measures, {})) > len(e.get(measures, {}))  # noqa: E731
    out = [{**old[key(e)], "as_recorded": True} if lost(e) else e for e in new]
    seen = {key(e) for e in new}
    return out + [e for k, e in old.items() if k not in seen]


def _delta(r: dict[str, Any], key: str) -> str:
    """``+0.012 [−0.01, +0.04] p=0.31``: a paired difference, its 95 % interval and McNemar's p."""
    d = r.get("paired", {}).get(key)
    if not d or d["difference"] is None:
        return "-"
    p = "" if d.get("mcnemar_p") is None else f" p={d['mcnemar_p']:.2g}"
    return f"{d['difference']:+.3f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}]{p}"


def render(record: dict[str, Any]) -> str:
    """The study's tables (Markdown) from results.json alone: the pair sets, the reward model, one table of
    runs per part of the plan (the start first in each), the learned judge's verdicts, the frontier at equal
    KL and sDPO's γ_ref."""
    sets = [[x["file"], x["judge"], str(x["samples"]), str(x["counts"]["prompts"]), str(x["counts"]["pairs"]),
             str(x["counts"]["tied"]), ", ".join(f"{k} {v}" for k, v in x["by_family"].items()),
             f"{x['checker_agrees']} / {x['checker_apart']}", x.get("sha256", "-"), x.get("start", "-")]
            for x in record["pair_sets"]]  # fmt: skip
    out = [
        *papers_scale._table(["pair set", "judge", "K", "prompts", "pairs", "all tied", "pairs by family",
                              "chosen right where the checker tells them apart", "sha256", "sampled from"], sets),
    ]  # fmt: skip
    rm = record.get("reward_model")
    if rm:
        out += [f"Reward model, held out: pairwise accuracy {rm['reward/accuracy']:.4f}, mean margin "
                f"{rm['reward/margin']:.2f}.", ""]  # fmt: skip
    start, *rows = record["runs"]
    part_of = record["parts"]
    made: dict[tuple[str, ...], list[str]] = {}
    for r in rows:
        i = r.get("inputs") or {}
        made.setdefault(tuple(i.get(k) or "not recorded" for k in ("start", "answers", "pairs")), []).append(
            run_id(r)
        )
    if made:  # a new machine's start can differ in its last bits, and still answer as the recorded one does
        out += ["#### what each run trained from", "", *papers_scale._table(
            ["start (weights' sha256)", "its held-out answers (sha256)", "pair set (sha256)", "runs", "sweeps"],
            [[*k, str(len(v)), ", ".join(dict.fromkeys(x.split("/")[0] for x in v))] for k, v in made.items()])]  # fmt: skip
    head = ["run", "method", "lr", "β", "seed", "success (greedy)", "Δ vs start", "Δ vs baseline",
            "success (T=1)", "Δ vs start", "Δ vs baseline", "KL", "m_θ", "mc", "β·margin, last 10 steps"]  # fmt: skip

    def line(r: dict[str, Any]) -> list[str]:
        m = r["metrics"]
        return [
            f"{r['sweep']}/{r['run']}", r["method"], papers_scale._f(r.get("lr"), "{:g}"),
            papers_scale._f(r.get("beta"), "{:g}"), str(r.get("seed", "-")),
            papers_scale._ci(m, "generation/success"), _delta(r, "success vs start"), _delta(r, "success vs baseline"),
            papers_scale._ci(m, "t1/generation/success"), _delta(r, "t1/success vs start"),
            _delta(r, "t1/success vs baseline"), papers_scale._f(m.get("kl")), papers_scale._f(m.get("deviation")),
            papers_scale._f(m.get("mc/accuracy")),
            papers_scale._f(papers_scale.tail_mean((r.get("series") or {}).get("rewards/margins"))),
        ]  # fmt: skip

    for part in dict.fromkeys(part_of[r["sweep"]] for r in rows if r["sweep"] in part_of):
        lines = [line(start)] + [line(r) for r in rows if part_of.get(r["sweep"]) == part]
        out += [f"#### {part}", "", *papers_scale._table(head, lines)]
    judged = [r for r in [start, *rows] if r["metrics"].get("rm/win_rate/chosen") is not None]
    if judged:  # item 7: the learned judge's own verdict, T = 1
        lines = [[f"{r['sweep']}/{r['run']}", papers_scale._ci(r["metrics"], "rm/win_rate/chosen"),
                  _delta(r, "rm/win_rate/chosen vs start"), _delta(r, "rm/win_rate/chosen vs baseline"),
                  papers_scale._f(r["metrics"].get("rm/judge/reward")), _delta(r, "rm/judge/reward vs baseline")]
                 for r in judged]  # fmt: skip
        out += ["#### judged by the reward model (T = 1)", "", *papers_scale._table(
            ["run", "win rate vs chosen", "Δ vs start", "Δ vs baseline", "mean reward", "Δ vs baseline"], lines)]  # fmt: skip
    lr = record.get("frontier_lr")
    matched = matched_kl(rows, lr) if lr is not None else []
    if matched:
        head = ["KL"] + [f"{m} {k}" for m in FRONTIER for k in ("greedy", "T=1")]
        out += [f"#### the frontier at equal KL (lr {lr:g})", "", *papers_scale._table(head, matched)]
    eps = [r for r in rows if r["method"] == "epsilon_dpo" and (r.get("series") or {}).get("kl/beta")]
    if eps:  # ε-DPO's β along training (its Figure 4): how far the perturbation criterion moved it
        tail = papers_scale.tail_mean
        lines = [[f"{r['sweep']}/{r['run']}", papers_scale._f(r["series"]["kl/beta"][0], "{:.4g}"),
                  papers_scale._f(tail(r["series"]["kl/beta"]), "{:.4g}"),
                  *(papers_scale._f(_mean(r["series"].get(k)), "{:.2f}") for k in ("kl/p_epsilon_steps", "kl/n_epsilon_steps"))]
                 for r in eps]  # fmt: skip
        out += ["#### ε-DPO's β along training", "", *papers_scale._table(
            ["run", "β at step 1", "β, last 10 steps", "pairs with s = +1 (mean over steps)", "pairs with s = −1"], lines)]  # fmt: skip
    staged = [r for r in rows if r.get("stages")]
    if staged:  # sDPO: γ_ref of each stage's reference on its own chunk, and of M_0, M_1 on the last chunk
        lines = [[f"{r['sweep']}/{r['run']}", ", ".join(f"{st['gamma_ref']:.3f}" for st in r["stages"]),
                  ", ".join(f"{g['reference']} {g['gamma_ref']:.3f}" for g in r.get("gamma_last_chunk", [])) or "-",
                  _delta(r, "success vs random split"), _delta(r, "t1/success vs random split")]
                 for r in staged]  # fmt: skip
        out += ["#### sDPO's γ_ref", "",
                *papers_scale._table(["run", "γ_ref per stage (its own chunk)", "γ_ref on the last chunk",
                                      "Δ success vs the random split", "Δ success (T=1) vs the random split"], lines)]  # fmt: skip
    for key, title, by in (
        (
            "on_dpo_curve",
            f"the frontier against DPO's β curve at the same KL, prompt by prompt (lr {papers_scale._f(lr, '{:g}')})",
            "beta",
        ),
        (
            "on_dpo_lr_curve",
            "the table and sDPO against DPO's lr curve at the same KL, prompt by prompt",
            "lr",
        ),
    ):
        if record.get(key):
            out += [f"#### {title}", "", *papers_scale._table(
                ["method", by.replace("beta", "β"), "KL", "DPO's points around it (greedy, T=1)", "success (greedy)",
                 "DPO's curve", "Δ [95 % CI] p", "success (T=1)", "DPO's curve", "Δ [95 % CI] p"],
                [curve_line(c, by) for c in record[key]])]  # fmt: skip
    if record.get("claims"):
        out += ["#### the papers' claims, paired", "", *papers_scale._table(
            ["paper", "claim", "lr", "seeds", "measure", "method's mean", "other's mean", "Δ per seed",
             "Δ, seeds pooled [95 % CI]", "p", "KL (method / other)", "m_θ (method / other)", "inputs"],
            claim_lines(record["claims"]))]  # fmt: skip
    return "\n".join(out)


def _mean(values: list[float | None] | None) -> float | None:
    vals = [v for v in values or [] if v is not None]
    return sum(vals) / len(vals) if vals else None


def _p(p: float) -> str:
    """A p-value; a permutation p at its floor (1 / (draws + 1)) as ``<1e-4``."""
    return "<1e-4" if p < 1e-4 else f"{p:.2g}"


def curve_line(c: dict[str, Any], by: str) -> list[str]:
    """A point read on DPO's curve (:func:`on_curve`): the two DPO runs around its KL with their own greedy
    and T = 1 success, then per measure the point, DPO's curve at its KL and the paired Δ."""
    method = c["method"] + (" (as recorded)" if c.get("as_recorded") else "")  # an earlier run's reading
    head = [method, f"{c[by]:g}", f"{c['kl']:.2f}"]
    if "outside" in c:
        span = "no DPO run" if c["outside"] is None else f"{c['outside'][0]:.2f}–{c['outside'][1]:.2f}"
        return [*head, f"outside DPO's KL range ({span}): not extrapolated", *["-"] * 6]
    values = c.get("dpo_values", {})
    g, t = values.get("generation/success", [None, None]), values.get("t1/generation/success", [None, None])
    around = " – ".join(f"{by.replace('beta', 'β')} {x:g} ({papers_scale._f(a)}, {papers_scale._f(b)})"
                        for x, a, b in zip(c[f"dpo_{by}"], g, t, strict=True))  # fmt: skip
    cells = [around]
    for key in ("success", "t1/success"):
        m = c["measures"].get(key)
        cells += ["-"] * 3 if m is None else [papers_scale._f(m["run"]), papers_scale._f(m["other"]),
                  f"{m['difference']:+.3f} [{m['ci_low']:+.3f}, {m['ci_high']:+.3f}] p={_p(m['p'])}"]  # fmt: skip
    return [*head, *cells]


MEASURES = {"success": "success (greedy)", "t1/success": "success (T=1)", "rm/win_rate/chosen": "RM win rate vs chosen",
            "rm/judge/reward": "RM mean reward"}  # fmt: skip


def claim_lines(entries: list[dict[str, Any]]) -> list[list[str]]:
    """A row per claim, lr and measure: the two sides' means over seeds, Δ at each seed, Δ pooled with its
    interval and p (McNemar's exact for one seed, sign-flip over prompts for several), mean KL and m_θ of
    each side (the claim's method / the other)."""
    lines = []
    for c in entries:
        both = {
            k: " / ".join(papers_scale._f(v) for v in c[k]) if k in c else "-" for k in ("kl", "deviation")
        }
        for key, m in c["measures"].items():
            lines.append([
                c["paper"], c["claim"], f"{c['lr']:g}", ", ".join(str(x) for x in c["seeds"]), MEASURES[key],
                papers_scale._f(m["run"]), papers_scale._f(m["other"]),
                ", ".join(f"{d:+.3f}" for d in m["per_seed"]),
                f"{m['difference']:+.3f} [{m['ci_low']:+.3f}, {m['ci_high']:+.3f}]", f"{_p(m['p'])} ({m['test']})",
                both["kl"], both["deviation"],
                INPUTS.get(c.get("same_inputs"), c.get("same_inputs") or "-") + (" (as recorded)" if c.get("as_recorded") else ""),
            ])  # fmt: skip
    return lines


INPUTS = {True: "same", False: "differ"}
"""A claim's *inputs* column from a record made before :func:`same_inputs` said same/alike/differ."""


def frontier_points(runs: list[dict[str, Any]], lr: float) -> dict[str, list[dict[str, Any]]]:
    """ε-DPO's Figure 5: per frontier method, its seed-0 runs at ``lr`` on the checker's pairs (the frontier
    sweep's β values and the table's run at the default β; for DPO the pilot's copy of that run until the
    table has its own), in KL order."""
    out: dict[tuple[str, Any], dict[str, Any]] = {}
    sweeps = ("pilot", "table", "table_tr_dpo")  # in that order: a later copy of a (method, β) replaces it
    for r in sorted(runs, key=lambda r: sweeps.index(r["sweep"]) if r["sweep"] in sweeps else -1):
        ok = r["sweep"] == f"frontier_{r['method']}" or r["sweep"] in sweeps
        if ok and r["method"] in FRONTIER and r.get("lr") == lr and r.get("seed") == 0:
            out[(r["method"], r.get("beta"))] = r
    by: dict[str, list[dict[str, Any]]] = {}
    for (method, _), r in out.items():
        by.setdefault(method, []).append(r)
    return {m: sorted(rs, key=lambda r: r["metrics"].get("kl") or 0.0) for m, rs in by.items()}


def at_kl(points: list[tuple[float, float]], kl: float) -> float | None:
    """A curve's value at ``kl``, linearly interpolated between its two points around it (None outside the
    KL range its points span: never extrapolated)."""
    pts = sorted(points)
    for (x0, y0), (x1, y1) in pairwise(pts):
        if x0 <= kl <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (kl - x0) / (x1 - x0)
    return pts[0][1] if len(pts) == 1 and pts[0][0] == kl else None


def matched_kl(runs: list[dict[str, Any]], lr: float) -> list[list[str]]:
    """The frontier read at equal KL: at the KL of each DPO point, every frontier method's greedy and T = 1
    success interpolated along its β curve (``-`` where that KL is outside the method's range)."""
    front = frontier_points(runs, lr)
    lines = []
    for ref in front.get("dpo", []):
        kl = ref["metrics"].get("kl")
        if kl is None:
            continue
        cells = [f"{kl:.2f} (DPO β={ref['beta']:g})"]
        for method in FRONTIER:
            for key in ("generation/success", "t1/generation/success"):
                pts = [(r["metrics"]["kl"], r["metrics"][key]) for r in front.get(method, [])
                       if r["metrics"].get("kl") is not None and r["metrics"].get(key) is not None]  # fmt: skip
                v = at_kl(pts, kl) if pts else None
                cells.append(papers_scale._f(v))
        lines.append(cells)
    return lines


def on_curve(
    outcomes: dict[str, dict[str, Any]], curve: list[dict[str, Any]], points: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each of ``points`` against ``curve`` (DPO's runs along β or lr) at the point's own KL, prompt by
    prompt: the curve's per-prompt outcomes are interpolated between its two runs whose KLs bracket the
    point's (the weights :func:`at_kl` gives their means; a point outside the curve's KL range is left out,
    never extrapolated), then paired with the point's outcomes (:func:`pool`)."""
    line = sorted(
        ((r["metrics"]["kl"], r) for r in curve if r["metrics"].get("kl") is not None), key=lambda x: x[0]
    )
    out = []
    for r in points:
        kl = r["metrics"].get("kl")
        method = r["sweep"] if r["sweep"].startswith("sdpo") else r["method"]  # sDPO's runs are DPO's method
        bracket = next(((a, b) for a, b in pairwise(line) if kl is not None and a[0] <= kl <= b[0]), None)
        if bracket is None:  # never extrapolated: shown as outside the curve's KL range
            out.append({"method": method, "lr": r["lr"], "beta": r["beta"], "kl": kl,
                        "run": f"{r['sweep']}/{r['run']}", "outside": [line[0][0], line[-1][0]] if line else None})  # fmt: skip
            continue
        (k0, r0), (k1, r1) = bracket
        w = 0.0 if k1 == k0 else (kl - k0) / (k1 - k0)
        entry: dict[str, Any] = {
            "method": method, "lr": r["lr"], "beta": r["beta"], "kl": kl, "run": f"{r['sweep']}/{r['run']}",
            "dpo": [f"{x['sweep']}/{x['run']}" for x in (r0, r1)], "dpo_beta": [r0["beta"], r1["beta"]],
            "dpo_lr": [r0["lr"], r1["lr"]], "weight": w, "measures": {},
            "dpo_values": {key: [x["metrics"].get(key) for x in (r0, r1)]
                           for key in ("generation/success", "t1/generation/success")},
        }  # fmt: skip
        for measure in ("success", "t1/success"):
            vectors = [outcomes.get(run_id(x), {}).get(measure) for x in (r0, r1, r)]
            if None not in vectors:
                prompts = [[((1 - w) * a + w * b, c)] for a, b, c in prompt_values(vectors).values()]
                entry["measures"][measure] = pool(prompts)
        out.append(entry)
    return out


def on_dpo_curve(
    outcomes: dict[str, dict[str, Any]], rows: list[dict[str, Any]], lr: float
) -> list[dict[str, Any]]:
    """ε-DPO's Figure 5 read prompt by prompt: each frontier point of ε-DPO, β-DPO and TR-DPO against DPO's
    β curve at ``lr`` (:func:`on_curve`)."""
    front = frontier_points(rows, lr)
    return on_curve(outcomes, front.get("dpo", []), [r for m in FRONTIER[1:] for r in front.get(m, [])])


def dpo_lr_curve(rows: list[dict[str, Any]], pairs: str) -> list[dict[str, Any]]:
    """DPO at its default β on the checker's pairs, seed 0, at every lr run (the pilot's, the table's and
    the reference-free lrs; the table's run where the pilot has the same lr)."""
    beta = METHODS["dpo"].defaults.get("beta")
    runs = [r for r in rows if r["method"] == "dpo" and r["sweep"] in ("pilot", *TABLE_RUNS) and r.get("seed") == 0
            and r.get("beta") == beta and r.get("pairs") == pairs]  # fmt: skip
    by_lr: dict[float, dict[str, Any]] = {}
    for r in sorted(runs, key=lambda r: r["sweep"] != "pilot"):  # the table's copy last: it wins
        by_lr[r["lr"]] = r
    return list(by_lr.values())


def on_dpo_lr_curve(
    outcomes: dict[str, dict[str, Any]], rows: list[dict[str, Any]], pairs: str
) -> list[dict[str, Any]]:
    """The comparators' table and sDPO read at equal KL, prompt by prompt: each seed-0 table or sDPO run
    against DPO's lr curve on the same ``pairs`` (:func:`dpo_lr_curve`) at its own KL (:func:`on_curve`).
    sDPO's stages move it further than one-shot DPO at the same lr, so its equal-KL reading is on this curve."""
    curve = dpo_lr_curve(rows, pairs)
    read = ("table", "table_tr_dpo", "table_ref_free", "sdpo_easy_hard", "sdpo_random")
    points = [r for r in rows if r["sweep"] in read and r.get("seed") == 0 and r not in curve]
    return on_curve(outcomes, curve, points)


def plots(record: dict[str, Any], lr: float | None, out: Path) -> list[Path]:
    """The page's figures from results.json: the frontier (greedy and T = 1 success against KL, points joined
    in KL order, 95 % intervals, the start as a line), ε-DPO's β along training (log axis), MinorSFT's m_θ
    along training against SFT's."""
    from tether.evaluation.report import _figure

    out.mkdir(parents=True, exist_ok=True)
    start, *runs = record["runs"]
    written = []
    front = frontier_points(runs, lr) if lr is not None else {}
    if front:
        fig = _figure((10.0, 4.2))
        axes = fig.subplots(1, 2)
        for ax, key, label in zip(axes, ("generation/success", "t1/generation/success"),
                                  ("held-out task success, greedy", "held-out task success, one sample at T = 1"),
                                  strict=True):  # fmt: skip
            for i, (method, rs) in enumerate(sorted(front.items())):
                pts = [
                    r for r in rs if r["metrics"].get(key) is not None and r["metrics"].get("kl") is not None
                ]
                xs, ys = [r["metrics"]["kl"] for r in pts], [r["metrics"][key] for r in pts]
                err = [[y - r["metrics"].get(f"{key}/ci_low", y) for y, r in zip(ys, pts, strict=True)],
                       [r["metrics"].get(f"{key}/ci_high", y) - y for y, r in zip(ys, pts, strict=True)]]  # fmt: skip
                ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, color=f"C{i}", label=method)
                for x, y, r in zip(xs, ys, pts, strict=True):
                    ax.annotate(
                        f"β={r['beta']:g}", (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points"
                    )
            if start["metrics"].get(key) is not None:
                ax.axhline(start["metrics"][key], color="gray", ls="--", label="the SFT start")
            ax.set(xlabel="KL(π‖π_start), sampled", ylabel=label)
            ax.legend(fontsize=7)
        fig.suptitle(f"ε-DPO Figure 5 on the on-policy pairs (lr {lr:g}, seed 0)")
        fig.savefig(out / "frontier.png", dpi=120)
        written.append(out / "frontier.png")
    eps = [r for r in runs if r["method"] == "epsilon_dpo" and r.get("series", {}).get("kl/beta")]
    if eps:
        fig = _figure((6.5, 4.0))
        ax = fig.subplots()
        for r in eps:
            ax.plot(
                range(1, len(r["series"]["kl/beta"]) + 1),
                r["series"]["kl/beta"],
                label=f"{r['sweep']}/{r['run']}",
            )
        ax.set_yscale("log")
        ax.set(xlabel="step", ylabel="β (log scale)", title="ε-DPO: β along training")
        ax.legend(fontsize=6)
        fig.savefig(out / "epsilon_beta.png", dpi=120)
        written.append(out / "epsilon_beta.png")
    along = [r for r in runs if r.get("checkpoints") and r["method"] in ("sft", "minor_sft")]
    if along:
        fig = _figure((6.5, 4.0))
        ax = fig.subplots()
        for r in along:
            pts = [
                (c["step"], c.get("deviation")) for c in r["checkpoints"] if c.get("deviation") is not None
            ]
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=r["method"])
        ax.set(
            xlabel="step",
            ylabel="deviation m_θ (nats per token)",
            title="MinorSFT Figure 1: m_θ along training",
        )
        ax.legend(fontsize=8)
        fig.savefig(out / "minor_sft_deviation.png", dpi=120)
        written.append(out / "minor_sft_deviation.png")
    return written


MARKERS = ("<!-- protocol-tables -->\n", "<!-- /protocol-tables -->")


def write_block(page: Path, block: str) -> None:
    """``block`` between the page's :data:`MARKERS` (docs/results.md; tests/test_docs.py keeps the two equal)."""
    text = page.read_text()
    if any(m not in text for m in MARKERS):
        raise SystemExit(f"--page {page}: no {MARKERS[0].strip()} ... {MARKERS[1]} block")
    head, rest = text.split(MARKERS[0], 1)
    tail = rest.split(MARKERS[1], 1)[1]
    page.write_text(head + MARKERS[0] + block.strip() + "\n" + MARKERS[1] + tail)


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
        "--lrs",
        nargs="*",
        default=["5e-06", "1e-05"],
        help="the two learning rates of the later parts, the frontier at the first (the pilot's choice; see "
        "docs/results.md)",
    )
    ap.add_argument(
        "--ref-free-lrs", nargs="*", default=["2e-05"], help="ASFT, ORPO (and DPO) also at these lrs"
    )
    ap.add_argument("--plan", action="store_true", help="print every sweep, its grid and runs; run nothing")
    ap.add_argument("--status", action="store_true")
    ap.add_argument(
        "--collect",
        metavar="OUT",
        help="write the finished runs' records to OUT (results.json), "
        "with those OUT already holds that are not here; their per-prompt outcomes beside it",
    )
    ap.add_argument("--record", default=str(RECORD), help="a run this record holds is not run again unless its "
                    "directory is here ('' to run every run; default: the committed record)")  # fmt: skip
    ap.add_argument(
        "--page", metavar="MD", help="with --collect: write the tables between MD's protocol-tables markers"
    )
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args()
    p = paths(args)
    if args.collect:
        out = Path(args.collect)
        prior = json.loads(out.read_text()) if out.exists() else None
        record, outcomes = study_record(args, prior, read_outcomes(out))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
        write_outcomes(out, outcomes)
        print(render(record))
        if args.page:
            write_block(Path(args.page), render(record))
        lr = float(args.lrs[0]) if args.lrs else None
        for path in plots(record, lr, Path(args.collect).parent):
            print(f"plot: {path}")
        return
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
            print(f"{name}: {(pair_set(p[name]) or {}).get('counts', 'left')}")
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
            eval_start(args, judged=part == "judged")  # the start evaluated as the runs are (once)
            if part == "sdpo":
                part_staged_data(args)
            for s, seed in seed_major(planned[part]):
                run_sweep(args, s, seed)
        print(f"== part {part}: {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
