"""benchmarks/papers.py end to end on a tiny model: every comparison's run trains in its own process, is
evaluated, lands in results.json and the tables, and ``--only`` reruns one run keeping the others."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tiny import tiny_model_dir

REPO = Path(__file__).resolve().parents[1]
RUNS = ["sft", "minor_sft", "minor_sft_same_lr", "sft_dpo", "dpo", "asft", "orpo", "epsilon_dpo", "sdpo"]


def papers(tmp: Path, model: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(REPO / "benchmarks" / "papers.py"), "--model", str(model), "--steps", "8"]
    cmd += ["--eval-samples", "2", "--runs", str(tmp / "runs"), "--out", str(tmp / "out"), "--quiet", *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)


@pytest.mark.slow
def test_papers_script_on_a_tiny_model(tmp_path):
    model = tiny_model_dir(tmp_path / "model")
    proc = papers(tmp_path, model)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["run"] for r in rows] == RUNS
    by = {r["run"]: r for r in rows}
    for r in rows:
        assert r["eval"]["metrics"]["generation/n"] == 2, r["run"]
        assert r["peak_rss_mb"] > 0 and r["step_seconds"] > 0
    assert by["minor_sft_same_lr"]["lr"] == by["sft"]["lr"] == 1e-5 and by["minor_sft"]["lr"] == 2e-5
    assert "mc/accuracy" in by["sft"]["mc"]["metrics"]
    assert len(by["sdpo"]["stages"]) == 4
    last = by["sdpo"]["gamma_last_chunk"]
    assert [g["reference"] for g in last] == ["M_0", "M_1", "M_2", "M_3"]
    # M_3 on the last chunk is stage 4's own gamma_ref: the same reference on the same pairs.
    assert last[-1]["gamma_ref"] == pytest.approx(by["sdpo"]["stages"][-1]["gamma_ref"], abs=1e-4)
    assert by["epsilon_dpo"]["train"]["kl/beta"] != 0.1  # β was re-centred
    tables = (tmp_path / "out" / "tables.md").read_text()
    for title in ("MinorSFT vs SFT", "ASFT vs DPO vs ORPO", "ε-DPO vs DPO", "sDPO vs DPO"):
        assert f"### {title}" in tables
    assert tables.count("| starting model |") == 4
    for png in ("deviation", "frontier", "epsilon_dpo", "gamma_ref", "training"):
        assert (tmp_path / "out" / f"{png}.png").is_file(), png
    printed = subprocess.run(
        [
            sys.executable,
            str(REPO / "benchmarks" / "papers.py"),
            "--table",
            str(tmp_path / "out" / "results.json"),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert printed.strip() == tables.strip()

    before = {r["run"]: r["seconds"] for r in rows}
    proc = papers(tmp_path, model, "--only", "asft")
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert [r["run"] for r in again] == RUNS  # the other runs' results are kept, in plan order
    changed = [r["run"] for r in again if r["seconds"] != before[r["run"]]]
    assert changed == ["asft"]
    assert "warning" not in proc.stderr
    assert by["asft"]["settings"]["steps"] == 8
    other = papers(tmp_path, model, "--only", "orpo", "--eval-samples", "1")
    assert other.returncode == 0 and "warning: kept runs" in other.stderr  # mixed settings are flagged
    bad = papers(tmp_path, model, "--only", "asfd")
    assert bad.returncode == 2 and "unknown run(s) ['asfd']" in bad.stderr
