"""Trainer invariants: gradient accumulation, reference modes, multi-process, kill-and-resume, ε-DPO's β,
β-DPO's batch statistics."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tether.config import from_dict
from tether.training.job import train

from tiny import train_then_kill

REPO = Path(__file__).resolve().parents[1]


PAIRS = 24  # the rows of the shared ``setup`` fixture (conftest.py)


def raw_cfg(root, model, pairs, name, method="dpo", **train_kw):
    return {
        "model": {"name": str(model)},
        "data": {"train": str(pairs), "max_length": 64},
        "method": {"name": method} if isinstance(method, str) else method,
        "reference": {"cache_dir": str(root / "cache")},
        "train": {
            "output_dir": str(root / name),
            "batch_size": 4,
            "max_steps": 3,
            "lr": 1e-2,
            "progress": False,
            **train_kw,
        },
    }


def metrics(run_dir) -> list[dict]:
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir) -> dict[str, torch.Tensor]:
    final = Path(run_dir) / "final"
    name = (
        "adapter_model.safetensors" if (final / "adapter_model.safetensors").exists() else "model.safetensors"
    )
    return load_file(str(final / name))


def assert_same_weights(a, b, atol):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=0, msg=k)


@pytest.mark.slow
def test_gradient_accumulation_equals_unsplit_batch(setup):
    """4 pairs at once, 2×2 and 4×1 micro-batches: same loss per step and same final weights."""
    root, model, pairs = setup
    runs = []
    for bs, acc in ((4, 1), (2, 2), (1, 4)):
        r = train(from_dict(raw_cfg(root, model, pairs, f"ga-{bs}x{acc}", batch_size=bs, grad_accum=acc)))
        runs.append(r.run_dir)
    base = metrics(runs[0])
    for other in runs[1:]:
        m = metrics(other)
        assert [x["loss"] for x in m] == pytest.approx([x["loss"] for x in base], abs=1e-6)
        assert_same_weights(runs[0], other, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True])
def test_reference_modes_agree(setup, lora):
    """Precomputed, frozen-copy and (with LoRA) adapter-disabled references give the same reference
    log-probs at every step, hence the same training run."""
    root, model, pairs = setup
    modes = ["precomputed", "copy"] + (["adapter"] if lora else [])
    runs = {}
    for mode in modes:
        raw = raw_cfg(root, model, pairs, f"ref-{mode}-{lora}")
        raw["reference"]["mode"] = mode
        if lora:
            raw["model"]["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0}
        runs[mode] = metrics(train(from_dict(raw)).run_dir)
    base = runs["precomputed"]
    for mode in modes[1:]:
        for a, b in zip(base, runs[mode], strict=True):
            assert a["logps/ref_chosen"] == pytest.approx(b["logps/ref_chosen"], abs=1e-4)
            assert a["logps/ref_rejected"] == pytest.approx(b["logps/ref_rejected"], abs=1e-4)
            assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)


@pytest.mark.slow
def test_precomputed_cache_reused_and_rebuilt(setup):
    root, model, pairs = setup
    raw = raw_cfg(root, model, pairs, "cache-a", max_steps=1)
    raw["reference"] = {"mode": "precomputed", "cache_dir": str(root / "fresh-cache")}
    assert train(from_dict(raw)).reference_cache == "train:miss"
    raw["train"]["output_dir"] = str(root / "cache-b")
    assert train(from_dict(raw)).reference_cache == "train:hit"
    raw["train"]["output_dir"] = str(root / "cache-c")
    raw["data"]["max_length"] = 17  # truncation changes the token ids: a new key
    assert train(from_dict(raw)).reference_cache == "train:miss"


def _write_cfg(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "epsilon_dpo", "kto"])
def test_two_processes_equal_one(setup, method):
    """accelerate launch, 2 CPU processes (gloo), 1 pair each × 2 accumulation steps = one process with 4.
    KTO (pairs split): each micro-batch's z is the mean over the two processes' rows, as one process's
    micro-batch of the same two rows."""
    root, model, pairs = setup
    one = train(
        from_dict(raw_cfg(root, model, pairs, f"mp-1-{method}", batch_size=2, grad_accum=2, method=method))
    )
    cfg = _write_cfg(
        root / f"mp-{method}.yaml",
        raw_cfg(root, model, pairs, f"mp-2-{method}", batch_size=1, grad_accum=2, method=method),
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            "accelerate",
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "-m",
            "tether.cli",
            "train",
            str(cfg),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_weights(one.run_dir, root / f"mp-2-{method}", atol=1e-4)
    a, b = metrics(one.run_dir), metrics(root / f"mp-2-{method}")
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)
        if method == "epsilon_dpo":
            assert x["kl/beta"] == pytest.approx(y["kl/beta"], rel=1e-9)  # β from the global batch's mean s
        if method == "kto":
            assert x["kto/z"] == pytest.approx(y["kto/z"], abs=1e-5)
            assert x["rewards/chosen"] == pytest.approx(y["rewards/chosen"], abs=1e-5)


STATEFUL = {
    "epsilon_dpo": ({"name": "epsilon_dpo", "beta": 0.1, "epsilon": 0.5}, ["kl/beta"]),
    "beta_dpo": (
        {"name": "beta_dpo", "rho": 0.5},
        ["beta_dpo/beta", "beta_dpo/gap_mean", "beta_dpo/gap_std", "beta_dpo/kept_fraction"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(STATEFUL))
def test_kill_and_resume_reproduces_run(setup, name):
    """SIGKILL mid-run, resume from the last checkpoint: the metrics of every step equal the
    uninterrupted run's, and the method's state (ε-DPO's β; β-DPO's moving averages, and its filter's
    draws, seeded by the step) is restored from the checkpoint."""
    root, model, pairs = setup
    method, state = STATEFUL[name]
    kw = {"batch_size": 2, "max_steps": 40, "save_every": 4, "lr": 3e-3, "save_total_limit": 2}
    full = train(from_dict(raw_cfg(root, model, pairs, f"full-{name}", method=method, **kw)))
    cfg = _write_cfg(
        root / f"kill-{name}.yaml", raw_cfg(root, model, pairs, f"killed-{name}", method=method, **kw)
    )
    cmd = train_then_kill(cfg, root / f"killed-{name}" / "metrics.jsonl", after_lines=6)
    assert not (root / f"killed-{name}" / "final").exists()
    resumed = subprocess.run([*cmd, "train.resume=true"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = metrics(full.run_dir), metrics(root / f"killed-{name}")
    assert [x["step"] for x in b] == list(range(1, 41))
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)
        for key in state:
            assert x[key] == pytest.approx(y[key], rel=1e-12, abs=1e-15), key
    if name == "beta_dpo":  # the filter was active: some steps kept half the pairs
        assert any(x["beta_dpo/kept_fraction"] < 1 for x in a)
    assert_same_weights(full.run_dir, root / f"killed-{name}", atol=1e-6)


@pytest.mark.slow
def test_epsilon_beta_update_independent_of_micro_batching(setup):
    """β after each step is the harmonic mean of that step's β_i over the global batch: identical for
    1×4 pairs and 2 micro-batches × 2 pairs."""
    root, model, pairs = setup
    method = {"name": "epsilon_dpo", "beta": 0.1, "epsilon": 0.5}
    a = metrics(train(from_dict(raw_cfg(root, model, pairs, "eps-4x1", method=method))).run_dir)
    b = metrics(
        train(
            from_dict(raw_cfg(root, model, pairs, "eps-2x2", method=method, batch_size=2, grad_accum=2))
        ).run_dir
    )
    beta = 0.1
    for x, y in zip(a, b, strict=True):
        assert x["hparams/beta"] == pytest.approx(beta, rel=1e-12)
        # mean of β_i over the batch is logged; the update is the harmonic mean: β/(1+ε·mean s)
        beta = beta / (1 + 0.5 * x["kl/s"])
        assert x["kl/beta"] == pytest.approx(beta, rel=1e-12)
        assert y["kl/beta"] == pytest.approx(x["kl/beta"], rel=1e-12)
        assert x["kl/p_epsilon_steps"] + x["kl/n_epsilon_steps"] <= 1.0


BETA_DPO = {"name": "beta_dpo", "rho": 0.5}
BETA_DPO_STATE = ["beta_dpo/beta", "beta_dpo/gap_mean", "beta_dpo/gap_std", "beta_dpo/kept_fraction"]


def _assert_same_beta_dpo_run(a: list[dict], b: list[dict]) -> None:
    """Same β-DPO state every step, up to the float32 noise of log-probs computed in other layouts (Δ's
    std is a difference of sums of log-probs: relative noise ~1e-6); the same pairs kept."""
    for x, y in zip(a, b, strict=True):
        assert x["beta_dpo/kept_fraction"] == y["beta_dpo/kept_fraction"], x["step"]
        for key in BETA_DPO_STATE:
            assert x[key] == pytest.approx(y[key], rel=1e-5, abs=1e-7), (x["step"], key)
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)


@pytest.mark.slow
def test_beta_dpo_statistics_independent_of_micro_batching(setup):
    """β-DPO's statistics are over the step's global batch: 1 micro-batch × 4 pairs (Δ from the step's own
    forward) and 2 micro-batches × 2 pairs (Δ from a no-grad pre-pass) give the same β_b, moving averages,
    kept fraction and loss at every step, and the same weights. With ``per_micro_batch: 1`` (the authors'
    statistics) the 2×2 run's β_b differs from the 1×4 run's."""
    root, model, pairs = setup
    kw = {"max_steps": 5}
    runs = {}
    for pmb in (0, 1):
        method = {**BETA_DPO, "per_micro_batch": pmb}
        for bs, acc in ((4, 1), (2, 2)):
            cfg = raw_cfg(
                root,
                model,
                pairs,
                f"bdpo-{pmb}-{bs}x{acc}",
                method=method,
                batch_size=bs,
                grad_accum=acc,
                **kw,
            )
            runs[(pmb, bs)] = train(from_dict(cfg)).run_dir
    a, b = metrics(runs[(0, 4)]), metrics(runs[(0, 2)])
    assert [x["step"] for x in a] == [1, 2, 3, 4, 5]
    assert a[0]["beta_dpo/kept_fraction"] == 1.0  # step 0: Δ = 0, σ = 0, nothing filtered
    assert any(x["beta_dpo/kept_fraction"] == 0.5 for x in a[1:])  # then K = int(4·0.5) = 2 of 4
    assert len({round(x["beta_dpo/beta"], 12) for x in a}) > 1  # β_b moves
    _assert_same_beta_dpo_run(a, b)
    assert_same_weights(runs[(0, 4)], runs[(0, 2)], atol=1e-5)
    # per_micro_batch on one micro-batch of 4 is the global statistic; on 2×2 it is not
    _assert_same_beta_dpo_run(a, metrics(runs[(1, 4)]))
    c = metrics(runs[(1, 2)])
    assert any(abs(x["beta_dpo/beta"] - y["beta_dpo/beta"]) > 1e-3 for x, y in zip(a, c, strict=True))


def _beta_dpo_one_process(root: Path, model: Path, pairs: Path, **kw) -> Path:
    """The 1 process × 4 pairs β-DPO run (trained once per module)."""
    run = root / "bdpo-mp-1"
    if not (run / "final").exists():
        train(from_dict(raw_cfg(root, model, pairs, run.name, method=BETA_DPO, batch_size=4, **kw)))
    return run


@pytest.mark.slow
@pytest.mark.parametrize(("batch_size", "grad_accum"), [(2, 1), (1, 2)])
def test_beta_dpo_two_processes_equal_one(setup, batch_size, grad_accum):
    """accelerate launch, 2 CPU processes (gloo) × ``batch_size`` pairs × ``grad_accum`` micro-batches = one
    process with 4 pairs at once: the margins gathered in the global order give the same β_b, moving
    averages, kept fraction (same seeded draws) and loss at every step, and the same weights."""
    root, model, pairs = setup
    kw = {"max_steps": 5}
    one = _beta_dpo_one_process(root, model, pairs, **kw)
    name = f"bdpo-mp-2-{batch_size}x{grad_accum}"
    cfg = _write_cfg(
        root / f"{name}.yaml",
        raw_cfg(
            root, model, pairs, name, method=BETA_DPO, batch_size=batch_size, grad_accum=grad_accum, **kw
        ),
    )
    proc = subprocess.run(
        ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tether.cli", "train", str(cfg)],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = metrics(one), metrics(root / name)
    assert any(x["beta_dpo/kept_fraction"] < 1 for x in a)
    _assert_same_beta_dpo_run(a, b)
    assert_same_weights(one, root / name, atol=1e-4)
