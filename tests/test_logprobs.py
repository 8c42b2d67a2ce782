"""The chunked log-prob engine against a naive full-logits computation."""

from __future__ import annotations

import pytest
import torch

from tether.engine.logprobs import LogProbModel, collate, loss_inputs
from tether.methods.losses import epsilon_mixtures

from tiny import random_examples, tiny_model


def naive_logps(model, examples, paired):
    """Full [1, T, V] logits per unpadded sequence; sum log-softmax over response tokens."""
    rows = [(e.prompt_ids, e.chosen_ids) for e in examples]
    if paired:
        rows += [(e.prompt_ids, e.rejected_ids) for e in examples]
    out = []
    for prompt, resp in rows:
        ids = torch.tensor([prompt + resp])
        logits = model(input_ids=ids).logits.float().log_softmax(-1)
        lp = logits[0, :-1].gather(-1, ids[0, 1:, None]).squeeze(-1)
        out.append(lp[len(prompt) - 1 :].sum())
    return torch.stack(out)


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_engine_matches_naive(padding_side, chunk):
    model = tiny_model()
    ex = random_examples(5, paired=True, seed=1)
    batch = collate(ex, range(5), pad_id=0, padding_side=padding_side)
    wrapped = LogProbModel(model, chunk=chunk)
    with torch.no_grad():
        rows = wrapped(batch.input_ids, batch.attention_mask, batch.response_mask)
        expected = naive_logps(model, ex, paired=True)
    torch.testing.assert_close(rows.sum, expected, atol=1e-5, rtol=0)
    n = torch.tensor([len(e.chosen_ids) for e in ex] + [len(e.rejected_ids) for e in ex], dtype=torch.float32)
    torch.testing.assert_close(rows.n_tokens, n)
    inp = loss_inputs(rows, batch)
    assert inp.chosen.sum.shape == (5,) and inp.rejected.sum.shape == (5,)


def test_engine_gradient_matches_naive():
    """Checkpointed chunks give the same parameter gradients as full logits."""
    model = tiny_model()
    ex = random_examples(3, paired=False, seed=2)
    batch = collate(ex, range(3), pad_id=0)
    rows = LogProbModel(model, chunk=3)(batch.input_ids, batch.attention_mask, batch.response_mask)
    rows.sum.sum().backward()
    g_engine = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    naive_logps(model, ex, paired=False).sum().backward()
    for a, p in zip(g_engine, model.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("grad", [False, True])
def test_perturbed_logps_match_naive_mixing(grad):
    """ε-mixture log-probs: log_softmax((1±ε)·z ∓ ε·z_ref) per token, summed over the response. With
    gradients on, the mixture reads the policy's logits of each checkpointed chunk once: not again when
    the backward pass recomputes the chunk."""
    policy, ref = tiny_model(0), tiny_model(1)
    ex = random_examples(4, paired=True, seed=3)
    batch = collate(ex, range(4), pad_id=0)
    eps = 0.3
    calls = []

    def mix_fn(z, z_ref, y):
        calls.append(len(y))
        return epsilon_mixtures(z, z_ref, y, {"epsilon": eps})

    with torch.no_grad():
        ref_w = LogProbModel(ref)
        ref_hidden = ref_w.hidden(batch.input_ids, batch.attention_mask)
    with torch.set_grad_enabled(grad):
        rows = LogProbModel(policy, chunk=5)(
            batch.input_ids,
            batch.attention_mask,
            batch.response_mask,
            ref_hidden=ref_hidden,
            ref_head=ref_w.head,
            mix=mix_fn,
        )
    n_tokens = int(batch.response_mask[:, 1:].sum())
    if grad:
        rows.sum.sum().backward()
        assert all(p.grad is not None for p in policy.parameters() if p.requires_grad)
    assert sum(calls) == n_tokens and len(calls) == -(-n_tokens // 5)  # each chunk once
    with torch.no_grad():
        z = policy(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=(batch.attention_mask.cumsum(1) - 1).clamp(min=0),
        ).logits.float()
        zr = ref(
            input_ids=batch.input_ids,
            attention_mask=batch.attention_mask,
            position_ids=(batch.attention_mask.cumsum(1) - 1).clamp(min=0),
        ).logits.float()
        tm = batch.response_mask[:, 1:].float()
        y = batch.input_ids[:, 1:, None]
        for sign, got in ((1, rows.mixed[:, 0]), (-1, rows.mixed[:, 1])):
            mix = ((1 + sign * eps) * z - sign * eps * zr).log_softmax(-1)[:, :-1].gather(-1, y).squeeze(-1)
            torch.testing.assert_close(got, (mix * tm).sum(1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("bias", [False, True])
def test_fused_head_matches_full_logits(softcap, bias):
    """HeadLogps (logits recomputed chunk by chunk in the backward pass, never all kept) gives the values
    and the gradients (hidden states, weight, bias; per-row upstream weights) of the full-logits path."""
    from tether.engine.logprobs import HeadLogps

    torch.manual_seed(0)
    n, hid, vocab = 11, 6, 17
    head = torch.nn.Linear(hid, vocab, bias=bias)
    h = torch.randn(n, hid, requires_grad=True)
    y = torch.randint(0, vocab, (n,))
    g = torch.randn(n)  # distinct upstream gradients per position
    z = head(h).float()
    if softcap:
        z = torch.tanh(z / softcap) * softcap
    full = z.log_softmax(-1).gather(-1, y[:, None]).squeeze(-1)
    expected = torch.autograd.grad((full * g).sum(), [h, *head.parameters()])
    seen = []
    fused = HeadLogps.apply(h, head.weight, head.bias, y, softcap, 4, lambda s, e, z: seen.append((s, e)))
    got = torch.autograd.grad((fused * g).sum(), [h, *head.parameters()])
    torch.testing.assert_close(fused, full, atol=1e-6, rtol=0)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    assert seen == [(0, 4), (4, 8), (8, 11)]  # the forward's chunks, each once (none in the backward)


def test_engine_uses_the_fused_head_under_autograd(monkeypatch):
    """A plain linear head goes through HeadLogps when gradients are needed, not without them."""
    import tether.engine.logprobs as lp

    calls = []
    apply = lp.HeadLogps.apply
    monkeypatch.setattr(lp.HeadLogps, "apply", lambda *a: calls.append(1) or apply(*a))
    model = tiny_model()
    batch = collate(random_examples(2, paired=True, seed=3), range(2), pad_id=0)
    wrapped = LogProbModel(model, chunk=4)
    with torch.no_grad():
        wrapped(batch.input_ids, batch.attention_mask, batch.response_mask)
    assert not calls
    wrapped(batch.input_ids, batch.attention_mask, batch.response_mask).sum.sum().backward()
    assert calls == [1]


def test_fused_head_under_bf16_autocast_matches_autograd():
    """Under bf16 autocast the fused head recomputes its logits in bf16 in the backward pass (as the forward
    did), so its values and gradients are autograd's of the same autocast computation."""
    from tether.engine.logprobs import HeadLogps

    torch.manual_seed(1)
    head = torch.nn.Linear(8, 29, bias=False)
    h = torch.randn(13, 8, requires_grad=True)
    y = torch.randint(0, 29, (13,))
    g = torch.randn(13)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = head(h).float().log_softmax(-1).gather(-1, y[:, None]).squeeze(-1)
        fused = HeadLogps.apply(h, head.weight, None, y, None, 5, None)
    expected = torch.autograd.grad((full * g).sum(), [h, head.weight])
    got = torch.autograd.grad((fused * g).sum(), [h, head.weight])
    torch.testing.assert_close(fused, full, atol=1e-6, rtol=0)
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
    with torch.no_grad():  # the fp32 logits differ: the test would notice a backward in the wrong dtype
        assert (head(h).log_softmax(-1).gather(-1, y[:, None]).squeeze(-1) - fused).abs().max() > 1e-4
