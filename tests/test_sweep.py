"""``tether sweep``: a 2 × 2 grid on a tiny model end to end (four run directories, the table, the
frontier PNG), resumed after a kill, and the bad-input cases (one line, exit 2, before any run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tether.cli import main as cli_main
from tether.evaluation.evaluate import EvalOptions
from tether.evaluation.report import pareto_front
from tether.rundir import RunDir
from tether.training.sweep import run_sweep

from tiny import pair_rows, tiny_model_dir, train_then_kill, write_jsonl

GRID = ["--grid", "method.name=dpo,ipo", "--grid", "method.beta=0.1,0.5"]
EVAL = ["--max-samples", "2", "--max-new-tokens", "3", "--no-progress"]
NAMES = {"dpo_beta=0.1", "dpo_beta=0.5", "ipo_beta=0.1", "ipo_beta=0.5"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    model = tiny_model_dir(root / "model")
    pairs = write_jsonl(root / "pairs.jsonl", pair_rows(8))
    heldout = write_jsonl(root / "heldout.jsonl", pair_rows(3, seed=1))
    base = {
        "model": {"name": str(model)},
        "data": {"train": str(pairs), "max_length": 48},
        "method": {"name": "dpo"},
        "reference": {"cache_dir": str(root / "cache")},
        "train": {
            "output_dir": str(root / "sweep"),
            "batch_size": 2,
            "max_steps": 3,
            "save_every": 1,
            "lr": 1e-2,
            "progress": False,
        },
    }
    config = root / "base.yaml"
    config.write_text(yaml.safe_dump(base))
    return {"root": root, "config": config, "heldout": heldout, "base": base}


def _sweep(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tether.cli", "sweep", str(config), *GRID, *EVAL, *extra]


def test_pareto_front_by_hand():
    # (KL, performance): b dominates a (lower KL, higher perf); c has more KL but more perf; d = c (tie).
    pts = [(0.5, 0.4), (0.2, 0.6), (0.9, 0.8), (0.9, 0.8), (1.0, 0.8)]
    assert pareto_front(pts) == [False, True, True, True, False]


@pytest.mark.slow
def test_two_by_two_sweep_end_to_end_and_resume(env, capsys):
    root, config, heldout = env["root"], env["config"], str(env["heldout"])
    sweep = root / "sweep"
    # A part of the grid first (as a sweep killed after its first two runs would leave it) ...
    assert (
        cli_main(
            [
                "sweep",
                str(config),
                "--grid",
                "method.name=dpo",
                "--grid",
                "method.beta=0.1,0.5",
                "--data-eval",
                heldout,
                *EVAL,
            ]
        )
        == 0
    )
    # ... and one run killed mid-way through its training (a checkpoint written, no final model).
    point = root / "ipo.yaml"
    cfg = {**env["base"], "method": {"name": "ipo", "beta": 0.1}}
    cfg["train"] = {**cfg["train"], "output_dir": str(sweep / "ipo_beta=0.1"), "max_steps": 400}
    point.write_text(yaml.safe_dump(cfg))
    train_then_kill(point, sweep / "ipo_beta=0.1" / "metrics.jsonl", after_lines=2)
    assert not RunDir(sweep / "ipo_beta=0.1").is_finished()
    capsys.readouterr()
    assert cli_main(["sweep", str(config), *GRID, "--data-eval", heldout, *EVAL]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln.split() for ln in out.splitlines() if ln.split() and ln.split()[0] in NAMES}
    assert set(lines) == NAMES
    # Finished runs skipped, their evaluation kept; the killed one resumed; the missing one trained.
    assert "done" in lines["dpo_beta=0.1"] and "kept" in lines["dpo_beta=0.1"]
    assert "done" in lines["dpo_beta=0.5"] and "kept" in lines["dpo_beta=0.5"]
    assert "resumed" in lines["ipo_beta=0.1"] and "trained" in lines["ipo_beta=0.5"]
    for name in NAMES:
        rd = RunDir(sweep / name)
        assert rd.is_finished() and rd.read_eval() is not None, name
        assert rd.read_summary()["steps"] == 3
        # the shared evaluation: the reference's tables and generations came from the cache
        if name != "dpo_beta=0.1":
            assert set(rd.read_eval()["reference_cache"].values()) == {"hit"}, name
    resumed = RunDir(sweep / "ipo_beta=0.1").read_summary()
    assert resumed["resumed_from_step"] >= 1
    table = (sweep / "table.md").read_text()
    assert all(n in table for n in NAMES) and "frontier" in table
    from PIL import Image

    with Image.open(sweep / "frontier.png") as im:
        assert im.format == "PNG" and im.size[0] > 300
    manifest = json.loads((sweep / "sweep.json").read_text())
    assert set(manifest["points"]) == NAMES
    # A third call does nothing but rewrite the table.
    capsys.readouterr()
    assert cli_main(["sweep", str(config), *GRID, "--data-eval", heldout, *EVAL]) == 0
    out = capsys.readouterr().out
    assert out.count(" done ") + out.count(" done\n") >= 4 and "trained" not in out
    # The API's per-point hook: each point once, after its evaluation.
    seen = []
    options = EvalOptions(max_samples=2, max_new_tokens=3, progress=False)
    run_sweep(config, GRID[1::2], data_eval=heldout, options=options,
              after_point=lambda p, rd: seen.append((p.name, p.status, rd.read_eval() is not None)))  # fmt: skip
    assert sorted(seen) == sorted((n, "done", True) for n in NAMES)


@pytest.mark.parametrize(
    "grid, message",
    [
        (
            ["--grid", "method.betta=0.1,0.2"],
            "unknown hyper-parameter for method 'dpo' (did you mean 'beta'?)",
        ),
        (["--grid", "train.lr=0.1,abc"], "(train.lr=abc): train.lr: expected a number, got 'abc'"),
        (["--grid", "trian.lr=0.1"], "trian: unknown key"),
        (["--grid", "method.name=dpo,dpoo"], "dpoo"),
        (["--grid", "method.beta=0.1", "--grid", "method.beta=0.2"], "given twice"),
        (["--grid", "train.output_dir=a,b"], "set by the sweep itself"),
    ],
)
def test_bad_grid_is_one_line_before_any_run(env, tmp_path, grid, message, capsys):
    out = tmp_path / "sw"
    code = cli_main(
        ["sweep", str(env["config"]), *grid, "--data-eval", str(env["heldout"]), "--out", str(out)]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


@pytest.mark.slow
def test_sweep_dir_of_another_base_config_is_refused(env, tmp_path, capsys):
    out = tmp_path / "sw"
    args = ["sweep", str(env["config"]), "--grid", "method.beta=0.1", "--data-eval", str(env["heldout"])]
    assert cli_main([*args, "--out", str(out), *EVAL]) == 0
    capsys.readouterr()
    code = cli_main([*args[:2], "train.lr=0.5", *args[2:], "--out", str(out), *EVAL])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "holds runs of a different base config (train.lr: 0.01 there, 0.5 now)" in err[0], err


@pytest.mark.slow
def test_cli_subprocess_prints_the_table(env, tmp_path):
    """The console entry point, as a user runs it (exit 0, the table and the plot path on stdout)."""
    out = tmp_path / "sw"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tether.cli",
            "sweep",
            str(env["config"]),
            "--grid",
            "method.beta=0.1",
            "--data-eval",
            str(env["heldout"]),
            "--out",
            str(out),
            *EVAL,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert f"table: {out / 'table.md'}" in proc.stdout and "beta=0.1" in proc.stdout


@pytest.mark.slow
def test_a_staged_point_is_kept_when_finished_and_resumed_by_stage(env, tmp_path):
    """An sDPO grid point (a run directory of stages) run again is not trained again, and one whose last
    stage is lost trains only that stage: its first stage's model is kept."""
    base = {**env["base"], "stages": {"by": "random", "fractions": [0.5, 0.5]}}
    base["train"] = {**base["train"], "max_steps": 2, "output_dir": str(tmp_path / "unused")}
    config = tmp_path / "staged.yaml"
    config.write_text(yaml.safe_dump(base))
    options = EvalOptions(max_samples=2, max_new_tokens=3, progress=False)
    out = tmp_path / "sweep"

    def sweep():
        return run_sweep(config, ["train.seed=0"], out=out, data_eval=str(env["heldout"]), options=options)

    first = sweep()
    run = RunDir(out / first.points[0].name)
    assert first.points[0].status == "trained" and run.stages.exists()
    stage1 = run.stage(1).final / "model.safetensors"
    written = stage1.stat().st_mtime_ns
    again = sweep()
    assert again.points[0].status == "done" and again.points[0].eval_status == "kept"
    # the last stage lost (as a kill during it leaves the run): only that stage trains again
    import shutil

    shutil.rmtree(run.stage(2).path)
    run.stages.unlink()
    resumed = sweep()
    assert resumed.points[0].status == "resumed" and run.stages.exists()
    assert stage1.stat().st_mtime_ns == written  # stage 1 kept, not retrained
    assert resumed.points[0].eval_status == "evaluated"  # a new last stage: evaluated again
