"""TR-DPO (arXiv:2404.09656): a live reference mixed with the policy every τ optimizer steps.

The mixing equals TRL 1.16's ``SyncRefModelCallback``; α = 0 (or τ beyond the run) is DPO's trajectory; the
reference in every checkpoint equals the update rule applied by hand to the policy weights saved at the
update steps (soft and hard); a resumed run equals the uninterrupted one, reference included; sDPO stages
restart the reference (and its update count) at each stage's starting model.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tether.config import from_dict
from tether.engine.reference import mix_parameters
from tether.errors import ConfigError
from tether.training.job import train

from tiny import tiny_model


def raw_cfg(root, model, pairs, name, method, **train_kw) -> dict:
    return {
        "model": {"name": str(model)},
        "data": {"train": str(pairs), "max_length": 64},
        "method": method,
        "reference": {"cache_dir": str(root / "cache")},
        "train": {
            "output_dir": str(root / name),
            "batch_size": 2,
            "max_steps": 5,
            "lr": 1e-2,
            "scheduler": "constant",
            "save_total_limit": None,
            "progress": False,
            **train_kw,
        },
    }


def run(setup, name, method, stages=None, **train_kw):
    raw = raw_cfg(*setup, name, method, **train_kw)
    if stages is not None:
        raw["stages"] = stages
    return train(from_dict(raw))


def metrics(run_dir) -> list[dict]:
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def policy_at(run_dir, step: int) -> dict[str, torch.Tensor]:
    """The policy's weights saved at ``step`` under the model's own names (as the reference file has them)."""
    w = load_file(str(Path(run_dir) / "checkpoints" / f"step-{step:07d}" / "model.safetensors"))
    return {k.removeprefix("model."): v for k, v in w.items()}


def reference_at(run_dir, step: int) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir) / "checkpoints" / f"step-{step:07d}" / "reference.safetensors"))


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


# ------------------------------------------------------------------------------------------------
# The mixing: TRL's oracle
# ------------------------------------------------------------------------------------------------


def _moved(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    moved = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return moved


@pytest.mark.parametrize("alpha", [0.6, 0.5, 1.0, 0.0, 0.05])
def test_mixing_equals_trl_sync_ref_model_callback(alpha):
    from trl.trainer.callbacks import SyncRefModelCallback

    ref = tiny_model(0)
    policy = _moved(ref, seed=1)
    ours, theirs = copy.deepcopy(ref), copy.deepcopy(ref)
    for _ in range(3):  # three successive updates, the policy moving in between
        mix_parameters(ours, policy, alpha)
        SyncRefModelCallback._sync_target_model(policy, theirs, alpha)
        policy = _moved(policy, seed=2)
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=name)
    if alpha == 0.0:
        assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), ref.parameters(), strict=True))


def test_mixing_is_fp32_and_mixes_a_tied_weight_once():
    """bf16 weights are mixed in fp32 and rounded once; a tied embedding/head is mixed once, stays tied."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, tie_word_embeddings=True,
    )  # fmt: skip
    ref = LlamaForCausalLM(cfg)
    policy = _moved(ref, seed=3)
    start = {k: v.clone() for k, v in ref.state_dict().items()}
    mix_parameters(ref, policy, 0.3)
    assert ref.lm_head.weight is ref.model.embed_tokens.weight
    want = 0.7 * start["model.embed_tokens.weight"] + 0.3 * policy.model.embed_tokens.weight.detach()
    torch.testing.assert_close(ref.model.embed_tokens.weight.detach(), want, atol=1e-6, rtol=0)
    bf_ref, bf_pol = copy.deepcopy(tiny_model(0)).bfloat16(), _moved(tiny_model(0), seed=4).bfloat16()
    before = {k: v.float() for k, v in bf_ref.state_dict().items()}
    mix_parameters(bf_ref, bf_pol, 0.6)
    for name, p in bf_ref.named_parameters():
        exact = 0.4 * before[name].double() + 0.6 * dict(bf_pol.named_parameters())[name].detach().double()
        assert p.dtype == torch.bfloat16, name  # rounded once: within a bf16 ulp (2^-7) of the exact mix
        torch.testing.assert_close(p.detach().double(), exact, atol=1e-6, rtol=2**-7, msg=name)


# ------------------------------------------------------------------------------------------------
# Runs: the limits, the update rule in the checkpoints, resume, sDPO
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_alpha_zero_and_tau_beyond_the_run_are_dpo(setup):
    """Step 0's loss is ln 2; α = 0 (updates that change nothing) and τ > max_steps give exactly the
    weights and losses of DPO with a frozen-copy reference."""
    root, model, pairs = setup
    raw = raw_cfg(root, model, pairs, "dpo-copy", {"name": "dpo", "beta": 0.1}, max_steps=4)
    raw["reference"]["mode"] = "copy"
    dpo = train(from_dict(raw))
    want = load_file(str(dpo.run_dir / "final" / "model.safetensors"))
    losses = [m["loss"] for m in metrics(dpo.run_dir)]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-6)
    for name, method in (
        ("alpha0", {"name": "tr_dpo", "alpha": 0.0, "tau": 1}),
        ("tau-long", {"name": "tr_dpo", "alpha": 0.6, "tau": 100}),
    ):
        r = run(setup, name, method, max_steps=4)
        assert r.reference_mode == "copy"
        got = load_file(str(r.run_dir / "final" / "model.safetensors"))
        assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want), name
        m = metrics(r.run_dir)
        assert [x["loss"] for x in m] == losses
        assert [x["tr_dpo/updates"] for x in m] == ([1.0, 2.0, 3.0, 4.0] if name == "alpha0" else [0.0] * 4)
        assert [x["tr_dpo/ref_deviation"] for x in m] == pytest.approx([0.0] * 4, abs=1e-6)


@pytest.mark.parametrize(("alpha", "tau"), [(0.5, 2), (1.0, 2)])
def test_reference_is_the_update_rule_applied_to_saved_policies(setup, alpha, tau):
    """ref_k = ref_0 mixed with the policy saved at steps τ, 2τ, … ≤ k (ref_0: the starting model), by hand;
    ``tr_dpo/updates`` counts them; the deviation metric moves once the reference has."""
    model = setup[1]
    r = run(setup, f"rule-{alpha}-{tau}", {"name": "tr_dpo", "alpha": alpha, "tau": tau}, save_every=1)
    expected = load_file(str(model / "model.safetensors"))
    m = metrics(r.run_dir)
    for k in range(1, 6):
        if k % tau == 0:
            theta = policy_at(r.run_dir, k)
            expected = {n: ((1 - alpha) * v.float() + alpha * theta[n].float()) for n, v in expected.items()}
        assert_same(reference_at(r.run_dir, k), expected, atol=1e-6)
        assert m[k - 1]["tr_dpo/updates"] == k // tau
        state = json.loads((r.run_dir / "checkpoints" / f"step-{k:07d}" / "trainer_state.json").read_text())
        assert state["reference_updates"] == k // tau
    assert (r.run_dir / "plots" / "tr_dpo.png").is_file()  # the declared state plot, drawn by tether report
    if alpha == 1.0:  # the hard update: the reference *is* the policy of step 4 after it
        assert_same(reference_at(r.run_dir, 5), policy_at(r.run_dir, 4), atol=0)
    # measured before step τ's update: the reference is still the original (up to float noise of the batching)
    assert [x["tr_dpo/ref_deviation"] for x in m[:tau]] == pytest.approx([0.0] * tau, abs=1e-6)
    assert all(abs(x["tr_dpo/ref_deviation"]) > 1e-4 for x in m[tau:])


@pytest.mark.slow
def test_resumed_run_equals_the_uninterrupted_one(setup):
    """Stopped after step 3 (one update behind it, at step 2) and resumed to step 6: every step's metrics,
    the final weights and the final reference equal the uninterrupted run's. TRL does not save the
    updated reference: a resumed run would restart from the original one, and step 4's loss would differ."""
    method = {"name": "tr_dpo", "alpha": 0.5, "tau": 2}
    full = run(setup, "full", method, max_steps=6, save_every=3)
    part = run(setup, "part", method, max_steps=3, save_every=3)
    raw = raw_cfg(*setup, "part", method, max_steps=6, save_every=3)
    raw["train"]["resume"] = True
    resumed = train(from_dict(raw))
    assert resumed.resumed_from_step == 3 and part.steps == 3
    a, b = metrics(full.run_dir), metrics(resumed.run_dir)
    assert [x["step"] for x in b] == list(range(1, 7))
    for x, y in zip(a, b, strict=True):
        for k in ("loss", "tr_dpo/updates", "tr_dpo/ref_deviation", "rewards/margins"):
            assert x[k] == pytest.approx(y[k], abs=1e-6), (x["step"], k)
    assert_same(reference_at(full.run_dir, 6), reference_at(resumed.run_dir, 6), atol=1e-6)
    assert_same(policy_at(full.run_dir, 6), policy_at(resumed.run_dir, 6), atol=1e-6)


@pytest.mark.slow
def test_kill_and_resume_reproduces_the_run_reference_included(setup):
    """SIGKILL mid-run (``tether train`` in a subprocess), resume from the last checkpoint: every step's
    metrics, the final weights and the final reference equal the uninterrupted run's."""
    import subprocess

    import yaml

    from tiny import train_then_kill

    method = {"name": "tr_dpo", "alpha": 0.5, "tau": 3}
    kw = {"max_steps": 24, "save_every": 4, "lr": 3e-3, "save_total_limit": 2}
    full = run(setup, "kill-full", method, **kw)
    path = setup[0] / "kill.yaml"
    path.write_text(yaml.safe_dump(raw_cfg(*setup, "killed", method, **kw)))
    killed = setup[0] / "killed"
    cmd = train_then_kill(path, killed / "metrics.jsonl", after_lines=7)
    assert not (killed / "final").exists()
    resumed = subprocess.run([*cmd, "train.resume=true"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from step " in resumed.stdout
    a, b = metrics(full.run_dir), metrics(killed)
    assert [x["step"] for x in b] == list(range(1, 25))
    for x, y in zip(a, b, strict=True):
        for k in ("loss", "tr_dpo/updates", "tr_dpo/ref_deviation"):
            assert x[k] == pytest.approx(y[k], abs=1e-6), (x["step"], k)
    assert_same(reference_at(full.run_dir, 24), reference_at(killed, 24), atol=1e-6)
    assert_same(policy_at(full.run_dir, 24), policy_at(killed, 24), atol=1e-6)


@pytest.mark.slow
def test_two_processes_equal_one(setup):
    """accelerate launch, 2 CPU processes (DDP over gloo), 1 pair each × 2 accumulation steps = one process
    with 2 × 2, the reference updated every step: same losses, weights and (saved) reference."""
    import os
    import subprocess

    import yaml

    method = {"name": "tr_dpo", "alpha": 0.5, "tau": 1}
    one = run(setup, "mp-1", method, batch_size=2, grad_accum=2, max_steps=3)
    path = setup[0] / "mp.yaml"
    path.write_text(yaml.safe_dump(raw_cfg(*setup, "mp-2", method, batch_size=1, grad_accum=2, max_steps=3)))
    launch = ["accelerate", "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    launch += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", "tether.cli", "train", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(launch, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = setup[0] / "mp-2"
    for x, y in zip(metrics(one.run_dir), metrics(two), strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)
        assert x["tr_dpo/updates"] == y["tr_dpo/updates"]
    assert_same(reference_at(one.run_dir, 3), reference_at(two, 3), atol=1e-4)
    assert_same(policy_at(one.run_dir, 3), policy_at(two, 3), atol=1e-4)


@pytest.mark.slow
def test_a_checkpoint_without_its_reference_is_not_resumed(setup, capsys):
    method = {"name": "tr_dpo", "alpha": 0.5, "tau": 1}
    r = run(setup, "noref", method, max_steps=2, save_every=1)
    (r.run_dir / "checkpoints" / "step-0000002" / "reference.safetensors").unlink()
    raw = raw_cfg(*setup, "noref", method, max_steps=3, save_every=1)
    raw["train"]["resume"] = True
    resumed = train(from_dict(raw))
    assert resumed.resumed_from_step == 1
    assert "step-0000002 is unusable (reference.safetensors: missing)" in capsys.readouterr().out


@pytest.mark.slow
def test_sdpo_stages_restart_the_reference_at_each_stage(setup):
    """With stages, stage 2's reference starts as stage 1's final model and its updates (hard, τ = 2)
    restart from there: step 1's reference is stage 1's final model, step 2's update copies stage 2's
    policy, and the count starts again at 0."""
    stages = {"by": "column", "column": "source", "order": ["easy", "hard"]}
    method = {"name": "tr_dpo", "alpha": 1.0, "tau": 2}
    r = run(setup, "staged", method, stages=stages, max_steps=3, save_every=1)
    s1, s2 = r.run_dir / "stage-1", r.run_dir / "stage-2"
    stage1_final = load_file(str(s1 / "final" / "model.safetensors"))
    assert_same(reference_at(s2, 1), stage1_final, atol=0)
    assert_same(reference_at(s2, 2), policy_at(s2, 2), atol=0)
    assert_same(reference_at(s2, 3), policy_at(s2, 2), atol=0)
    for stage in (s1, s2):
        m = metrics(stage)
        assert [x["tr_dpo/updates"] for x in m] == [0.0, 1.0, 1.0]
        assert [x["tr_dpo/ref_deviation"] for x in m[:2]] == pytest.approx([0.0, 0.0], abs=1e-6)
    # stage 2's γ_ref is measured with its starting reference (stage 1's model)
    assert r.stages[1]["gamma_ref"] != r.stages[0]["gamma_ref"]


# ------------------------------------------------------------------------------------------------
# Config: one line naming the key, before any weight loads
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("patch", "key", "words"),
    [
        ({"reference": {"mode": "precomputed"}}, "reference.mode", "precomputed table cannot follow"),
        ({"model": {"lora": {"r": 4}}}, "model.lora", "use full fine-tuning"),
        ({"reference": {"model": "other"}}, "reference.model", "remove reference.model"),
        ({"method": {"name": "tr_dpo", "alpha": 1.5}}, "method.alpha", "outside [0, 1]"),
        ({"method": {"name": "tr_dpo", "alpha": -0.1}}, "method.alpha", "outside [0, 1]"),
        ({"method": {"name": "tr_dpo", "tau": 0}}, "method.tau", "outside the integers in [1, inf)"),
        ({"method": {"name": "tr_dpo", "tau": 2.5}}, "method.tau", "must be a whole number"),
        ({"method": {"name": "tr_dpo", "tau": math.inf}}, "method.tau", "outside"),
    ],
)
def test_bad_config_is_refused_at_load(patch, key, words):
    raw = {
        "model": {"name": "no-such-model"},
        "data": {"train": "no-such.jsonl"},
        "method": {"name": "tr_dpo"},
    }
    for section, values in patch.items():
        raw[section] = {**raw.get(section, {}), **values}
    with pytest.raises(ConfigError) as e:
        from_dict(raw)
    assert e.value.key == key or str(e.value).startswith(key)
    assert str(e.value).startswith(key) and words in str(e.value) and "\n" not in str(e.value)


def test_auto_reference_is_a_copy_and_tau_reloads():
    cfg = from_dict({"data": {"train": "x.jsonl"}, "method": {"name": "tr_dpo", "tau": 4.0}})
    from tether.training.run import reference_mode

    method, hp = cfg.resolved_method()
    assert reference_mode(cfg, method) == "copy"
    assert hp == {"beta": 0.1, "alpha": 0.6, "tau": 4.0}
    assert [method.reference_update(s, hp) for s in range(1, 9)] == [None, None, None, 0.6] * 2
