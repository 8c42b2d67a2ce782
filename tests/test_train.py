"""End-to-end runs on a tiny model built in the test: every method trains, the run directory is complete."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tether.config import from_dict
from tether.methods.registry import METHODS
from tether.training.job import train

from tiny import pair_rows, sft_rows, tiny_model_dir, unpaired_rows, write_jsonl


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("e2e")
    model = tiny_model_dir(root / "model")
    pairs = write_jsonl(root / "pairs.jsonl", pair_rows(16))
    sft = write_jsonl(root / "sft.jsonl", sft_rows(16))
    unpaired = write_jsonl(root / "unpaired.jsonl", unpaired_rows(16))
    return root, model, pairs, sft, unpaired


def config(root, model, data, method, **train):
    return from_dict(
        {
            "model": {"name": str(model)},
            "data": {"train": str(data), "max_length": 64},
            "method": {"name": method},
            "reference": {"cache_dir": str(root / "cache")},
            "train": {
                "output_dir": str(root / "runs" / method),
                "batch_size": 2,
                "max_steps": 3,
                "lr": 1e-2,
                "progress": False,
                **train,
            },
        }
    )


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains(setup, method):
    root, model, pairs, sft, unpaired = setup
    m = METHODS[method]
    cfg = config(root, model, {"sft": sft, "pairs": pairs, "unpaired": unpaired}[m.data], method)
    result = train(cfg)
    assert result.steps == 3
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in lines)
    if m.uses_reference:
        assert "deviation" in lines[-1]
    before = load_file(str(model / "model.safetensors"))
    after = load_file(str(result.final_model_dir / "model.safetensors"))
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "no parameter changed"
    assert (result.run_dir / "config.yaml").exists() and (result.run_dir / "summary.json").exists()


def test_an_unpaired_method_needs_only_its_loss_and_registry_entry(setup, monkeypatch):
    """The extension point of the data model: a loss on unpaired rows (prompt, completion, boolean label)
    registered in METHODS trains end to end, its loss seeing each row's label and reference log-probs."""
    from tether.contract import LossInputs, LossOutput
    from tether.methods.registry import Method

    root, model, pairs, _sft, unpaired = setup
    seen: list[torch.Tensor] = []

    def toy(inp: LossInputs, *, beta: float) -> LossOutput:
        assert inp.label is not None and inp.rejected is None and inp.ref_chosen is not None
        seen.append(inp.label.clone())
        sign = inp.label.float() * 2 - 1  # desirable: raise the likelihood, undesirable: lower it
        return LossOutput(losses=-beta * sign * (inp.chosen.sum - inp.ref_chosen))

    toy_method = Method("toy_unpaired", toy, "a test", "-", "unpaired", True, "toy", defaults={"beta": 0.1})
    monkeypatch.setitem(METHODS, "toy_unpaired", toy_method)
    result = train(config(root, model, unpaired, "toy_unpaired"))
    assert result.steps == 3
    labels = torch.cat(seen)
    assert labels.dtype == torch.bool and labels.any() and not labels.all()
    with pytest.raises(Exception, match="unpaired rows"):  # pairs given to an unpaired method: one clear line
        train(config(root, model, pairs, "toy_unpaired", overwrite=True))


def test_beta_dpo_logs_its_state_saves_it_and_plots_it(setup):
    """β-DPO (2 micro-batches × 2 pairs: the pre-pass path) logs β_b, the kept fraction and the moving
    averages every step, saves them in the checkpoint's hparams, and its run draws ``beta_dpo.png``;
    evaluation is DPO at the base β with every pair kept."""
    root, model, pairs, _sft, _unpaired = setup
    cfg = config(
        root,
        model,
        pairs,
        "beta_dpo",
        batch_size=2,
        grad_accum=2,
        max_steps=4,
        output_dir=str(root / "runs" / "bdpo-state"),
    )
    cfg.method.params.update({"rho": 0.5})
    cfg.data.eval = str(pairs)
    result = train(cfg)
    lines = [json.loads(x) for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss" in r]
    assert [r["step"] for r in steps] == [1, 2, 3, 4]
    for r in steps:
        assert {"beta_dpo/beta", "beta_dpo/kept_fraction", "beta_dpo/gap_mean", "beta_dpo/gap_std"} <= set(r)
    assert steps[0]["beta_dpo/beta"] == pytest.approx(0.1, abs=1e-12)  # step 0: Δ = 0, β_b = β
    assert steps[0]["beta_dpo/kept_fraction"] == 1.0 and steps[-1]["beta_dpo/kept_fraction"] == 0.5
    final = [r for r in lines if "eval/loss" in r][-1]
    assert final["eval/beta_dpo/kept_fraction"] == 1.0
    state = json.loads(next((result.run_dir / "checkpoints").glob("step-*/trainer_state.json")).read_text())
    assert state["hparams"]["gap_std"] == pytest.approx(steps[-1]["beta_dpo/gap_std"], rel=1e-12)
    assert state["hparams"]["beta_batch"] == pytest.approx(steps[-1]["beta_dpo/beta"], rel=1e-12)
    assert "beta_dpo.png" in {p.name for p in result.plots}


@pytest.mark.parametrize("mode", ["precomputed", "copy"])
@pytest.mark.parametrize("grad_accum", [1, 2])
def test_beta_dpo_extra_work_is_one_no_grad_forward_per_micro_batch_only_with_accumulation(
    setup, monkeypatch, grad_accum, mode
):
    """With one micro-batch per step β-DPO's margins come from the step's own forward: the same forwards
    as DPO. With 2 micro-batches the global statistics need a no-grad pre-pass: one extra policy forward
    per micro-batch, without gradients; a frozen-copy reference runs no more often than for DPO (the
    pre-pass's reference log-probs are reused)."""
    from tether.engine.logprobs import LogProbModel

    root, model, pairs, _sft, _unpaired = setup
    forward = LogProbModel.forward
    calls: dict[str, list[bool]] = {}

    def counting(self, *a, **kw):
        calls[current].append(torch.is_grad_enabled())
        return forward(self, *a, **kw)

    monkeypatch.setattr(LogProbModel, "forward", counting)
    bs = 4 // grad_accum
    # the first run fills the reference cache; the counted runs both read it
    for current, method in (("warm-up", "dpo"), ("dpo", "dpo"), ("beta_dpo", "beta_dpo")):
        calls[current] = []
        out = str(root / "runs" / f"work-{current}-{grad_accum}-{mode}")
        cfg = config(
            root, model, pairs, method, batch_size=bs, grad_accum=grad_accum, max_steps=2, output_dir=out
        )
        cfg.reference.mode = mode
        train(cfg)
    steps = 2 * grad_accum
    assert calls["dpo"].count(True) == steps  # the training forwards
    extra = len(calls["beta_dpo"]) - len(calls["dpo"])
    assert extra == (0 if grad_accum == 1 else steps)
    assert calls["beta_dpo"].count(True) == calls["dpo"].count(True)
