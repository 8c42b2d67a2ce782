"""``tether pairs``: one pair per prompt picked by the judge's scores (ties, gaps, empty samples), the
prompt's fields and the provenance kept, the sidecar, determinism, resume (in process and after a real
SIGKILL) equal to an uninterrupted run byte for byte, and the file training every pairs method and KTO."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_judge import judge_dir

import tether.data.tasks as tasks
import tether.evaluation.pairs as pairs_mod
from tether.cli import main as cli_main
from tether.config import from_dict
from tether.errors import TetherError
from tether.evaluation.judge import load_judge, score
from tether.evaluation.pairs import PairsOptions, build_pairs, meta_path, pick
from tether.methods.registry import METHODS
from tether.training.job import train, validate

from tiny import pair_rows, tiny_model_dir, write_jsonl

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    rows = pair_rows(12)
    for r in rows:  # the checker reads the first integer: "1" is right now and then for a random model
        r["source"], r["answer"] = "arithmetic", "1"
    return {
        "root": root,
        "model": tiny_model_dir(root / "model"),
        "judge": judge_dir(root / "judge"),
        "prompts": write_jsonl(root / "prompts.jsonl", rows),
        "rows": rows,
    }


def _opts(**kw) -> PairsOptions:
    return PairsOptions(**{"samples": 4, "max_new_tokens": 8, "batch_size": 3, "progress": False, **kw})


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_pick_chosen_highest_rejected_lowest_first_index_wins_ties():
    assert pick([0.1, 0.5, 0.5, -1.0, -1.0], list("abcde"), 0.0) == (1, 3)
    assert pick([1.0, 1.0, 1.0], list("abc"), 0.0) == "tied"
    assert pick([1.0, 0.0, 2.0], ["a", "b", " "], 0.0) == (0, 1)  # an empty text is never picked
    assert pick([1.0, 0.0, 2.0], ["a", "", " "], 0.0) == "empty"
    assert pick([1.0, 0.9], ["a", "b"], 0.5) == "gap"
    assert pick([1.0, 0.5], ["a", "b"], 0.5) == (0, 1)  # a gap equal to --min-gap is kept
    assert pick([1.0, 0.0, 1.0], ["a", "b", "a"], 0.0) == (0, 1)
    assert pick([1.0, 0.5], ["a", "a"], 0.0) == "tied"  # one text twice is no pair


def test_reward_model_pairs_scores_and_provenance(env, tmp_path):
    out = tmp_path / "pairs.jsonl"
    res = build_pairs(str(env["model"]), str(env["prompts"]), out, _opts(judge=str(env["judge"])))
    rows = _lines(out)
    meta = json.loads(meta_path(out).read_text())
    assert meta_path(out).name == "pairs.meta.json" and not out.with_name("pairs.jsonl.partial").exists()
    assert meta["counts"]["pairs"] == len(rows) > 6 and meta["counts"]["prompts"] == 12
    assert meta["counts"]["pairs"] + meta["counts"]["dropped"] == 12 == res.meta["counts"]["prompts"]
    assert meta["model_weights"] and meta["judge_weights"] and meta["temperature"] == 0.8
    judge = load_judge(str(env["judge"]), __import__("torch").device("cpu"))
    by_prompt = {r["prompt"]: r for r in env["rows"]}
    for row in rows:
        src, prov = by_prompt[row["prompt"]], row["provenance"]
        assert row["source"] == "arithmetic" and row["answer"] == "1"  # the prompt's fields survive
        texts, scores = prov["samples"], prov["scores"]
        assert len(texts) == 4 and row["chosen"] == texts[prov["chosen_index"]]
        assert row["rejected"] == texts[prov["rejected_index"]]
        ok = [k for k, t in enumerate(texts) if t.strip()]
        assert scores[prov["chosen_index"]] == max(scores[k] for k in ok)
        assert scores[prov["rejected_index"]] == min(scores[k] for k in ok)
        again = score(judge, [src["prompt"]] * 4, texts, desc="t")  # the judge, scored independently
        assert again == pytest.approx(scores, abs=1e-5)


def test_tasks_judge_scores_are_the_checker(env, tmp_path):
    out = tmp_path / "t.jsonl"
    build_pairs(str(env["model"]), str(env["prompts"]), out, _opts(temperature=1.0, samples=6))
    meta = json.loads(meta_path(out).read_text())
    rows = _lines(out)
    assert meta["judge"] == "tasks" and meta["counts"]["tied"] > 0  # a random model: mostly all wrong
    assert meta["counts"]["pairs"] == len(rows) >= 1
    for row in rows:
        prov = row["provenance"]
        assert prov["scores"] == [float(tasks.check(row, t)) for t in prov["samples"]]
        assert tasks.check(row, row["chosen"]) and not tasks.check(row, row["rejected"])


def test_deterministic_and_resumed_in_process_equal_byte_for_byte(env, tmp_path, monkeypatch):
    kw = {"judge": str(env["judge"]), "batch_size": 2}
    whole = tmp_path / "whole.jsonl"
    build_pairs(str(env["model"]), str(env["prompts"]), whole, _opts(**kw))
    again = tmp_path / "again.jsonl"
    build_pairs(str(env["model"]), str(env["prompts"]), again, _opts(**kw))
    assert again.read_bytes() == whole.read_bytes()
    other = tmp_path / "other.jsonl"
    build_pairs(str(env["model"]), str(env["prompts"]), other, _opts(**kw, seed=1))
    assert other.read_bytes() != whole.read_bytes()

    out = tmp_path / "cut.jsonl"
    real, calls = pairs_mod._append, []

    def dies_after_two(path, line):
        if len(calls) == 2:
            raise KeyboardInterrupt  # a stop between batches
        calls.append(1)
        real(path, line)

    monkeypatch.setattr(pairs_mod, "_append", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        build_pairs(str(env["model"]), str(env["prompts"]), out, _opts(**kw))
    monkeypatch.setattr(pairs_mod, "_append", real)
    partial = out.with_name("cut.jsonl.partial")
    assert not out.exists() and len(partial.read_text().splitlines()) == 3  # the header, two batches
    with pytest.raises(TetherError, match=r"other settings \(temperature\)"):
        build_pairs(str(env["model"]), str(env["prompts"]), out, _opts(**kw, temperature=0.5))
    with partial.open("ab") as f:
        f.write(b'{"prompts": [{"i": 0, "te')  # a line torn by a kill
    res = build_pairs(str(env["model"]), str(env["prompts"]), out, _opts(**kw))
    assert res.resumed_batches == 2 and not partial.exists()
    assert out.read_bytes() == whole.read_bytes()
    assert meta_path(out).read_bytes() == meta_path(whole).read_bytes()


def _train_config(root: Path, model: Path, data: Path, method: str) -> dict:
    return {
        "model": {"name": str(model)},
        "data": {"train": str(data), "max_length": 96},
        "method": {"name": method},
        "reference": {"cache_dir": str(root / "cache")},
        "train": {
            "output_dir": str(root / "runs" / method),
            "batch_size": 2,
            "max_steps": 2,
            "progress": False,
        },
    }


def test_the_file_trains_every_pairs_method_and_kto(env, tmp_path):
    out = tmp_path / "pairs.jsonl"
    build_pairs(str(env["model"]), str(env["prompts"]), out, _opts(judge=str(env["judge"])))
    takes_pairs = [n for n, m in METHODS.items() if m.data == "pairs" or m.split_pairs]
    assert "dpo" in takes_pairs and "kto" in takes_pairs
    for name in takes_pairs:  # every pairs method accepts the file (data checked, no weights)
        validate(from_dict(_train_config(tmp_path, env["model"], out, name)))
    for name in ("dpo", "kto"):
        result = train(from_dict(_train_config(tmp_path, env["model"], out, name)))
        assert result.steps == 2


@pytest.mark.slow
def test_every_pairs_method_trains_on_it(env, tmp_path):
    out = tmp_path / "pairs.jsonl"
    build_pairs(str(env["model"]), str(env["prompts"]), out, _opts(judge=str(env["judge"])))
    for name in [n for n, m in METHODS.items() if m.data == "pairs" or m.split_pairs]:
        assert train(from_dict(_train_config(tmp_path, env["model"], out, name))).steps == 2, name


def test_cli_prints_the_counts(env, tmp_path, capsys):
    out = tmp_path / "new" / "c.jsonl"  # its directory made
    args = ["pairs", str(env["model"]), "--prompts", str(env["prompts"]), "--judge", str(env["judge"])]
    args += ["--samples", "3", "--max-new-tokens", "6", "--out", str(out), "--no-progress"]
    assert cli_main(args) == 0
    line = capsys.readouterr().out.strip()
    n = len(_lines(out))
    assert line.startswith(f"wrote {n} pairs to {out}") and f"dropped {12 - n} of 12 prompts" in line
    assert cli_main(args) == 2  # the output exists
    assert capsys.readouterr().err.strip() == f"error: --out {out}: exists; remove it or choose another file"


def _pairs_cmd(env, rows: Path, out: Path) -> list[str]:
    return [
        sys.executable, "-m", "tether", "pairs", str(env["model"]), "--prompts", str(rows),
        "--judge", str(env["judge"]), "--samples", "3", "--max-new-tokens", "48", "--batch-size", "1",
        "--out", str(out), "--no-progress",
    ]  # fmt: skip


@pytest.mark.slow
def test_sigkilled_midway_and_rerun_equals_an_uninterrupted_run(env, tmp_path):
    rows = write_jsonl(tmp_path / "many.jsonl", pair_rows(240))
    proc_env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    whole = tmp_path / "whole.jsonl"
    subprocess.run(_pairs_cmd(env, rows, whole), env=proc_env, check=True, capture_output=True, timeout=600)
    out = tmp_path / "killed.jsonl"
    partial = out.with_name("killed.jsonl.partial")
    proc = subprocess.Popen(_pairs_cmd(env, rows, out), env=proc_env, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if partial.exists() and partial.read_bytes().count(b"\n") >= 20:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and not meta_path(out).exists()  # nothing looks finished
    done = partial.read_bytes().count(b"\n") - 1
    assert 19 <= done < 240
    again = subprocess.run(
        _pairs_cmd(env, rows, out), env=proc_env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr
    assert f"resumed after {done} finished batches" in again.stdout
    assert out.read_bytes() == whole.read_bytes()
    assert meta_path(out).read_bytes() == meta_path(whole).read_bytes()
