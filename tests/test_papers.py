"""The four papers' methods in training runs on a tiny model: the properties each paper relies on."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from tether.config import from_dict
from tether.contract import LossInputs, Perturbed, SequenceLogps
from tether.engine.logprobs import LogProbModel, response_logps
from tether.methods.losses import epsilon_criterion, epsilon_mixtures
from tether.training.job import train

from tiny import pair_rows, pair_table, sft_rows, tiny_model, tiny_model_dir, write_jsonl


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("papers")
    model = tiny_model_dir(root / "model")
    pairs = write_jsonl(root / "pairs.jsonl", pair_rows(16))
    sft = write_jsonl(root / "sft.jsonl", sft_rows(16))
    return root, model, pairs, sft


def run(root, model, data, name, method, **train_kw):
    raw = {
        "model": {"name": str(model)},
        "data": {"train": str(data), "max_length": 64},
        "method": method,
        "reference": {"cache_dir": str(root / "cache")},
        "train": {
            "output_dir": str(root / name),
            "batch_size": 4,
            "max_steps": 1,
            "lr": 1e-2,
            "progress": False,
            **train_kw,
        },
    }
    if "lora" in train_kw:
        raw["model"]["lora"] = raw["train"].pop("lora")
    return train(from_dict(raw))


def metrics(result) -> list[dict]:
    return [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]


def final_weights(result):
    from safetensors.torch import load_file

    return load_file(str(result.final_model_dir / "model.safetensors"))


# ------------------------------------------------------------------------------------------------
# MinorSFT
# ------------------------------------------------------------------------------------------------


def test_minor_sft_equals_sft_at_step_zero(setup):
    """At step 0 r = 0, so MinorSFT's weight 2σ(0) = 1: same loss and the same first update as SFT."""
    root, model, _, sft = setup
    a = run(root, model, sft, "sft0", {"name": "sft"})
    b = run(root, model, sft, "minor0", {"name": "minor_sft", "beta": 0.04})
    assert metrics(a)[0]["loss"] == pytest.approx(metrics(b)[0]["loss"], abs=1e-7)
    wa, wb = final_weights(a), final_weights(b)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], atol=1e-7, rtol=0)
    assert metrics(a)[0]["deviation"] == pytest.approx(0.0, abs=1e-5)  # SFT logs m_θ too


@pytest.mark.slow
def test_minor_sft_weight_shrinks_as_the_model_drifts(setup):
    """MinorSFT's per-sample weight 2σ(−β r) starts at 1 and falls as the summed log-ratio r grows.

    (Observed here: under AdamW a weight shared by the whole batch is largely normalised away, so at this
    scale MinorSFT's deviation tracks SFT's; see docs/results.md.)"""
    root, model, _, sft = setup
    b = metrics(run(root, model, sft, "minor-long", {"name": "minor_sft", "beta": 0.5}, max_steps=6, lr=3e-2))
    weights = [x["minor_sft/weight"] for x in b]
    assert weights[0] == pytest.approx(1.0, abs=1e-6)
    assert weights[-1] < 0.5 and b[-1]["deviation"] > 0


@pytest.mark.slow
def test_minor_dpo_logs_clamped_fraction(setup):
    root, model, pairs, _ = setup
    m = metrics(run(root, model, pairs, "minor-dpo", {"name": "minor_dpo"}, max_steps=8))
    assert all(0.0 <= x["minor_dpo/clamped"] <= 1.0 for x in m)
    assert max(x["minor_dpo/clamped"] for x in m[1:]) > 0  # rejected answers fall below the reference


# ------------------------------------------------------------------------------------------------
# ASFT
# ------------------------------------------------------------------------------------------------


def test_asft_has_no_reference_anywhere(setup, monkeypatch):
    """No reference copy, no reference precompute, and exactly one decoder forward per micro-batch."""
    from transformers.models.llama import modeling_llama

    import tether.engine.reference as reference
    import tether.engine.reference_build as build_mod

    def forbidden(*a, **k):
        raise AssertionError("ASFT touched a reference")

    monkeypatch.setattr(reference, "frozen_copy", forbidden)
    monkeypatch.setattr(build_mod, "frozen_copy", forbidden)
    monkeypatch.setattr(build_mod, "compute_table", forbidden)
    assert LogProbModel(tiny_model()).supports_segments()  # the layout probe runs here, not counted below
    calls = []
    original = modeling_llama.LlamaModel.forward

    def counting(self, *a, **k):
        calls.append(k.get("input_ids").shape if k.get("input_ids") is not None else None)
        return original(self, *a, **k)

    monkeypatch.setattr(modeling_llama.LlamaModel, "forward", counting)
    root, model, pairs, _ = setup
    result = run(root, model, pairs, "asft-noref", {"name": "asft"}, max_steps=3, batch_size=2, grad_accum=2)
    assert result.reference_mode == "none"
    assert len(calls) == 3 * 2  # one forward per micro-batch: chosen and rejected rows together
    assert all(shape[0] == 1 for shape in calls)  # 2 pairs packed in one row, no extra reference rows
    assert "deviation" not in metrics(result)[-1]


def _mean_logps(model_dir, pairs) -> tuple[float, float]:
    """Mean summed log-prob of the chosen and of the rejected answers of every pair, under ``model_dir``."""
    _, t = pair_table(model_dir, pairs)
    return t[:, 0].mean().item(), t[:, 1].mean().item()


@pytest.mark.slow
def test_asft_raises_chosen_and_lowers_rejected_dpo_mostly_lowers_rejected(tmp_path):
    """The ASFT paper's observation, on the same pairs before and after training: ASFT (absolute
    likelihood) raises the chosen likelihood and lowers the rejected one; DPO (Bradley-Terry, relative)
    gets its margin mostly by pushing the rejected answer down. (At this scale DPO's chosen likelihood did
    not fall, so that part of the paper's picture is not asserted.)"""
    import random

    model = tiny_model_dir(tmp_path / "model")
    rng = random.Random(0)
    rows = []
    for _ in range(16):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        rows.append(
            {
                "prompt": f"what is {a}+{b}?",
                "chosen": f"{a + b}",
                "rejected": "".join(rng.choice("xyzqv") for _ in range(3)),
            }
        )
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    kw = {"max_steps": 12, "lr": 1e-2, "batch_size": 8}
    asft = run(tmp_path, model, pairs, "asft-dyn", {"name": "asft", "beta": 0.1}, **kw)
    dpo = run(tmp_path, model, pairs, "dpo-dyn", {"name": "dpo", "beta": 0.1}, **kw)
    w0, l0 = _mean_logps(model, pairs)
    wa, la = _mean_logps(asft.final_model_dir, pairs)
    wd, ld = _mean_logps(dpo.final_model_dir, pairs)
    assert wa > w0 and la < l0
    assert (l0 - ld) > (wd - w0)  # DPO: the rejected side moves more than the chosen side
    assert (wa - la) > (w0 - l0)  # ASFT widens the likelihood margin


# ------------------------------------------------------------------------------------------------
# ε-DPO
# ------------------------------------------------------------------------------------------------


def _criterion_from_logits(z, z_ref, ids, mask, eps, per_token: bool):
    """s from explicit logits [2, T, V] (row 0 chosen, row 1 rejected), per token or whole-sequence."""
    ident = nn.Identity()
    mix = lambda a, b, y: epsilon_mixtures(a, b, y, {"epsilon": eps})  # noqa: E731
    rows = response_logps(z, ident, ids, mask, ref_hidden=z_ref, ref_head=ident, mix=mix)
    ref = response_logps(z_ref, ident, ids, mask)
    if per_token:
        plus, minus = rows.mixed[:, 0], rows.mixed[:, 1]
    else:  # mixing whole-sequence log-probs (the wrong algorithm)
        plus = (1 + eps) * rows.sum - eps * ref.sum
        minus = (1 - eps) * rows.sum + eps * ref.sum
    seq = lambda i: SequenceLogps(rows.sum[i : i + 1], rows.n_tokens[i : i + 1])  # noqa: E731
    inp = LossInputs(
        chosen=seq(0),
        rejected=seq(1),
        ref_chosen=ref.sum[:1],
        ref_rejected=ref.sum[1:],
        chosen_perturbed=Perturbed(plus[:1], minus[:1]),
        rejected_perturbed=Perturbed(plus[1:], minus[1:]),
    )
    margin = (rows.sum[0] - ref.sum[0]) - (rows.sum[1] - ref.sum[1])
    return int(epsilon_criterion(inp).item()), float(margin)


def test_epsilon_per_token_mixing_differs_from_whole_sequence_mixing():
    """Whole-sequence mixing gives LR± − LR = ±ε·(LR − LR_ref), i.e. s = sign(Δ) always; the per-token
    log-softmax renormalisation does not, and tether's s differs from sign(Δ) on a constructed case."""
    eps, vocab, length = 0.5, 6, 4
    ids = torch.tensor([[0, 1, 2, 3], [0, 1, 4, 5]])
    mask = torch.tensor([[False, True, True, True]] * 2)
    found = 0
    for seed in range(200):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(2, length, vocab, generator=g, dtype=torch.float64) * 3
        z_ref = torch.randn(2, length, vocab, generator=g, dtype=torch.float64) * 3
        s_seq, margin = _criterion_from_logits(z, z_ref, ids, mask, eps, per_token=False)
        assert s_seq == (1 if margin > 0 else -1)  # the collapse, on every case
        s_tok, _ = _criterion_from_logits(z, z_ref, ids, mask, eps, per_token=True)
        found += s_tok != s_seq
    assert found > 0


def test_epsilon_dpo_logs_its_measurements(setup):
    root, model, pairs, _ = setup
    m = metrics(
        run(root, model, pairs, "eps-log", {"name": "epsilon_dpo", "beta": 0.1, "epsilon": 0.5}, max_steps=3)
    )
    for k in ("kl/beta", "kl/p_epsilon_steps", "kl/n_epsilon_steps", "rewards/margins", "deviation"):
        assert k in m[-1]


# ------------------------------------------------------------------------------------------------
# sDPO with LoRA
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_sdpo_lora_stage_two_reference_is_merged_stage_one(setup):
    root, model, pairs, _ = setup
    raw = {
        "model": {"name": str(model), "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
        "data": {"train": str(pairs), "max_length": 64},
        "method": {"name": "dpo"},
        "reference": {"cache_dir": str(root / "cache")},
        "stages": {"by": "column", "column": "source", "order": ["easy", "hard"]},
        "train": {
            "output_dir": str(root / "sdpo-lora"),
            "batch_size": 2,
            "max_steps": 3,
            "lr": 5e-2,
            "progress": False,
        },
    }
    result = train(from_dict(raw))
    merged = root / "sdpo-lora" / "stage-1" / "final" / "merged"
    assert (merged / "model.safetensors").exists()
    ex, t1 = pair_table(merged, pairs)
    _, t0 = pair_table(model, pairs)
    hard = [i for i, e in enumerate(ex) if e.meta["source"] == "hard"]
    t1, t0 = t1[hard], t0[hard]
    g1, g0 = (t1[:, 0] - t1[:, 1]).mean().item(), (t0[:, 0] - t0[:, 1]).mean().item()
    assert result.stages[1]["gamma_ref"] == pytest.approx(g1, abs=1e-4)
    assert abs(g1 - g0) > 1e-3
