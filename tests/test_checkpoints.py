"""``tether eval RUN --checkpoints``: one row per saved checkpoint, the last row the final model; a
checkpoint's weights equal those of a run stopped at that step; an incomplete checkpoint is one line."""

from __future__ import annotations

import shutil

import pytest
from PIL import Image

from tether.cli import main as cli_main
from tether.config import from_dict
from tether.evaluation.evaluate import evaluate, evaluate_checkpoints
from tether.training.job import train

from tiny import pair_rows, tiny_model_dir, write_jsonl

EVAL = {"max_samples": 2, "max_new_tokens": 3, "progress": False}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    model = tiny_model_dir(root / "model")
    pairs = write_jsonl(root / "pairs.jsonl", pair_rows(8))
    heldout = write_jsonl(root / "heldout.jsonl", pair_rows(3, seed=1))

    def run(name: str, steps: int, save_every: int | None):
        cfg = {
            "model": {"name": str(model)},
            "data": {"train": str(pairs), "max_length": 48},
            "method": {"name": "dpo", "beta": 0.2},
            "reference": {"cache_dir": str(root / "cache")},
            "train": {
                "output_dir": str(root / name),
                "batch_size": 2,
                "max_steps": steps,
                "save_every": save_every,
                "save_total_limit": None,
                "scheduler": "constant",
                "lr": 1e-2,
                "progress": False,
            },
        }
        return train(from_dict(cfg)).run_dir

    return {"root": root, "heldout": heldout, "a": run("a", 3, 1), "b": run("b", 2, None)}


@pytest.mark.slow
def test_three_rows_final_row_is_final_and_a_checkpoint_is_its_step(env, monkeypatch, tmp_path):
    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))
    data = str(env["heldout"])
    res = evaluate_checkpoints(str(env["a"]), data, **EVAL)
    rows = res["rows"]
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert rows[0]["checkpoint"].endswith("step-0000001") and rows[-1]["checkpoint"] is None
    final = evaluate(str(env["a"]), data, **EVAL)
    assert rows[-1]["metrics"] == final["metrics"]
    # step 2's checkpoint holds the weights of a run of the same settings stopped after 2 steps
    two = evaluate(str(env["b"]), data, **EVAL)["metrics"]
    for k, v in two.items():
        got = rows[1]["metrics"][k]
        assert got == (pytest.approx(v, abs=1e-4) if isinstance(v, float) else v), k
    assert rows[0]["metrics"]["pairwise/margin"] != rows[-1]["metrics"]["pairwise/margin"]
    # the reference's numbers come from the cache after the first row
    assert set(rows[-1]["reference_cache"].values()) == {"hit"}
    assert (env["a"] / "eval_checkpoints.json").is_file()
    # tether report draws KL and performance along training, from the reference at step 0
    from tether.evaluation.report import load_runs, plot_trajectory, write_report

    plot = plot_trajectory(load_runs([env["a"]]))
    kl = next(x for x in plot.series if x.metric == "kl")
    assert kl.x == [0.0, 1.0, 2.0, 3.0] and kl.y[0] == 0.0
    assert kl.y[1:] == [r["metrics"]["kl"] for r in rows]
    perf = next(x for x in plot.series if x.metric != "kl")
    start = rows[0]["reference_metrics"].get(perf.metric)  # none for the reward accuracy (0 by definition)
    assert perf.x[0] == (0.0 if start is not None else 1.0) and perf.y[-1] == rows[-1]["metrics"][perf.metric]
    write_report([env["a"]], tmp_path / "report")
    with Image.open(tmp_path / "report" / "trajectory.png") as im:
        assert im.format == "PNG"
    every2 = evaluate_checkpoints(str(env["a"]), data, every=2, out=tmp_path / "e.json", **EVAL)
    assert [r["step"] for r in every2["rows"]] == [2, 3]


@pytest.mark.slow
def test_cli_checkpoints_and_incomplete_checkpoint(env, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TETHER_CACHE", str(tmp_path / "cache"))
    args = ["--data", str(env["heldout"]), "--max-samples", "2", "--max-new-tokens", "3", "--no-progress"]
    assert cli_main(["eval", str(env["a"]), "--checkpoints", "all", *args]) == 0
    out = capsys.readouterr().out
    assert "step 1" in out and "step 3 (final)" in out and "pairwise/accuracy" in out
    broken = tmp_path / "broken"
    shutil.copytree(env["a"], broken)
    (broken / "checkpoints" / "step-0000002" / "model.safetensors").unlink()
    code = cli_main(["eval", str(broken), "--checkpoints", "all", *args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [
        f"error: {broken / 'checkpoints' / 'step-0000002'}: incomplete checkpoint (no model.safetensors); "
        "delete it or retrain"
    ]
    assert cli_main(["eval", str(env["a"]), "--checkpoints", "x", *args]) == 2
    assert "expected 'all' or a positive number" in capsys.readouterr().err
