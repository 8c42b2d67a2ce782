"""The segment layout (a pair's prompt shared, rows packed without padding) against the plain padded path:
the same log-probs, gradients and losses for every method; ε-DPO's precomputed reference equals the copy."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tether.config import from_dict
from tether.engine import segments
from tether.engine.logprobs import LogProbModel, collate, loss_inputs
from tether.methods.registry import METHODS
from tether.training.job import train

from tiny import VOCAB, tiny_model

LAYOUTS = [
    {"share_prompt": True, "packing": True},
    {"share_prompt": True, "packing": False},
    {"share_prompt": False, "packing": True},
]


@dataclass(frozen=True)
class Ex:
    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int] | None = None
    label: bool | None = None


def gpt2_model(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=256, bos_token_id=1, eos_token_id=2
    )
    return GPT2LMHeadModel(cfg).eval()


MODELS = {"llama": tiny_model, "gpt2": gpt2_model}


def hard_examples(paired: bool = True, seed: int = 0) -> list[Ex]:
    """A prompt of length 1, answers 10x apart in length, a row truncated to the 64-token limit."""
    rng = random.Random(seed)

    def ids(n: int) -> list[int]:
        return [rng.randrange(3, VOCAB) for _ in range(n)]

    shapes = [(1, 3, 30), (5, 40, 4), (9, 2, 2), (60, 4, 1), (3, 7, 11)]  # (prompt, chosen, rejected)
    return [
        Ex(ids(p), ids(c), ids(r) if paired else None, (i % 2 == 0) if not paired else None)
        for i, (p, c, r) in enumerate(shapes)
    ]


def kto_examples() -> list[Ex]:
    """Unpaired rows, each with the next row's completion as its mismatched one (KTO)."""
    ex = hard_examples(paired=False)
    return [
        Ex(e.prompt_ids, e.chosen_ids, f.chosen_ids, e.label)
        for e, f in zip(ex, ex[1:] + ex[:1], strict=True)
    ]


def rows_and_grads(model, batch, **kw):
    model.zero_grad()
    rows = LogProbModel(model, chunk=7)(batch, **kw)
    rows.sum.sum().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return rows, grads


@pytest.mark.parametrize("arch", sorted(MODELS))
@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("paired", [True, False])
def test_segment_layouts_match_plain_logps_and_gradients(arch, padding_side, paired):
    model = MODELS[arch]()
    ex = hard_examples(paired)
    assert LogProbModel(model).supports_segments()
    plain, g_plain = rows_and_grads(model, collate(ex, range(5), 0, padding_side))
    for layout in LAYOUTS:
        batch = collate(ex, range(5), 0, **layout)
        rows, g = rows_and_grads(model, batch)
        torch.testing.assert_close(rows.sum, plain.sum, atol=1e-5, rtol=0, msg=str(layout))
        torch.testing.assert_close(rows.n_tokens, plain.n_tokens, msg=str(layout))
        torch.testing.assert_close(g, g_plain, atol=1e-5, rtol=1e-5, msg=str(layout))
        assert batch.n_tokens == int(collate(ex, range(5), 0).attention_mask.sum())


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_mismatched_completions_score_like_a_second_answer_with_no_gradient(arch):
    """KTO's rows ``prompt | completion | mismatched completion``: in every layout the mismatched
    completion's log-probs equal those of the same sequence scored as a pair's rejected answer, and
    nothing of the policy's gradient comes from them (the LM head of those rows runs under no_grad)."""
    model = MODELS[arch]()
    ex = kto_examples()
    as_pairs = [Ex(e.prompt_ids, e.chosen_ids, e.rejected_ids) for e in ex]
    plain, _ = rows_and_grads(model, collate(as_pairs, range(5), 0))
    assert plain.sum.requires_grad
    for layout in [{"share_prompt": False, "packing": False}, *LAYOUTS]:
        batch = collate(ex, range(5), 0, **layout)
        assert batch.mismatched and batch.labels is not None
        model.zero_grad()
        rows = LogProbModel(model, chunk=7)(batch)
        torch.testing.assert_close(rows.sum, plain.sum, atol=1e-5, rtol=0, msg=str(layout))
        params = [p for p in model.parameters()]
        grads = torch.autograd.grad(rows.sum[5:].sum(), params, allow_unused=True, retain_graph=True)
        assert all(g is None or not g.any() for g in grads), layout
        grads = torch.autograd.grad(rows.sum[:5].sum(), params, allow_unused=True)
        assert any(g is not None and g.any() for g in grads), layout
        inp = loss_inputs(rows, batch, plain.sum.detach())
        assert inp.rejected is None and inp.ref_rejected is None
        torch.testing.assert_close(inp.kl.sum, plain.sum[5:], atol=1e-5, rtol=0)
        torch.testing.assert_close(inp.ref_kl, plain.sum[5:].detach())
        assert inp.label.tolist() == [e.label for e in ex]


def test_packing_computes_no_padding_and_the_prompt_once():
    ex = hard_examples()
    plain = collate(ex, range(5), 0)
    shared = collate(ex, range(5), 0, share_prompt=True, packing=True)
    prompt = sum(len(e.prompt_ids) for e in ex)
    assert shared.n_positions == plain.n_tokens - prompt  # no padding, each prompt once
    assert shared.input_ids.shape[0] == 1 and plain.n_positions > plain.n_tokens


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_same_loss_in_every_layout(name):
    method = METHODS[name]
    if method.head == "score":
        pytest.skip("a score head scores padded rows only (no segment layout)")
    policy, ref = tiny_model(0), tiny_model(1)
    with torch.no_grad():  # move the policy away from the reference
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ex = hard_examples(paired=method.data == "pairs")
    if method.mismatched_completion:
        ex = kto_examples()
    hp = dict(method.defaults)
    mix = None
    if method.reference_logits is not None:
        fn = method.reference_logits
        mix = lambda z, z_ref, y: fn(z, z_ref, y, hp)  # noqa: E731
    out = []
    for layout in [{"share_prompt": False, "packing": False}, *LAYOUTS]:
        batch = collate(ex, range(5), 0, **layout)
        ref_lp = LogProbModel(ref)
        with torch.no_grad():
            hidden = ref_lp.hidden(batch)
            ref_sum = ref_lp.from_hidden(hidden, batch).sum
        policy.zero_grad()
        kw = {"ref_hidden": hidden, "ref_head": ref_lp.head, "mix": mix} if mix is not None else {}
        rows = LogProbModel(policy, chunk=5)(batch, **kw)
        res = method(loss_inputs(rows, batch, ref_sum), hp)
        res.losses.sum().backward()
        grads = torch.cat([p.grad.flatten() for p in policy.parameters()])
        out.append((res.losses.detach(), grads, {k: v.detach() for k, v in res.metrics.items()}))
    for losses, grads, metrics in out[1:]:
        torch.testing.assert_close(losses, out[0][0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(grads, out[0][1], atol=1e-5, rtol=1e-4)
        for k, v in metrics.items():
            torch.testing.assert_close(v, out[0][2][k], atol=1e-5, rtol=1e-5, equal_nan=True, msg=k)


def test_unroutable_model_falls_back_with_one_line(capsys):
    model = tiny_model()
    model._supports_attention_backend = False  # as an architecture without the attention interface
    lp = LogProbModel(model)
    assert not lp.supports_segments()
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.strip()]
    assert len(lines) == 1 and "padded rows instead" in lines[0]
    batch = lp.collate(hard_examples(), range(5), 0)
    assert batch.layout is None and batch.response_mask is not None


def test_unsupported_attention_feature_fails_the_probe(monkeypatch, capsys):
    """A model whose attention passes a feature segment attention lacks (here: a sliding window)."""
    real = segments.segment_attention

    def no_window(*a, **k):
        raise NotImplementedError("segment attention does not support sliding_window")

    monkeypatch.setattr(segments, "segment_attention", no_window)
    monkeypatch.setattr("tether.engine.logprobs._SEGMENTS_OK", {})
    assert not LogProbModel(tiny_model()).supports_segments()
    assert "sliding_window" in capsys.readouterr().out
    monkeypatch.setattr(segments, "segment_attention", real)


# -------------------------------------------------------------------------------------------------
# ε-DPO: precomputed reference hidden states vs the frozen copy
# -------------------------------------------------------------------------------------------------


def _cfg(root, model, pairs, name, mode, **kw):
    return from_dict(
        {
            "model": {"name": str(model)},
            "data": {"train": str(pairs), "max_length": 64},
            "method": {"name": "epsilon_dpo", "beta": 0.1, "epsilon": 0.5},
            "reference": {"mode": mode, "cache_dir": str(root / "cache"), **kw.pop("reference", {})},
            "train": {
                "output_dir": str(root / name),
                "batch_size": 4,
                "max_steps": 4,
                "lr": 1e-2,
                "progress": False,
                **kw,
            },
        }
    )


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_epsilon_dpo_precomputed_reference_equals_copy(setup, monkeypatch):
    """Same β trajectory and losses; the precomputed run runs no reference forward."""
    root, model, pairs = setup
    copy = _metrics(train(_cfg(root, model, pairs, "copy", "copy")).run_dir)
    from tether.engine import reference

    calls = []
    real = reference.Reference.__call__

    def spy(self, batch, split, want_hidden=False):
        calls.append(self.mode)
        return real(self, batch, split, want_hidden)

    monkeypatch.setattr(reference.Reference, "__call__", spy)
    pre = train(_cfg(root, model, pairs, "pre", "auto"))
    assert pre.reference_mode == "precomputed" and set(calls) == {"precomputed"}
    for x, y in zip(copy, _metrics(pre.run_dir), strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)
        assert x["kl/beta"] == pytest.approx(y["kl/beta"], rel=1e-6)
        assert x["kl/s"] == pytest.approx(y["kl/s"], abs=1e-6)


def test_epsilon_dpo_states_cache_refused_above_limit(setup, capsys):
    root, model, pairs = setup
    with pytest.raises(Exception, match="max_cache_gb"):
        train(_cfg(root, model, pairs, "refused", "precomputed", reference={"max_cache_gb": 1e-9}))
    out = capsys.readouterr().out
    assert "reference hidden states (train):" in out and "GB" in out
    run = train(_cfg(root, model, pairs, "auto-small", "auto", max_steps=1, reference={"max_cache_gb": 1e-9}))
    assert run.reference_mode == "copy"
    assert "using a frozen copy instead" in capsys.readouterr().out


def test_switched_off_run_equals_default_run(setup):
    """train.share_prompt/train.packing false: padded rows, the same losses as the default layout."""
    root, model, pairs = setup
    cfg = _cfg(root, model, pairs, "on", "auto", max_steps=2)
    off = _cfg(root, model, pairs, "off", "auto", max_steps=2, share_prompt=False, packing=False)
    assert cfg.train.share_prompt and cfg.train.packing and not off.train.share_prompt
    a, b = _metrics(train(cfg).run_dir), _metrics(train(off).run_dir)
    for x, y in zip(a, b, strict=True):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)
        assert x["tokens"] == y["tokens"]  # counted as TRL counts them in both layouts


@pytest.mark.slow
def test_layout_survives_gradient_checkpointing():
    """Recomputed layers see the same segments (the layout travels as a keyword argument)."""
    model = tiny_model()
    model.gradient_checkpointing_enable()
    model.train()
    ex = hard_examples()
    plain, g_plain = rows_and_grads(model, collate(ex, range(5), 0))
    rows, g = rows_and_grads(model, collate(ex, range(5), 0, share_prompt=True, packing=True))
    torch.testing.assert_close(rows.sum, plain.sum, atol=1e-5, rtol=0)
    torch.testing.assert_close(g, g_plain, atol=1e-5, rtol=1e-5)
