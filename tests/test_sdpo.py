"""sDPO: staged DPO where each stage's reference is the previous stage's final model."""

from __future__ import annotations

import json

import pytest
import torch

from tether.config import from_dict
from tether.errors import ConfigError
from tether.training.job import train

from tiny import pair_table, train_then_kill


def cfg(root, model, pairs, name, stages=None, **train_kw):
    raw = {
        "model": {"name": str(model)},
        "data": {"train": str(pairs), "max_length": 64},
        "method": {"name": "dpo", "beta": 0.1},
        "reference": {"cache_dir": str(root / "cache")},
        "train": {
            "output_dir": str(root / name),
            "batch_size": 2,
            "max_steps": 4,
            "lr": 5e-3,
            "progress": False,
            **train_kw,
        },
    }
    if stages is not None:
        raw["stages"] = stages
    return from_dict(raw)


@pytest.mark.slow
def test_one_stage_is_exactly_dpo(setup):
    root, model, pairs = setup
    staged = train(cfg(root, model, pairs, "one-stage", {"by": "random", "fractions": [1.0]}))
    plain = train(cfg(root, model, pairs, "plain"))
    a = [json.loads(x) for x in (staged.run_dir / "stage-1" / "metrics.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (plain.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], abs=1e-6)


@pytest.mark.slow
def test_stage_two_reference_is_stage_one_model(setup):
    root, model, pairs = setup
    result = train(
        cfg(root, model, pairs, "two-stage", {"by": "column", "column": "source", "order": ["easy", "hard"]})
    )
    assert [s["stage"] for s in result.stages] == [1, 2]
    assert [s["examples"] for s in result.stages] == [8, 8]
    stage1_final = result.run_dir / "stage-1" / "final"
    assert result.stages[0]["final_model"] == str(stage1_final)
    ex, t_stage1 = pair_table(stage1_final, pairs)
    _, t_orig = pair_table(model, pairs)
    hard = [i for i, e in enumerate(ex) if e.meta["source"] == "hard"]
    # stage 2's γ_ref is computed with stage 1's final model on stage 2's data ...
    expected = (t_stage1[hard, 0] - t_stage1[hard, 1]).mean().item()
    assert result.stages[1]["gamma_ref"] == pytest.approx(expected, abs=1e-4)
    # ... and differs from the original model's on the same data
    original = (t_orig[hard, 0] - t_orig[hard, 1]).mean().item()
    assert abs(original - expected) > 1e-3
    # the paper's observation at this scale: the stage-1 model is a stricter (higher) lower bound
    assert expected > original


@pytest.mark.parametrize(
    ("stages", "match"),
    [
        ({"by": "random", "fractions": [0.5, 0.4]}, "must sum to 1"),
        ({"by": "column", "column": "source", "order": ["easy", "medium"]}, "value 'medium' does not occur"),
        ({"by": "column", "column": "source", "order": ["easy"]}, "not listed"),
        ({"by": "column", "column": "nope", "order": ["easy"]}, "has no column 'nope'"),
        ({"by": "random", "fractions": [0.99, 0.01]}, "stage 2 gets no examples"),
        ({"by": "random", "fractions": [0.5, 0.5], "stage": 3}, "stages.stage: 3, but there are 2 stages"),
    ],
)
def test_bad_stages(setup, stages, match):
    root, model, pairs = setup
    with pytest.raises(ConfigError, match=match):
        train(cfg(root, model, pairs, "bad", stages))


@pytest.mark.slow
def test_sdpo_kill_and_resume_continues_at_the_right_stage(setup):
    """SIGKILL during stage 2, resume: stage 1 is not retrained, stage 2 continues from its checkpoint, and
    every stage's metrics equal those of an uninterrupted staged run."""
    import subprocess

    import yaml

    root, model, pairs = setup
    stages = {"by": "column", "column": "source", "order": ["easy", "hard"]}
    kw = {"max_steps": 30, "save_every": 5, "lr": 3e-3, "batch_size": 2}
    full = train(cfg(root, model, pairs, "sdpo-full", stages, **kw))
    raw = cfg(root, model, pairs, "sdpo-killed", stages, **kw).to_dict()
    path = root / "sdpo-killed.yaml"
    path.write_text(yaml.safe_dump(raw))
    cli = train_then_kill(path, root / "sdpo-killed" / "stage-2" / "metrics.jsonl", after_lines=8)
    stage1_mtime = (root / "sdpo-killed" / "stage-1" / "summary.json").stat().st_mtime
    resumed = subprocess.run([*cli, "train.resume=true"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert (root / "sdpo-killed" / "stage-1" / "summary.json").stat().st_mtime == stage1_mtime
    for stage in ("stage-1", "stage-2"):
        a = [json.loads(x) for x in (full.run_dir / stage / "metrics.jsonl").read_text().splitlines()]
        b = [json.loads(x) for x in (root / "sdpo-killed" / stage / "metrics.jsonl").read_text().splitlines()]
        assert [x["step"] for x in b] == list(range(1, 31))
        assert [x["loss"] for x in a] == pytest.approx([x["loss"] for x in b], abs=1e-6)
    stages_json = json.loads((root / "sdpo-killed" / "stages.json").read_text())
    assert [s["stage"] for s in stages_json] == [1, 2]


@pytest.mark.slow
def test_a_stage_config_retrains_that_stage_alone(setup):
    """``tether train stage-2/config.yaml`` with a fresh output_dir: stage 2 alone (its rows of the seeded
    split, stage 1's model as start and reference) retrains to the same weights."""
    import yaml
    from safetensors.torch import load_file

    from tether.config import load_config

    root, model, pairs = setup
    staged = train(cfg(root, model, pairs, "stage-alone", {"by": "random", "fractions": [0.5, 0.5]}))
    stage2 = staged.run_dir / "stage-2"
    recorded = yaml.safe_load((stage2 / "config.yaml").read_text())
    assert recorded["stages"]["stage"] == 2
    assert recorded["model"]["name"] == str(staged.run_dir / "stage-1" / "final")
    again = train(load_config(stage2 / "config.yaml", [f"train.output_dir={root / 'stage-2-again'}"]))
    assert again.run_dir == root / "stage-2-again" and again.stages is None
    a = load_file(stage2 / "final" / "model.safetensors")
    b = load_file(root / "stage-2-again" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert again.gamma_ref == staged.stages[1]["gamma_ref"]
    summary = json.loads((root / "stage-2-again" / "summary.json").read_text())
    assert summary["data"]["train_examples"] == staged.stages[1]["examples"]
