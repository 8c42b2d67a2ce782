"""``tether report``: plots and a Markdown summary from run directories.

Most run directories are written here by hand in the format ``tether train`` writes (fast, and every
branch covered: eval lines, ε-DPO, sDPO stages, eval.json); one real tiny run checks the real format.
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tether.errors import TetherError
from tether.evaluation.report import (
    load_run,
    load_runs,
    make_plots,
    plot_deviation,
    plot_frontier,
    plot_gamma_ref,
    plot_run,
    plot_training,
    success_and_kl,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_metrics(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def fake_run(
    root: Path,
    name: str,
    method: str = "dpo",
    steps: int = 60,
    *,
    beta: float = 0.1,
    reference: bool = True,
    epsilon: bool = False,
    eval_every: int = 20,
    eval_json: dict | None = None,
    seed: int = 0,
    sft: bool = False,
) -> Path:
    """A run directory as ``tether train`` writes it (metrics.jsonl, config.yaml, summary.json)."""
    rng = random.Random(seed)
    d = root / name
    d.mkdir(parents=True)
    records, last = [], {}
    for step in range(1, steps + 1):
        t = step / steps
        rec = {"step": step, "epoch": t, "loss": 0.69 * math.exp(-t) + rng.gauss(0, 0.03)}
        if not sft:
            margin = 2 * t + rng.gauss(0, 0.2)
            rec |= {
                "rewards/margins": margin,
                "rewards/accuracies": min(1.0, max(0.0, 0.5 + t / 2 + rng.gauss(0, 0.1))),
                "rewards/chosen": margin / 2,
                "rewards/rejected": -margin / 2,
                "logps/chosen": -20 + t,
                "logps/rejected": -22 - 3 * t,
            }
        if reference:
            rec["deviation"] = -0.5 * t * (1 + seed) + rng.gauss(0, 0.02)
        if epsilon:
            p = rng.choice([0.0, 0.25, 0.5])
            rec |= {
                "kl/beta": beta * (1 - 0.2 * t),
                "kl/p_epsilon_steps": p,
                "kl/n_epsilon_steps": 0.5 - p / 2,
            }
        rec |= {"lr": 1e-5, "tokens_per_second": 900.0}
        records.append(rec)
        last = rec
        if eval_every and step % eval_every == 0:
            ev = {"step": step, "eval/loss": rec["loss"] + 0.05}
            if not sft:
                ev["eval/rewards/accuracies"] = 0.6
                ev["eval/rewards/margins"] = 1.5 * t
            if reference:
                ev["eval/deviation"] = rec["deviation"] - 0.1
            records.append(ev)
    write_metrics(d / "metrics.jsonl", records)
    params = {"name": method, "beta": beta} | ({"epsilon": 0.01} if epsilon else {})
    config = {"model": {"name": "smollm2"}, "method": params, "train": {"lr": 1e-5, "batch_size": 4}}
    (d / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    evals = {k: v for k, v in records[-1].items() if k.startswith("eval/")}
    summary = {
        "method": method,
        "reference_mode": "precomputed" if reference else "none",
        "steps": steps,
        "seconds": 12.5 + seed,
        "train_metrics": last,
        "eval_metrics": evals,
        "gamma_ref": None,
        "stages": None,
    }
    (d / "summary.json").write_text(json.dumps(summary))
    if eval_json is not None:
        (d / "eval.json").write_text(json.dumps(eval_json))
    return d


def fake_sdpo(root: Path, name: str = "sdpo", stages: int = 3, steps: int = 20) -> Path:
    d = root / name
    d.mkdir(parents=True)
    listing = []
    for t in range(1, stages + 1):
        fake_run(d, f"stage-{t}", steps=steps, seed=t)
        summary = json.loads((d / f"stage-{t}" / "summary.json").read_text())
        summary["gamma_ref"] = 0.8 / t
        (d / f"stage-{t}" / "summary.json").write_text(json.dumps(summary))
        listing.append(
            {"stage": t, "examples": 50, "gamma_ref": 0.8 / t, "final_model": str(d / f"stage-{t}/final")}
        )
    (d / "stages.json").write_text(json.dumps(listing))
    return d


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    return [
        fake_run(
            root, "minor-sft", "minor_sft", sft=True, beta=0.04, eval_json={"success_rate": 0.4, "kl": 0.8}
        ),
        fake_run(
            root, "sft", "sft", sft=True, seed=1, eval_json={"success_rate": 0.5, "kl_to_reference": 2.5}
        ),
        fake_run(
            root,
            "eps",
            "epsilon_dpo",
            epsilon=True,
            beta=0.01,
            seed=2,
            eval_json={"success_rate": 0.6, "kl": 1.2},
        ),
        fake_run(root, "simpo", "simpo", reference=False, eval_every=0),
        fake_sdpo(root),
    ]


def is_png(path: Path) -> bool:
    return path.exists() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 5000


def labels(plot, split: str = "train") -> set[str]:
    return {s.label for s in plot.series if s.split == split}


def test_write_report_draws_every_plot_and_embeds_it(runs, tmp_path):
    report = write_report(runs, tmp_path / "out")
    md = report.read_text()
    for name in ("training", "deviation", "epsilon_dpo", "gamma_ref", "frontier"):
        png = tmp_path / "out" / f"{name}.png"
        assert is_png(png), name
        assert f"]({name}.png)" in md
    for run in ("minor-sft (minor_sft)", "eps (epsilon_dpo)", "simpo", "sdpo (sDPO/dpo)"):
        assert f"### {run}" in md
    assert "beta=0.04" in md and "epsilon=0.01" in md and "stages=3" in md
    assert "| 0.8 |" in md  # stage 1's gamma_ref
    # no run evaluated its checkpoints; the state plots of methods no run used get no note
    assert md.count("skipped") == 1 and "trajectory.png skipped" in md and "tr_dpo.png" not in md
    header = next(line for line in md.splitlines() if line.startswith("| run |"))
    assert header.index("eval loss") < header.index("last-batch loss")  # held-out numbers first


def test_deviation_plot_has_every_run_with_a_reference(runs):
    loaded = load_runs(runs)
    plot = plot_deviation(loaded)
    assert labels(plot) == {"minor-sft (minor_sft)", "sft", "eps (epsilon_dpo)", "sdpo (sDPO/dpo)"}
    assert labels(plot, "eval") == labels(plot)
    assert "simpo" in plot.caption  # named as having no deviation
    ax = plot.figure.axes[0]
    drawn = {ln.get_label() for ln in ax.get_lines()}
    assert labels(plot) <= drawn
    eval_lines = [ln for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(eval_lines) == 4


def test_sdpo_stages_are_concatenated_with_boundaries(runs):
    run = load_run(runs[-1])
    assert run.method == "sDPO/dpo" and run.summary["steps"] == 60
    steps = [r["step"] for r in run.train]
    assert steps == list(range(1, 61))
    assert run.boundaries == [20.5, 40.5]
    plot = plot_training(load_runs([runs[-1]]))
    ax = plot.figure.axes[0]
    vertical = [
        ln for ln in ax.get_lines() if len(set(ln.get_xdata())) == 1 and ln.get_xdata()[0] in (20.5, 40.5)
    ]
    assert len(vertical) == 2
    g = plot_gamma_ref(load_runs(runs))
    assert [(s.x, s.y) for s in g.series] == [([1.0, 2.0, 3.0], [0.8, 0.4, 0.8 / 3])]


def test_method_specific_plots_follow_the_metrics(runs):
    loaded = load_runs(runs)
    eps = make_plots(loaded)["epsilon_dpo"]
    assert {s.metric for s in eps.series} == {"kl/beta", "kl/p_epsilon_steps", "kl/n_epsilon_steps"}
    assert labels(eps) == {"eps (epsilon_dpo)"}
    training = plot_training(loaded)
    margins = {s.label for s in training.series if s.metric == "rewards/margins"}
    assert "sft" not in margins and "simpo" in margins
    frontier = plot_frontier(loaded)
    assert {(s.label, s.x[0], s.y[0]) for s in frontier.series} == {
        ("minor-sft (minor_sft)", 0.8, 0.4),
        ("sft", 2.5, 0.5),
        ("eps (epsilon_dpo)", 1.2, 0.6),
    }
    assert make_plots(load_runs(runs[:2]))["epsilon_dpo"] is None
    assert plot_gamma_ref(load_runs(runs[:2])) is None


def test_frontier_draws_the_shared_reference_at_kl_zero(tmp_path):
    def ev(success: float, kl: float, ref_success: float, ref: str = "smollm2") -> dict:
        return {
            "reference": ref,
            "metrics": {"generation/success": success, "kl": kl},
            "reference_metrics": {"generation/success": ref_success},
        }

    a = fake_run(tmp_path, "a", eval_json=ev(0.3, 0.4, 0.1))
    b = fake_run(tmp_path, "b", "sft", sft=True, eval_json=ev(0.5, 12.0, 0.1))
    frontier = plot_frontier(load_runs([a, b]))
    assert {(s.label, s.x[0], s.y[0]) for s in frontier.series} == {
        ("start", 0.0, 0.1),
        ("a (dpo)", 0.4, 0.3),
        ("b (sft)", 12.0, 0.5),
    }
    assert frontier.figure.axes[0].get_xscale() == "symlog"  # KLs 30x apart
    c = fake_run(tmp_path, "c", eval_json=ev(0.2, 0.5, 0.2, ref="other"))  # another reference: its own star
    frontier = plot_frontier(load_runs([a, c]))
    starts = {(s.label, s.y[0]) for s in frontier.series if s.label.startswith("start")}
    assert starts == {("start (smollm2)", 0.1), ("start (other)", 0.2)}
    assert frontier.figure.axes[0].get_xscale() == "linear"
    d = fake_run(tmp_path, "d", eval_json={**ev(0.4, 0.6, 0.3), "data": "x/pairs.heldout.jsonl"})
    frontier = plot_frontier(load_runs([a, d]))  # same reference, other data: a star per data file
    starts = {(s.label, s.y[0]) for s in frontier.series if s.label.startswith("start")}
    assert starts == {("start (None)", 0.1), ("start (pairs.heldout.jsonl)", 0.3)}


def test_coinciding_curves_are_named_in_the_caption(tmp_path):
    a = fake_run(tmp_path, "a", seed=3)
    b = fake_run(tmp_path, "b", seed=3)  # the same curves under another name: b hides a
    c = fake_run(tmp_path, "c", seed=4)
    caption = plot_deviation(load_runs([a, b, c])).caption
    assert caption.endswith("; drawn on top of each other: a (dpo) = b (dpo) (deviation).")
    assert "c (dpo)" not in caption
    assert "drawn on top" not in plot_deviation(load_runs([a, c])).caption


def test_losses_of_different_scales_get_their_own_panels(tmp_path):
    a = fake_run(tmp_path, "a", seed=1)
    b = fake_run(tmp_path, "b", seed=2)
    big = fake_run(tmp_path, "big", "cpo", seed=3)
    recs = [json.loads(x) for x in (big / "metrics.jsonl").read_text().splitlines()]
    write_metrics(big / "metrics.jsonl", [{**r, "loss": r["loss"] * 100} if "loss" in r else r for r in recs])
    plot = plot_training(load_runs([a, b, big]))
    titles = [ax.get_title() for ax in plot.figure.axes]
    assert titles[:2] == ["loss (a (dpo), b (dpo))", "loss (big (cpo))"]
    assert "separate panels" in plot.caption
    assert len(plot_training(load_runs([a, b])).figure.axes) == 3  # one scale: one loss panel


def test_identical_values_are_not_zoomed_into_a_difference(tmp_path):
    flat = fake_run(tmp_path, "flat", steps=10, eval_every=0)
    recs = [json.loads(x) for x in (flat / "metrics.jsonl").read_text().splitlines()]
    write_metrics(  # the same deviation up to float rounding
        flat / "metrics.jsonl", [{**r, "deviation": 0.25 + 1e-9 * (i % 2)} for i, r in enumerate(recs)]
    )
    ax = plot_deviation(load_runs([flat])).figure.axes[0]
    lo, hi = ax.get_ylim()
    assert hi - lo >= 0.25 * 1e-3 and not ax.yaxis.get_major_formatter().get_useOffset()


def test_missing_metrics_skip_plots_with_a_note(tmp_path):
    run = fake_run(tmp_path, "orpo", "orpo", reference=False, eval_every=0)
    md = write_report([run], tmp_path / "out").read_text()
    assert "deviation.png skipped" in md and "frontier.png skipped" in md
    assert "epsilon_dpo.png" not in md  # no ε-DPO run: nothing to say about its state plot
    assert not (tmp_path / "out" / "deviation.png").exists()
    assert is_png(tmp_path / "out" / "training.png")


def test_eval_json_is_read_defensively():
    nested = {
        "tasks": {"arith": {"success": 0.1}},
        "overall": {"success_rate": 0.7},
        "kl/beta": 3,
        "mean_kl": 0.3,
    }
    assert success_and_kl(nested) == (("overall/success_rate", 0.7), ("mean_kl", 0.3))
    assert success_and_kl({"win_rate": 0.55, "KL_to_ref": 1.0}) == (("win_rate", 0.55), ("KL_to_ref", 1.0))
    assert success_and_kl({"accuracy": "high", "skill": 1}) == (None, None)
    # the layout `tether eval` writes: the model's metrics, the reference's, and settings
    written = {
        "settings": {"beta": 0.1, "kl_samples": 1},
        "metrics": {"generation/success": 0.5, "generation/success/arith": 0.2, "win_rate": 0.6, "kl": 0.9},
        "reference_metrics": {"generation/success": 0.3, "kl": 0.0},
        "win": {"win_rate": 0.6, "wins": 3},
    }
    assert success_and_kl(written) == (("metrics/generation/success", 0.5), ("metrics/kl", 0.9))
    no_kl = {"settings": {"kl_samples": 1}, "metrics": {"win_rate": 0.6}, "win": {"wins": 3, "win_rate": 0.6}}
    assert success_and_kl(no_kl) == (("win/win_rate", 0.6), None)
    assert success_and_kl(None) == (None, None)


def test_malformed_eval_json_is_a_note_not_a_failure(tmp_path):
    run = fake_run(tmp_path, "dpo")
    (run / "eval.json").write_text("{not json")
    md = write_report([run], tmp_path / "out").read_text()
    assert "eval.json:1: malformed JSON" in md


@pytest.mark.parametrize(
    "case, content, message",
    [
        ("empty", "", "metrics.jsonl: empty"),
        (
            "malformed",
            '{"step": 1, "loss": 0.5}\n{"step": 2, "loss": \n',
            "metrics.jsonl:2: malformed metrics line",
        ),
        ("not an object", '{"step": 1}\n[1, 2]\n', "metrics.jsonl:2: malformed metrics line"),
        ("no step", '{"loss": 0.5}\n', "metrics.jsonl:1: malformed metrics line (no numeric 'step')"),
    ],
)
def test_bad_metrics_name_file_and_line(tmp_path, case, content, message):
    d = tmp_path / "run"
    d.mkdir()
    (d / "metrics.jsonl").write_text(content)
    with pytest.raises(TetherError) as e:
        write_report([d], tmp_path / "out")
    assert str(d / message.split(":")[0]) in str(e.value) and message in str(e.value)
    assert "\n" not in str(e.value)


def test_not_a_run_directory(tmp_path):
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(TetherError, match=str(bad)):
            load_run(bad)
    d = fake_sdpo(tmp_path)
    (d / "stage-2" / "metrics.jsonl").unlink()
    with pytest.raises(TetherError, match="stage-2"):
        load_run(d)


@pytest.mark.slow  # launches processes
def test_cli_end_to_end(runs, tmp_path):
    """``python -m tether.cli report``: exit 0 with the table and paths; exit 2 and one line for a bad dir.
    Both processes start at once (each pays the CLI's imports)."""
    out = tmp_path / "cli-out"
    cli = [sys.executable, "-m", "tether.cli", "report"]
    good = [*cli, *map(str, runs[:3]), "--out", str(out), "--smooth", "0"]
    bad = [*cli, str(runs[0]), str(tmp_path), "--out", str(tmp_path / "bad-out")]
    procs = [
        subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in (good, bad)
    ]
    (stdout, stderr), (_, bad_stderr) = (p.communicate(timeout=120) for p in procs)
    assert procs[0].returncode == 0, stderr
    assert f"report: {out / 'report.md'}" in stdout and f"plot:   {out / 'deviation.png'}" in stdout
    assert stdout.splitlines()[0].split()[:3] == ["run", "method", "steps"]
    assert "minor-sft" in stdout.splitlines()[2]
    assert is_png(out / "training.png") and (out / "report.md").exists()
    assert procs[1].returncode == 2
    assert bad_stderr.strip().splitlines() == [
        f"error: {tmp_path}: not a run directory (no metrics.jsonl or stages.json)"
    ]
    assert not (tmp_path / "bad-out").exists()


@pytest.mark.slow
def test_real_tiny_run(tmp_path):
    """A real ``tether.training.job.train`` run directory (with eval lines) is read and plotted."""
    from tether.config import from_dict
    from tether.training.job import train

    from tiny import pair_rows, tiny_model_dir, write_jsonl

    model = tiny_model_dir(tmp_path / "model")
    pairs = write_jsonl(tmp_path / "pairs.jsonl", pair_rows(12))
    heldout = write_jsonl(tmp_path / "heldout.jsonl", pair_rows(4, seed=1))
    cfg = from_dict(
        {
            "model": {"name": str(model)},
            "data": {"train": str(pairs), "eval": str(heldout), "max_length": 64},
            "method": {"name": "epsilon_dpo"},
            "reference": {"cache_dir": str(tmp_path / "cache")},
            "train": {
                "output_dir": str(tmp_path / "run"),
                "batch_size": 2,
                "max_steps": 4,
                "eval_every": 2,
                "lr": 1e-2,
                "progress": False,
            },
        }
    )
    result = train(cfg)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert sorted(Path(p).name for p in summary["plots"]) == [
        "deviation.png",
        "epsilon_dpo.png",
        "training.png",
    ]
    paths = plot_run(result.run_dir)
    assert {p.name for p in paths} == {"training.png", "deviation.png", "epsilon_dpo.png"}
    assert all(is_png(p) for p in paths) and paths[0].parent == result.run_dir / "plots"
    run = load_run(result.run_dir)
    assert run.method == "epsilon_dpo" and len(run.train) == 4 and [r["step"] for r in run.evals] == [0, 2, 4]
    assert run.evals[0]["eval/loss"] == pytest.approx(math.log(2), abs=1e-5)  # step 0: the reference
    md = write_report([result.run_dir], tmp_path / "out").read_text()
    assert "epsilon=0.01" in md and "| 4 |" in md
