"""End-to-end runs on a tiny model built in the test: every method trains, the run directory is complete."""

from __future__ import annotations

import json
from pathlib import Path

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
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert changed, "no parameter changed"
    assert (result.run_dir / "config.yaml").exists() and (result.run_dir / "summary.json").exists()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux only: the peak is reset")
def test_peak_rss_is_the_runs_own_after_a_larger_peak_in_the_same_process(setup):
    """A sweep trains its runs in one process: each summary's peak RSS is that run's, not the process's."""
    root, model, pairs, *_ = setup
    big = b"\x01" * (3 << 30)  # a 3 GiB resident peak before the run
    del big
    result = train(config(root, model, pairs, "dpo", output_dir=str(root / "runs" / "rss")))
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert 0 < summary["peak_rss_mb"] < 3 * 1024


@pytest.mark.slow
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


# --------------------------------------------------------------------------------------------------
# KTO: pairs split, mismatched completions, reference modes, determinism and resume
# --------------------------------------------------------------------------------------------------


def _kto(root, model, data, name, mode="precomputed", **train_kw):
    cfg = config(root, model, data, "kto", **train_kw).to_dict()
    cfg["reference"]["mode"] = mode
    cfg["train"]["output_dir"] = str(root / "runs" / name)
    return from_dict(cfg)


def _rows(examples):
    return [(tuple(e.prompt_ids), tuple(e.chosen_ids), tuple(e.rejected_ids), e.label) for e in examples]


def _messages(rows):
    """The same pairs as message lists (the tiny tokenizer's chat template renders strings the same way)."""
    return [
        {
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "chosen": [{"role": "assistant", "content": r["chosen"]}],
            "rejected": [{"role": "assistant", "content": r["rejected"]}],
        }
        for r in rows
    ]


def test_kto_splits_pairs_shuffles_and_pairs_completions_deterministically(setup, capsys):
    """A pairs file given to kto: one desirable (chosen) and one undesirable (rejected) row per pair, the
    same rows as the unpaired file of the same pairs and as message-list pairs; shuffled with the seed
    (same seed: same order and same mismatched completions); each row's mismatched completion is another
    row's completion after a different prompt; validate reports the counts and the λ balance."""
    from tether.cli import main
    from tether.training.run import prepare

    from tiny import pair_rows

    root, model, pairs, *_ = setup
    convo = write_jsonl(root / "pairs_messages.jsonl", _messages(pair_rows(16)))
    a, b = prepare(_kto(root, model, pairs, "p")), prepare(_kto(root, model, pairs, "p"))
    assert _rows(a.train) == _rows(b.train)  # deterministic
    other = prepare(_kto(root, model, pairs, "p", seed=1))
    assert _rows(other.train) != _rows(a.train) and sorted(_rows(other.train)) != sorted(_rows(a.train))
    assert a.report["pairs_split"] == 16 and a.report["train_examples"] == 32
    assert (a.report["desirable"], a.report["undesirable"]) == (16, 16)
    labels = [e.label for e in a.train]
    assert labels[:16] != [True] * 16 and labels != [True, False] * 16  # shuffled, not in blocks
    completions = {tuple(e.chosen_ids) for e in a.train}
    for e in a.train:  # the mismatched completion: another row's, after a different prompt
        partner = [f for f in a.train if tuple(f.chosen_ids) == tuple(e.rejected_ids)]
        assert partner and any(f.prompt_ids != e.prompt_ids for f in partner)
        assert tuple(e.rejected_ids) in completions
    # the same (prompt, completion, label) rows as the unpaired file and the message-list pairs
    key = lambda ex: sorted((tuple(e.prompt_ids), tuple(e.chosen_ids), e.label) for e in ex)  # noqa: E731
    same_unpaired = write_jsonl(root / "unpaired32.jsonl", unpaired_rows(32))  # the same 16 pairs, split
    assert key(a.train) == key(prepare(_kto(root, model, same_unpaired, "u")).train)
    assert key(a.train) == key(prepare(_kto(root, model, convo, "c")).train)
    capsys.readouterr()
    path = root / "kto.yaml"
    path.write_text(json.dumps(_kto(root, model, pairs, "v").to_dict()))
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "pairs_split=16" in out and "desirable=16, undesirable=16" in out
    assert "each pair split into a desirable (chosen) and an undesirable (rejected) row" in out
    assert "λ_D·n_D/(λ_U·n_U) = 1·16/(1·16) = 1, within the KTO paper's recommended [1, 4/3]" in out


def test_kto_only_desirable_rows_is_one_note(setup, capsys):
    """A file of only desirable rows trains (as in TRL) and says so in one line."""
    from tether.training.job import validate

    root, model, *_ = setup
    only = write_jsonl(root / "only_desirable.jsonl", [r for r in unpaired_rows(16) if r["label"]])
    report = validate(_kto(root, model, only, "only"))
    assert (report["desirable"], report["undesirable"]) == (8, 0)
    notes = [n for n in report["notes"] if n.startswith("kto")]
    assert notes == ["kto: every training row is desirable (8 desirable, 0 undesirable): it trains "
                "(as in TRL), but with no undesirable rows there is no balance to check"]  # fmt: skip


@pytest.mark.slow
def test_kto_precomputed_and_copy_reference_agree(setup):
    """kto on a pairs file: step 1 (π = π_ref) has z = 0 and loss λ/2 = 0.5 exactly; a precomputed reference
    (whose table holds the mismatched completions' log-probs too) and a frozen copy give the same steps."""
    root, model, pairs, *_ = setup
    runs = {m: train(_kto(root, model, pairs, f"kto-{m}", m, batch_size=4)) for m in ("precomputed", "copy")}
    pre, cp = (
        [json.loads(x) for x in (runs[m].run_dir / "metrics.jsonl").read_text().splitlines()] for m in runs
    )
    assert runs["precomputed"].reference_mode == "precomputed" and runs["copy"].reference_mode == "copy"
    assert pre[0]["loss"] == pytest.approx(0.5, abs=1e-6) and pre[0]["kto/z"] == 0.0
    assert pre[0]["rewards/chosen"] == pytest.approx(0.0, abs=1e-6)
    assert any(x["kto/z"] > 0 for x in pre[1:])  # the policy moved: z is estimated, not stuck at 0
    for x, y in zip(pre, cp, strict=True):
        for k in ("loss", "kto/z", "rewards/chosen", "rewards/rejected", "logps/chosen", "deviation"):
            assert x[k] == pytest.approx(y[k], rel=1e-4, abs=1e-5), k


@pytest.mark.slow
def test_kto_resume_is_exact(setup):
    """Stop a kto run after 2 steps and extend it to 4: the same rows, mismatched completions and steps."""
    root, model, pairs, *_ = setup
    kw = {"batch_size": 4, "save_every": 2, "scheduler": "constant"}  # the same LR for a 2- and a 4-step run
    full = train(_kto(root, model, pairs, "kto-full", max_steps=4, **kw))
    train(_kto(root, model, pairs, "kto-part", max_steps=2, **kw))
    resumed = train(_kto(root, model, pairs, "kto-part", max_steps=4, resume=True, **kw))
    assert resumed.resumed_from_step == 2
    a, b = (
        [json.loads(x) for x in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
        for r in (full, resumed)
    )
    assert [x["step"] for x in b] == [1, 2, 3, 4]
    for x, y in zip(a, b, strict=True):
        for k in ("loss", "kto/z", "rewards/chosen", "rewards/rejected"):
            assert x[k] == pytest.approx(y[k], abs=1e-6), k


@pytest.mark.slow
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


@pytest.mark.slow
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


def test_mixed_precision_bf16_runs_the_policy_under_autocast_with_fp32_weights(setup):
    """train.mixed_precision bf16: the policy's forward is bf16 autocast (its first loss moves off the fp32
    run's ln 2, by bf16 rounding only), the weights stay fp32 and train."""
    import math

    root, model, pairs, _, _ = setup
    losses = {}
    for mp in ("no", "bf16"):
        cfg = config(
            root, model, pairs, "dpo", mixed_precision=mp, output_dir=str(root / "runs" / f"mp-{mp}")
        )
        result = train(cfg)
        losses[mp] = [
            json.loads(x)["loss"] for x in (result.run_dir / "metrics.jsonl").read_text().splitlines()
        ]
        weights = load_file(str(result.final_model_dir / "model.safetensors"))
        assert all(t.dtype == torch.float32 for t in weights.values())
    assert losses["no"][0] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference, fp32
    assert losses["bf16"][0] != losses["no"][0]
    assert abs(losses["bf16"][0] - losses["no"][0]) < 0.05
