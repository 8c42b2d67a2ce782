"""Trainer invariants: gradient accumulation, reference modes, multi-process, kill-and-resume, ε-DPO's β."""

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

from tiny import pair_rows, tiny_model_dir, train_then_kill, write_jsonl

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("inv")
    model = tiny_model_dir(root / "model")
    pairs = write_jsonl(root / "pairs.jsonl", pair_rows(24))
    return root, model, pairs


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


def test_kill_and_resume_reproduces_run(setup):
    """SIGKILL mid-run, resume from the last checkpoint: the metrics of every step equal the
    uninterrupted run's, and ε-DPO's β is restored from the checkpoint."""
    root, model, pairs = setup
    method = {"name": "epsilon_dpo", "beta": 0.1, "epsilon": 0.5}
    kw = {"batch_size": 2, "max_steps": 40, "save_every": 4, "lr": 3e-3, "save_total_limit": 2}
    full = train(from_dict(raw_cfg(root, model, pairs, "full", method=method, **kw)))
    cfg = _write_cfg(root / "kill.yaml", raw_cfg(root, model, pairs, "killed", method=method, **kw))
    cmd = train_then_kill(cfg, root / "killed" / "metrics.jsonl", after_lines=6)
    assert not (root / "killed" / "final").exists()
    resumed = subprocess.run([*cmd, "train.resume=true"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = metrics(full.run_dir), metrics(root / "killed")
    assert [x["step"] for x in b] == list(range(1, 41))
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)
        assert x["kl/beta"] == pytest.approx(y["kl/beta"], rel=1e-12)
    assert_same_weights(full.run_dir, root / "killed", atol=1e-6)


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
