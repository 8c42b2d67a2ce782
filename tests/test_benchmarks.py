"""benchmarks/papers_scale.py end to end on a tiny model: every part's sweeps train, evaluate, resume and
collect into results.json, the tables and the plots; its arguments are checked before any run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tiny import benchmark_module, tiny_model_dir

REPO = Path(__file__).resolve().parents[1]


def scale(tmp: Path, model: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "benchmarks" / "papers_scale.py"), "--model", str(model)]
    cmd += ["--runs", str(tmp / "runs"), "--steps", "4", "--sft-steps", "4", "--heldout", "8", "--quiet"]
    cmd += ["--sft-lrs", "1e-05", "--start-lr", "1e-05", "--pair-lrs", "5e-06", "--frontier-lr", "5e-06"]
    cmd += [*extra]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "TETHER_CACHE": str(tmp / "c"),
    }
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
def test_papers_scale_on_a_tiny_model(tmp_path):
    """Issue 14's runner end to end: the SFT part gives the start of every preference part, a part run
    again trains nothing again, and the results render to every table and plot."""
    model = tiny_model_dir(tmp_path / "model")
    first = scale(tmp_path, model, "--parts", "sft")
    assert first.returncode == 0, first.stderr[-3000:]
    runs = tmp_path / "runs"
    heldout = (runs / "data" / "sft.heldout.jsonl").read_text().splitlines()
    assert len(heldout) == 8  # the held-out split grown (here shrunk) by --heldout; training rows checked
    before = (runs / "sft" / "sft_lr=1e-05" / "metrics.jsonl").stat().st_mtime
    rest = scale(tmp_path, model, "--parts", "sft", "pairs", "frontier", "asft", "sdpo")
    assert rest.returncode == 0, rest.stderr[-3000:]
    assert (runs / "sft" / "sft_lr=1e-05" / "metrics.jsonl").stat().st_mtime == before  # kept, not retrained
    start = str(runs / "sft" / "sft_lr=1e-05" / "final")
    for sweep in ("with_reference", "reference_free", "frontier_dpo", "sdpo"):
        assert yaml.safe_load((runs / "configs" / f"{sweep}.yaml").read_text())["model"]["name"] == start
    fams = json.loads((runs / "sft" / "sft_lr=1e-05" / "eval.json").read_text())["metrics"]
    order = yaml.safe_load((runs / "configs" / "sdpo.yaml").read_text())["stages"]["order"]
    assert order == sorted(order, key=lambda f: (-fams[f"generation/success/{f}"], f))  # easy → hard
    out = tmp_path / "out" / "results.json"
    done = scale(tmp_path, model, "--collect", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())
    count = {}
    for r in rows:
        count[r["sweep"]] = count.get(r["sweep"], 0) + 1
        assert r["metrics"]["generation/success/ci_low"] <= r["metrics"]["generation/success"]
    assert count == {
        "sft": 3, "sft_seed1": 2, "with_reference": 7, "reference_free": 6, "tr_dpo_soft": 1, "tr_dpo_hard": 1,
        "frontier_dpo": 2, "frontier_epsilon_dpo": 2, "frontier_beta_dpo": 2, "frontier_tr_dpo": 2,
        "pairs_seed1": 5, "asft_from_instruct": 1, "sdpo": 1, "sdpo_seed1": 1,
    }  # fmt: skip
    # each method's point at its default β is its comparator run
    frontier = benchmark_module("papers_scale").frontier_rows(rows)
    for method in ("dpo", "epsilon_dpo", "beta_dpo", "tr_dpo"):
        betas = sorted(r["beta"] for r in frontier if r["method"] == method and r["seed"] == 0)
        assert betas == [0.01, 0.1, 0.5], method
    seeds = benchmark_module("papers_scale").seed_rows(rows)
    assert [(label, sorted(runs)) for label, _, runs in seeds] == [
        (m, [0, 1]) for m in ("asft", "dpo", "epsilon_dpo", "minor_dpo", "minor_sft", "orpo", "sdpo", "sft")
    ]
    sdpo = next(r for r in rows if r["sweep"] == "sdpo")
    assert len(sdpo["stages"]) == 4 and len(sdpo["gamma_last_chunk"]) == 4
    assert any(r.get("checkpoints") for r in rows if r["method"] == "epsilon_dpo")  # evaluated, then deleted
    assert not list(runs.glob("**/checkpoints")), "a finished run's checkpoints are deleted"
    for title in (
        "MinorSFT vs SFT",
        "Every comparator",
        "KL–performance frontier",
        "sDPO vs one-shot",
        "ASFT vs",
        "The headline rows at two seeds",
    ):
        assert f"### {title}" in done.stdout, title
    for png in ("frontier", "epsilon_beta", "along_training", "likelihood_dynamics", "minor_sft_deviation"):
        assert (tmp_path / "out" / f"{png}.png").stat().st_size > 1000, png
    status = scale(tmp_path, model, "--status")
    for name, n in count.items():  # sDPO's run counts though its summaries are its stages'
        assert any(
            line.split() == [line.split()[0], name, "finished:", str(n)]
            for line in status.stdout.splitlines()
        ), name
    # runs deleted from the disk: --methods trains one of them again, --collect keeps the others' rows
    kept = (runs / "with_reference" / "dpo_lr=5e-06" / "metrics.jsonl").stat().st_mtime
    shutil.rmtree(runs / "with_reference" / "kto_lr=5e-06")
    shutil.rmtree(runs / "sdpo")
    again = scale(tmp_path, model, "--parts", "pairs", "--methods", "kto")
    assert again.returncode == 0, again.stderr[-3000:]
    assert (runs / "with_reference" / "kto_lr=5e-06" / "eval.json").exists()
    assert (runs / "with_reference" / "dpo_lr=5e-06" / "metrics.jsonl").stat().st_mtime == kept
    redone = scale(tmp_path, model, "--collect", str(out))
    assert redone.returncode == 0, redone.stderr[-3000:]
    rows2 = json.loads(out.read_text())
    assert [(r["sweep"], r["run"]) for r in rows2] == [(r["sweep"], r["run"]) for r in rows]
    assert next(r for r in rows2 if r["sweep"] == "sdpo") == sdpo  # its run is gone: the old row kept


@pytest.mark.slow
def test_papers_scale_learning_rates_are_read_as_numbers(tmp_path):
    """``--frontier-lr 5e-6`` is the grid's ``5e-06`` (the runs' names are spelled as in the grid); a value
    outside its grid is one line and exit 2, before anything runs."""
    model = tmp_path / "no-model"  # --status and the argument checks load no model
    ok = scale(tmp_path, model, "--frontier-lr", "5e-6", "--start-lr", "0.00001", "--status")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "frontier_dpo" in ok.stdout
    for flag, value, grid in (("--frontier-lr", "2e-05", "--pair-lrs"), ("--start-lr", "4e-05", "--sft-lrs")):
        bad = scale(tmp_path, model, flag, value, "--status")
        assert bad.returncode == 2 and f"{flag} {value}: not one of {grid}" in bad.stderr, bad.stderr
        assert "Traceback" not in bad.stderr
    bad = scale(tmp_path, model, "--methods", "ktoo")
    assert bad.returncode == 2 and "--methods: unknown 'ktoo' (did you mean 'kto'?" in bad.stderr, bad.stderr
    bad = scale(tmp_path, model, "--sweeps", "reference_fre")
    assert (
        bad.returncode == 2
        and "--sweeps: unknown 'reference_fre' (did you mean 'reference_free'?" in bad.stderr
    ), bad.stderr


def test_end_to_end_ratios_are_same_round_and_the_sweep_shares_one_precompute():
    """end_to_end.py's summary: each ratio to TRL pairs runs of the same round; tether's β sweep is its first
    job plus three cache-reading jobs, TRL's four whole jobs; a failed round is left out."""
    e2e = benchmark_module("end_to_end")

    def job(wall, rss, pre=None):
        return {
            "wall_s": wall,
            "peak_rss_mb": rss,
            "precompute_s": pre,
            "step_seconds": [1.0],
            "losses": [0.7],
        }

    work = {"examples": 4, "positions_per_step_before": 100.0, "positions_per_step_after": 50.0}
    rounds = [
        {
            "trl": job(60, 4000),
            "tether-precomputed": job(20, 2000, 5),
            "tether-precomputed/cached": job(10, 2000),
        },
        {
            "trl": job(90, 4000),
            "tether-precomputed": job(30, 1000, 5),
            "tether-precomputed/cached": job(20, 1000),
        },
        {"trl": {"error": "exit code 1", "wall_s": 1}, "tether-precomputed": job(1, 1)},
    ]
    s = e2e.shape_summary("synthetic", {"work": work, "rounds": rounds}, 1e11, 1000, 4)
    t = s["tether-precomputed"]
    assert t["speedup"] == [3.0, 3.0] and t["memory"] == [0.5, 0.25]
    assert t["sweep_s"] == [50, 90]
    assert t["sweep_speedup"] == [240 / 50, 360 / 90]
    assert s["trl"]["sweep_s"] == [240, 360]
    assert t["step_mfu"] == 6 * 1000 * 50 / 1.0 / 1e11  # packed positions, no reference forward
    assert s["trl"]["step_mfu"] == 8 * 1000 * 100 / 1.0 / 1e11  # padded rows + the reference forward
    report = {
        "settings": {"betas": [0.1, 0.01, 0.05, 0.5], "batch_size": 4, "configs": ["trl", "tether-precomputed"],
                     "rounds": 3, "max_length": 512},
        "machine": {"cores": 2, "cpu": "test", "loadavg": [0.0]},
        "shapes": {"synthetic": {"work": work, "rounds": rounds, "summary": s}},
    }  # fmt: skip
    text = e2e.markdown(report)
    assert (
        "| tether-precomputed | 20 | 3.00× (3.00–3.00) | 70 | 4.40× (4.00–4.80) |" in text
        and "0.38× (0.25–0.50)" in text
    )
