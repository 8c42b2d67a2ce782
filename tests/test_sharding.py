"""``train.sharding: fsdp``: FSDP2 on 2 CPU processes (gloo) trains to the same weights, metrics and method
state as 1 process with the same global batch; a sharded run resumes on 1 process; two launchers on the
loopback address (a two-"node" run) equal one node; what the machine cannot run is one line."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tether.config import from_dict
from tether.training.job import train

from tiny import pair_rows, write_jsonl

REPO = Path(__file__).resolve().parents[1]

# The methods whose 2-process sharded run must equal 1 process: (method, reference mode, the per-step
# method state and its relative tolerance). DPO reads a precomputed reference; ε-DPO a frozen copy, sharded
# like the policy, whose logits it needs; TR-DPO a frozen copy sharded like the policy and mixed with it
# shard by shard after every step (τ = 1), its gathered weights in every checkpoint.
METHODS = {
    "dpo": ({"name": "dpo", "beta": 0.1}, "precomputed", {}),
    # ε-DPO's β moves in discrete steps: identical
    "epsilon_dpo": ({"name": "epsilon_dpo", "beta": 0.1, "epsilon": 0.5}, "copy", {"kl/beta": 1e-9}),
    # β-DPO: the global batch's margins gathered across the shards (a pre-pass: 1 pair × 2 micro-batches
    # each); β_b is a continuous function of the margins, so it carries their float noise (~1e-7); the
    # seeded filter keeps the same pairs
    "beta_dpo": (
        {"name": "beta_dpo", "beta": 0.1},
        "precomputed",
        {"beta_dpo/beta": 1e-5, "beta_dpo/gap_mean": 1e-4, "beta_dpo/kept_fraction": 1e-12},
    ),
    # TR-DPO: the deviation of the mixed reference from the original on the step's chosen answers
    "tr_dpo": (
        {"name": "tr_dpo", "beta": 0.1, "alpha": 0.5, "tau": 1},
        "copy",
        {"tr_dpo/updates": 1e-12, "tr_dpo/ref_deviation": 1e-4},
    ),
}


PAIRS = 24  # the rows of the shared ``setup`` fixture (conftest.py)


def raw_cfg(
    root: Path, model: Path, pairs: Path, name: str, method: dict, mode: str = "auto", **train_kw
) -> dict:
    return {
        "model": {"name": str(model)},
        "data": {"train": str(pairs), "max_length": 64},
        "method": method,
        "reference": {"cache_dir": str(root / "cache"), "mode": mode},
        "train": {
            "output_dir": str(root / name),
            "max_steps": 4,
            "save_every": 2,
            "lr": 1e-2,
            "progress": False,
            "sharding": "fsdp",
            **train_kw,
        },
    }


def env() -> dict[str, str]:
    src = str(REPO / "src")
    path = os.environ.get("PYTHONPATH")
    return {
        **os.environ,
        "PYTHONPATH": src + (os.pathsep + path if path else ""),
        "OMP_NUM_THREADS": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
    }


def torchrun(cfg: Path, *overrides: str, nproc: int = 2) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    proc = subprocess.run(
        [*cmd, "-m", "tether", "train", str(cfg), *overrides],
        capture_output=True,
        text=True,
        env=env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def write_cfg(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    final = run_dir / "final"
    name = (
        "adapter_model.safetensors" if (final / "adapter_model.safetensors").exists() else "model.safetensors"
    )
    return load_file(str(final / name))


def assert_same_run(a: Path, b: Path, atol: float = 1e-4, state: dict[str, float] | None = None) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=atol, rtol=0, msg=k)
    ma, mb = metrics(a), metrics(b)
    assert [x["step"] for x in ma] == [x["step"] for x in mb]
    for x, y in zip(ma, mb, strict=True):
        if "eval/loss" in x:  # a held-out evaluation line
            assert x.keys() == y.keys()
            for k in x:
                assert x[k] == pytest.approx(y[k], abs=1e-5), k
            continue
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-4)
        for k, rel in (state or {}).items():  # a method's per-step state, from the global batch
            assert x[k] == pytest.approx(y[k], rel=rel, abs=1e-9), k


_ONE: dict[str, Path] = {}


def one_process(setup, key: str, method: dict, mode: str) -> Path:
    """The 1-process run (2 × 2 accumulated pairs per step), trained once per module."""
    if key not in _ONE:
        root, model, pairs = setup
        raw = raw_cfg(root, model, pairs, f"one-{key}", method, mode, batch_size=2, grad_accum=2)
        _ONE[key] = train(from_dict(raw)).run_dir
    return _ONE[key]


def stop_after_checkpoint(run: Path, into: Path, step: int) -> Path:
    """A copy of ``run`` as it was when killed right after the checkpoint of ``step``."""
    shutil.copytree(run, into)
    for d in (into / "checkpoints").glob("step-*"):
        if int(d.name.split("-")[1]) > step:
            shutil.rmtree(d)
    shutil.rmtree(into / "final")
    (into / "summary.json").unlink()
    return into


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_sharded_processes_equal_one_and_resume_on_one(setup, method):
    """torchrun, 2 CPU processes, 1 pair each × 2 accumulation steps, FSDP2 = 1 process with 2 × 2. Then
    the sharded run, stopped after its step-2 checkpoint, resumes on 1 process to the same end."""
    root, model, pairs = setup
    spec, mode, state = METHODS[method]
    one = one_process(setup, method, spec, mode)
    cfg = write_cfg(
        root / f"two-{method}.yaml",
        raw_cfg(root, model, pairs, f"two-{method}", spec, mode, batch_size=1, grad_accum=2),
    )
    proc = torchrun(cfg)
    what = "policy and reference" if mode == "copy" else "policy"
    assert f"{what} sharded across 2 processes (FSDP2)" in proc.stdout
    two = root / f"two-{method}"
    assert_same_run(one, two, state=state)
    ckpt = two / "checkpoints" / "step-0000002"
    live = ["reference.safetensors"] if method == "tr_dpo" else []
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(
        ["model.safetensors", "optimizer.json", "optimizer.safetensors", "trainer_state.json", *live]
    )  # the full state, no pickles
    for name in live:  # the sharded reference, gathered: equal to the 1-process run's
        a, b = (load_file(str(r / "checkpoints" / "step-0000002" / name)) for r in (one, two))
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=0, msg=k)
    resumed = stop_after_checkpoint(two, root / f"resumed-{method}", step=2)
    raw = raw_cfg(
        root, model, pairs, f"resumed-{method}", spec, mode, batch_size=1, grad_accum=4, resume=True
    )
    raw["train"]["resume_allowed_changes"] = ["train.grad_accum"]  # same global batch on 1 process
    result = train(from_dict(raw))
    assert result.resumed_from_step == 2
    assert_same_run(two, resumed, state=state)
    if method == "dpo":  # final/ is an ordinary transformers model
        from transformers import AutoModelForCausalLM

        loaded = AutoModelForCausalLM.from_pretrained(two / "final")
        w = weights(two)
        torch.testing.assert_close(loaded.state_dict()["lm_head.weight"], w["lm_head.weight"])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_lora_with_adapter_reference_sharded(setup):
    """LoRA under FSDP2 (frozen base and trainable adapter sharded together), the reference being the
    policy's own sharded base with the adapter disabled: 2 processes = 1, held-out metrics included (5
    eval pairs: the processes run 3 and 2 batches' worth, padded with a spare so that every forward meets)."""
    root, model, pairs = setup
    spec = {"name": "dpo", "beta": 0.1}
    heldout = write_jsonl(root / "heldout.jsonl", pair_rows(5, seed=1))
    raws = []
    for name, bs, ga in (("lora-one", 2, 2), ("lora-two", 1, 2)):
        raw = raw_cfg(root, model, pairs, name, spec, "adapter", batch_size=bs, grad_accum=ga, max_steps=3)
        raw["model"]["lora"] = {"r": 4, "alpha": 8, "dropout": 0.0}
        raw["data"]["eval"] = str(heldout)
        raw["train"]["eval_every"] = 2
        raws.append(raw)
    one = train(from_dict(raws[0])).run_dir
    torchrun(write_cfg(root / "lora-two.yaml", raws[1]))
    assert_same_run(one, root / "lora-two")
    assert (root / "lora-two" / "final" / "adapter_config.json").is_file()


@pytest.mark.slow
def test_sdpo_two_stages_sharded_under_accelerate_launch(setup):
    """sDPO with two stages, launched with ``accelerate launch`` (2 CPU processes; tether shards with
    FSDP2 itself): every stage equals the 1-process run's."""
    root, model, pairs = setup
    stages = {"by": "column", "column": "source", "order": ["easy", "hard"]}
    spec = {"name": "dpo", "beta": 0.1}
    raws = []
    for name, bs in (("sdpo-one", 2), ("sdpo-two", 1)):
        # lr 1e-3: one process computes the LM head with the fused HeadLogps, a sharded (DTensor) head with
        # checkpointed chunks (equal in exact arithmetic, ~1e-7 apart in fp32); at lr 1e-2 Adam turns that
        # into lr-sized steps on the few weights whose gradient is ~0 (2 of 2048 moved 1.7e-4 apart)
        raw = raw_cfg(root, model, pairs, name, spec, batch_size=bs, grad_accum=2, max_steps=2, lr=1e-3)
        raw["stages"] = stages
        raws.append(raw)
    one = train(from_dict(raws[0])).run_dir
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cfg = write_cfg(root / "sdpo-two.yaml", raws[1])
    proc = subprocess.run(
        [*launch, "-m", "tether", "train", str(cfg)], capture_output=True, text=True, env=env(), timeout=300
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("policy sharded across 2 processes (FSDP2)") == 2
    for stage in ("stage-1", "stage-2"):
        assert_same_run(one / stage, root / "sdpo-two" / stage)
    a, b = (json.loads((d / "stages.json").read_text()) for d in (one, root / "sdpo-two"))
    assert [s["gamma_ref"] for s in a] == pytest.approx([s["gamma_ref"] for s in b], abs=1e-5)


@pytest.mark.slow
def test_two_node_loopback_equals_one_node(setup):
    """Two torchrun launchers (``--nnodes 2 --nproc_per_node 1``, node ranks 0 and 1) on 127.0.0.1: the
    documented multi-node command, trained to the same weights as one node."""
    root, model, pairs = setup
    spec, mode, state = METHODS["dpo"]
    one = one_process(setup, "dpo", spec, mode)
    cfg = write_cfg(
        root / "nodes.yaml", raw_cfg(root, model, pairs, "nodes", spec, mode, batch_size=1, grad_accum=2)
    )
    port = free_port()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--nnodes=2",
                "--nproc_per_node=1",
                f"--node_rank={rank}",
                "--master_addr=127.0.0.1",
                f"--master_port={port}",
                "-m",
                "tether",
                "train",
                str(cfg),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(),
        )
        for rank in (0, 1)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-2000:] + err[-3000:]
    assert "policy sharded across 2 processes (FSDP2)" in outs[0][0]
    assert_same_run(one, root / "nodes", state=state)


@pytest.mark.parametrize(
    ("var", "gpu", "sharding", "want"),
    [
        ("ACCELERATE_USE_FSDP", False, "none", "accelerate: FSDP was requested"),
        ("ACCELERATE_USE_DEEPSPEED", False, "fsdp", "accelerate: DeepSpeed was requested"),
        ("ACCELERATE_USE_FSDP", True, "fsdp", "train.sharding: fsdp shards the model itself"),
    ],
)
def test_a_sharding_mode_the_machine_cannot_run_is_one_line(
    setup, monkeypatch, capsys, var, gpu, sharding, want
):
    """accelerate's FSDP/DeepSpeed on a machine without CUDA (pointing at train.sharding: fsdp and the CPU
    command), or both shardings at once: exit 2 and one line, before anything loads; silent on rank 1."""
    from tether.cli import main as cli_main

    root, model, pairs = setup
    cfg = write_cfg(root / "bad.yaml", raw_cfg(root, model, pairs, "bad", {"name": "dpo"}, sharding=sharding))
    monkeypatch.setenv(var, "true")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    for rank in ("0", "1"):
        monkeypatch.setenv("RANK", rank)
        assert cli_main(["train", str(cfg)]) == 2
        err = capsys.readouterr().err
        if rank == "1":
            assert err == ""
            continue
        assert err.startswith(f"error: {want}") and err.count("\n") == 1, err
        if not gpu:
            assert "train.sharding: fsdp" in err and "torchrun --nproc_per_node 2" in err
    assert not (root / "bad").exists()


@pytest.mark.slow
def test_tr_dpo_one_process_checkpoint_resumes_sharded(setup):
    """TR-DPO's checkpoint of a 1-process run (its reference in one file) resumes on 2 sharded processes:
    the file is loaded into the sharded reference, and the run ends where the uninterrupted one does."""
    root, model, pairs = setup
    spec, mode, state = METHODS["tr_dpo"]
    one = one_process(setup, "tr_dpo", spec, mode)
    stop_after_checkpoint(one, root / "one-tr-resumed", step=2)
    raw = raw_cfg(root, model, pairs, "one-tr-resumed", spec, mode, batch_size=1, grad_accum=2, resume=True)
    raw["train"]["resume_allowed_changes"] = ["train.batch_size"]  # same global batch on 2 processes
    proc = torchrun(write_cfg(root / "one-tr-resumed.yaml", raw))
    assert "resuming from step 2" in proc.stdout
    assert_same_run(one, root / "one-tr-resumed", state=state)
