"""Exactness tests for ``tether.methods.losses`` and the method registry (``shared/METHODS.md``).

Layers:

1. hand-derived values (the arithmetic is in each docstring), float64, compared to ``math`` to 1e-12;
2. TRL 1.16 as an oracle: TRL's own loss code run on the same log-probs;
3. gradient identities with autograd on leaf tensors standing for log-probs;
4. ε-DPO's criterion and β update;
5. the registry: every method runs on valid inputs of its data kind, declared capabilities are truthful,
   hyper-parameters are validated.

Metric values are compared at float32 precision: :meth:`LossOutput.add` stores every metric as float32
(the trainer only logs them).
"""

from __future__ import annotations

import collections
import math
import re
import types
import warnings
from decimal import Decimal, getcontext
from pathlib import Path

import pytest
import torch

import tether.methods.losses as losses
from tether.contract import LossInputs, LossOutput, Perturbed, Scores, SequenceLogps
from tether.errors import ConfigError
from tether.methods.registry import METHODS, get_method

F64 = torch.float64


def t(*values: float, grad: bool = False) -> torch.Tensor:
    """A float64 [B] tensor (a leaf requiring grad when ``grad``)."""
    return torch.tensor(values, dtype=F64, requires_grad=grad)


def seq(sums: torch.Tensor, n_tokens: torch.Tensor | float) -> SequenceLogps:
    n = n_tokens if isinstance(n_tokens, torch.Tensor) else torch.full_like(sums, float(n_tokens))
    return SequenceLogps(sum=sums, n_tokens=n.to(sums.dtype))


def softplus(x: float) -> float:
    """log(1 + e^x) = −log σ(−x), in math."""
    return math.log1p(math.exp(x))


def sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def assert_close(actual: torch.Tensor, expected: list[float], tol: float = 1e-12) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), rtol=tol, atol=tol)


def assert_metric(out: LossOutput, key: str, expected: list[float]) -> None:
    """Metrics are float32 by contract; compare at float32 precision."""
    got = out.metrics[key]
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float32), rtol=2e-7, atol=1e-7)


# ==================================================================================================
# 1. Hand-derived values
# ==================================================================================================


def test_sft_value():
    """sft = −avg(y). Example 1: sum = −6, n = 3 → avg = −2 → loss 2. Example 2: −1.5/2 → 0.75."""
    out = losses.sft(LossInputs(chosen=seq(t(-6.0, -1.5), t(3.0, 2.0))))
    assert_close(out.losses, [2.0, 0.75])
    assert_metric(out, "logps/chosen", [-6.0, -1.5])
    assert_metric(out, "nll", [2.0, 0.75])


def test_sft_dpo_value():
    """sft_dpo = −log σ(β·r) = log(1 + e^{−β r}), β = 0.5.

    Example 1: r = −3 − (−4) = 1 → log(1 + e^{−0.5}).
    Example 2: r = −6 − (−4) = −2 → log(1 + e^{1}).
    rewards/chosen = β·r = [0.5, −1].
    """
    inp = LossInputs(chosen=seq(t(-3.0, -6.0), 3.0), ref_chosen=t(-4.0, -4.0))
    out = losses.sft_dpo(inp, beta=0.5)
    assert_close(out.losses, [softplus(-0.5), softplus(1.0)])
    assert_metric(out, "rewards/chosen", [0.5, -1.0])
    assert_metric(out, "logps/chosen", [-3.0, -6.0])


def test_minor_sft_value():
    """minor_sft = −2·sg[σ(−β r)]·avg(y), β = 0.5.

    Example 1: sum = −3, n = 3, ref = −4 → r = 1, weight = 2σ(−0.5) = 2/(1 + e^{0.5}), avg = −1,
    loss = 2/(1 + e^{0.5}) ≈ 0.7551.
    Example 2: sum = −8, n = 4, ref = −6 → r = −2, weight = 2σ(1) = 2/(1 + e^{−1}), avg = −2,
    loss = 4/(1 + e^{−1}).
    """
    inp = LossInputs(chosen=seq(t(-3.0, -8.0), t(3.0, 4.0)), ref_chosen=t(-4.0, -6.0))
    out = losses.minor_sft(inp, beta=0.5)
    w1, w2 = 2.0 / (1.0 + math.exp(0.5)), 2.0 / (1.0 + math.exp(-1.0))
    assert_close(out.losses, [w1 * 1.0, w2 * 2.0])
    assert_metric(out, "minor_sft/weight", [w1, w2])
    assert_metric(out, "minor_sft/weight_sq", [w1**2, w2**2])  # the batch's spread of the weight
    assert_metric(out, "rewards/chosen", [0.5, -1.0])


def test_minor_sft_equals_sft_at_r0():
    """At r = 0 (policy == reference, step 0): weight = 2σ(0) = 1, so minor_sft = sft = −avg(y)."""
    chosen = seq(t(-3.7, -12.25, -0.5), t(2.0, 7.0, 1.0))
    inp = LossInputs(chosen=chosen, ref_chosen=chosen.sum.clone())
    torch.testing.assert_close(
        losses.minor_sft(inp, beta=0.04).losses, losses.sft(inp).losses, rtol=0, atol=0
    )


def _pair(sw, nw, sl, nl, rw=None, rl=None, cp=None, rp=None, grad=False) -> LossInputs:
    """Pair inputs of B = len(sw) from plain lists (policy sums as grad leaves when ``grad``)."""
    return LossInputs(
        chosen=seq(t(*sw, grad=grad), t(*nw)),
        rejected=seq(t(*sl, grad=grad), t(*nl)),
        ref_chosen=None if rw is None else t(*rw),
        ref_rejected=None if rl is None else t(*rl),
        chosen_perturbed=cp,
        rejected_perturbed=rp,
    )


def test_dpo_value_and_metrics():
    """dpo = log(1 + e^{−βΔ}), β = 0.1.

    Pair 1: r_w = −3 − (−4) = 1, r_l = −7 − (−5) = −2, Δ = 3 → log(1 + e^{−0.3}); accuracy 1.
    Pair 2: r_w = −5 − (−4) = −1, r_l = −4 − (−6) = 2, Δ = −3 → log(1 + e^{0.3}); accuracy 0.
    rewards/chosen = [0.1, −0.1], rewards/rejected = [−0.2, 0.2], margins = [0.3, −0.3].
    """
    inp = _pair([-3, -5], [2, 2], [-7, -4], [3, 3], rw=[-4, -4], rl=[-5, -6])
    out = losses.dpo(inp, beta=0.1)
    assert_close(out.losses, [softplus(-0.3), softplus(0.3)])
    assert_metric(out, "rewards/chosen", [0.1, -0.1])
    assert_metric(out, "rewards/rejected", [-0.2, 0.2])
    assert_metric(out, "rewards/margins", [0.3, -0.3])
    assert_metric(out, "rewards/accuracies", [1.0, 0.0])
    assert_metric(out, "logps/chosen", [-3.0, -5.0])
    assert_metric(out, "logps/rejected", [-7.0, -4.0])


@pytest.mark.parametrize("beta", [0.01, 0.1, 2.0])
def test_dpo_is_ln2_when_policy_equals_reference(beta):
    """policy == reference → r_w = r_l = 0 → Δ = 0 → −log σ(0) = ln 2, whatever β."""
    inp = _pair([-3.5, -40.0], [2, 9], [-7.25, -1.0], [3, 1], rw=[-3.5, -40.0], rl=[-7.25, -1.0])
    assert_close(losses.dpo(inp, beta=beta).losses, [math.log(2.0)] * 2)


def test_minor_dpo_value():
    """minor_dpo = log(1 + e^{−(β r_w − β max(0, r_l))}), β = 0.1.

    Pair 1 (r_l > 0): r_w = −3 − (−4) = 1, r_l = −4 − (−6) = 2 → exponent −0.1·(1 − 2) = 0.1 →
    log(1 + e^{0.1}), the DPO value; not clamped.
    Pair 2 (r_l < 0): r_w = 1, r_l = −7 − (−5) = −2 → max(0, r_l) = 0 → log(1 + e^{−0.1}) (DPO would give
    log(1 + e^{−0.3})); clamped.
    """
    inp = _pair([-3, -3], [2, 2], [-4, -7], [3, 3], rw=[-4, -4], rl=[-6, -5])
    out = losses.minor_dpo(inp, beta=0.1)
    assert_close(out.losses, [softplus(0.1), softplus(-0.1)])
    assert_metric(out, "minor_dpo/clamped", [0.0, 1.0])
    assert_metric(out, "rewards/rejected", [0.2, -0.2])  # logged with the unclamped r_l
    dpo = losses.dpo(inp, beta=0.1).losses
    assert dpo[0].item() == out.losses[0].item()
    assert dpo[1].item() != out.losses[1].item()


def test_ipo_value():
    """ipo = ((r_w/n_w − r_l/n_l) − 1/(2β))², β = 0.1 → 1/(2β) = 5.

    r_w = −3 − (−4) = 1, n_w = 2 → 0.5; r_l = −7 − (−5) = −2, n_l = 4 → −0.5; h = 1 → (1 − 5)² = 16.
    Pair 2: policy == reference → h = 0 → 25.
    """
    inp = _pair([-3, -9], [2, 5], [-7, -2], [4, 1], rw=[-4, -9], rl=[-5, -2])
    out = losses.ipo(inp, beta=0.1)
    assert_close(out.losses, [16.0, 25.0])
    assert_metric(out, "rewards/chosen", [0.1, 0.0])
    assert_metric(out, "rewards/rejected", [-0.2, 0.0])


def _eps_inputs(lr_plus: list[float], lr_minus: list[float], **kw) -> LossInputs:
    """Pairs with sums_w = −3, sums_l = −7 (LR = 4), refs −4/−5 (r_w = 1, r_l = −2, Δ = 3).

    LR⁺ and LR⁻ are set through the chosen side: cp.plus = LR⁺ − 7, rp.plus = −7 (and likewise minus).
    """
    b = len(lr_plus)
    cp = Perturbed(plus=t(*[x - 7.0 for x in lr_plus]), minus=t(*[x - 7.0 for x in lr_minus]))
    rp = Perturbed(plus=t(*[-7.0] * b), minus=t(*[-7.0] * b))
    return _pair([-3] * b, [2] * b, [-7] * b, [3] * b, rw=[-4] * b, rl=[-5] * b, cp=cp, rp=rp, **kw)


def test_epsilon_dpo_value():
    """ε-DPO with β = 0.1, ε = 0.5 on Δ = 3 (LR = −3 − (−7) = 4).

    Pair 1: LR⁺ = 5 > 4 > LR⁻ = 3 → s = +1 → β_i = 0.1/1.5 → loss log(1 + e^{−0.3/1.5}) = log(1 + e^{−0.2}).
    Pair 2: LR⁻ = 5 > 4 > LR⁺ = 3 → s = −1 → β_i = 0.1/0.5 = 0.2 → log(1 + e^{−0.6}).
    Pair 3: LR⁺ = LR = 4 (tie) → s = 0 → β_i = 0.1 → log(1 + e^{−0.3}).
    rewards/chosen = β_i·r_w = β_i, rewards/rejected = −2β_i.
    """
    inp = _eps_inputs([5.0, 3.0, 4.0], [3.0, 5.0, 3.0])
    out = losses.epsilon_dpo(inp, beta=0.1, epsilon=0.5)
    b = [0.1 / 1.5, 0.1 / 0.5, 0.1]
    assert_close(out.losses, [softplus(-3 * bi) for bi in b])
    assert_metric(out, "kl/s", [1.0, -1.0, 0.0])
    assert_metric(out, "kl/beta_i", b)
    assert_metric(out, "kl/p_epsilon_steps", [1.0, 0.0, 0.0])
    assert_metric(out, "kl/n_epsilon_steps", [0.0, 1.0, 0.0])
    assert_metric(out, "rewards/chosen", b)
    assert_metric(out, "rewards/rejected", [-2 * bi for bi in b])
    assert_metric(out, "rewards/margins", [3 * bi for bi in b])


def test_epsilon_dpo_with_epsilon_zero_is_dpo():
    """ε = 0 → β_i = β for every s, so ε-DPO is DPO bit for bit (the registry forbids ε = 0 on purpose)."""
    inp = _eps_inputs([5.0, 3.0, 4.0], [3.0, 5.0, 3.0])
    eps = losses.epsilon_dpo(inp, beta=0.1, epsilon=0.0)
    dpo = losses.dpo(inp, beta=0.1)
    torch.testing.assert_close(eps.losses, dpo.losses, rtol=0, atol=0)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        torch.testing.assert_close(eps.metrics[key], dpo.metrics[key], rtol=0, atol=0)


AVG_W, AVG_L = -0.5, -1.5  # sums −2 over 4 tokens, −3 over 2 tokens


def test_asft_value():
    """asft = −(1+β)·avg_w − β·log(1 − e^{avg_l}), β = 0.1.

    avg_w = −2/4 = −0.5, avg_l = −3/2 = −1.5 → 1.1·0.5 − 0.1·log(1 − e^{−1.5}) = 0.55 − 0.1·log(0.77687)
    ≈ 0.5752.
    """
    out = losses.asft(_pair([-2], [4], [-3], [2]), beta=0.1)
    assert_close(out.losses, [0.55 - 0.1 * math.log(1 - math.exp(-1.5))])
    assert_metric(out, "logps/chosen_avg", [-0.5])
    assert_metric(out, "logps/rejected_avg", [-1.5])
    assert_metric(out, "likelihood/margin", [1.0])
    assert_metric(out, "asft/guarded", [0.0])


def test_orpo_value():
    """orpo = −avg_w − β·log σ(log-odds), β = 0.1, avg_w = −0.5, avg_l = −1.5.

    log-odds = (−0.5 + 1.5) − (log(1 − e^{−0.5}) − log(1 − e^{−1.5})) = 1 − log(0.39347/0.77687) ≈ 1.6803;
    loss = 0.5 + 0.1·log(1 + e^{−log-odds}).
    """
    out = losses.orpo(_pair([-2], [4], [-3], [2]), beta=0.1)
    log_odds = 1.0 - (math.log(1 - math.exp(-0.5)) - math.log(1 - math.exp(-1.5)))
    assert_close(out.losses, [0.5 + 0.1 * softplus(-log_odds)])
    assert_metric(out, "orpo/log_odds", [log_odds])
    assert_metric(out, "orpo/nll", [0.5])
    assert_metric(out, "rewards/accuracies", [1.0])


def test_simpo_value():
    """simpo = log(1 + e^{−(β(avg_w − avg_l) − γ)}), β = 2, γ = 0.5: 2·(−0.5 + 1.5) − 0.5 = 1.5 →
    log(1 + e^{−1.5}). rewards/chosen = β·avg_w = −1, rewards/rejected = −3, margins = 2."""
    out = losses.simpo(_pair([-2], [4], [-3], [2]), beta=2.0, gamma=0.5)
    assert_close(out.losses, [softplus(-1.5)])
    assert_metric(out, "rewards/chosen", [-1.0])
    assert_metric(out, "rewards/rejected", [-3.0])
    assert_metric(out, "rewards/margins", [2.0])
    assert_metric(out, "rewards/accuracies", [1.0])


def test_r_dpo_value():
    """r_dpo = log(1 + e^{−(βΔ + α(n_w − n_l))}), β = 0.1, α = 0.5.

    Pair 1: r_w = −3 − (−4) = 1, r_l = −7 − (−5) = −2, Δ = 3; n_w − n_l = 2 − 3 = −1 → length term −0.5;
    argument 0.3 − 0.5 = −0.2 → log(1 + e^{0.2}).
    Pair 2: r_w = −5 − (−4) = −1, r_l = −4 − (−6) = 2, Δ = −3; n_w − n_l = 4 − 1 = 3 → length term 1.5;
    argument −0.3 + 1.5 = 1.2 → log(1 + e^{−1.2}).
    Rewards are DPO's (β·r, no length term): chosen [0.1, −0.1], rejected [−0.2, 0.2].
    """
    inp = _pair([-3, -5], [2, 4], [-7, -4], [3, 1], rw=[-4, -4], rl=[-5, -6])
    out = losses.r_dpo(inp, beta=0.1, alpha=0.5)
    assert_close(out.losses, [softplus(0.2), softplus(-1.2)])
    assert_metric(out, "r_dpo/length_term", [-0.5, 1.5])
    assert_metric(out, "rewards/chosen", [0.1, -0.1])
    assert_metric(out, "rewards/rejected", [-0.2, 0.2])
    assert_metric(out, "rewards/margins", [0.3, -0.3])
    assert_metric(out, "rewards/accuracies", [1.0, 0.0])


def test_r_dpo_with_alpha_zero_is_dpo():
    """α = 0 → the length term is 0·(n_w − n_l) = 0 and R-DPO is DPO bit for bit (losses, gradients,
    metrics), on random pairs of unequal lengths."""
    method = METHODS["r_dpo"]
    inp, leaves = random_inputs(method, batch=16, seed=3)
    r = losses.r_dpo(inp, beta=0.1, alpha=0.0)
    d = losses.dpo(inp, beta=0.1)
    torch.testing.assert_close(r.losses, d.losses, rtol=0, atol=0)
    for a, b in zip(
        torch.autograd.grad(r.losses.sum(), leaves), torch.autograd.grad(d.losses.sum(), leaves), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for key, value in d.metrics.items():
        torch.testing.assert_close(r.metrics[key], value, rtol=0, atol=0)
    assert method.hparams({"alpha": 0}) == {"beta": 0.1, "alpha": 0.0}  # α = 0 is allowed


@pytest.mark.parametrize("alpha", [0.0, 0.05, 1.0])
def test_r_dpo_at_step_0(alpha):
    """policy == reference (step 0) → Δ = 0 → R-DPO = −log σ(α(n_w − n_l)) = log(1 + e^{−α(n_w − n_l)}),
    whatever β: ln 2 for equal lengths or α = 0. Lengths (2, 3), (9, 1), (4, 4)."""
    inp = _pair([-3.5, -40.0, -2.0], [2, 9, 4], [-7.25, -1.0, -3.0], [3, 1, 4], rw=[-3.5, -40.0, -2.0],
                rl=[-7.25, -1.0, -3.0])  # fmt: skip
    expected = [softplus(-alpha * d) for d in (-1, 8, 0)]
    assert_close(losses.r_dpo(inp, beta=0.1, alpha=alpha).losses, expected)
    assert expected[2] == math.log(2.0)


def test_tr_dpo_is_dpo_against_the_current_reference():
    """TR-DPO's loss is DPO's bit for bit (losses, gradients, DPO's metrics) whatever α and τ: they act
    between steps, on the reference. With the original reference's log-probs given, it logs
    ``tr_dpo/ref_deviation`` = (logp_ref_t(y_w) − logp_ref_0(y_w))/n(y_w): ref_chosen [−4, −4] against
    the original [−5, −3] over n_w [2, 4] → [0.5, −0.25]."""
    method = METHODS["tr_dpo"]
    inp, leaves = random_inputs(method, batch=16, seed=5)
    tr = method.loss(inp, **method.hparams({"alpha": 1.0, "tau": 3}))
    d = losses.dpo(inp, beta=0.1)
    torch.testing.assert_close(tr.losses, d.losses, rtol=0, atol=0)
    for a, b in zip(
        torch.autograd.grad(tr.losses.sum(), leaves), torch.autograd.grad(d.losses.sum(), leaves), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert tr.metrics.keys() == d.metrics.keys()
    pair = _pair([-3, -5], [2, 4], [-7, -4], [3, 1], rw=[-4, -4], rl=[-5, -6])
    live = LossInputs(**{**vars(pair), "ref_origin_chosen": t(-5.0, -3.0)})
    out = losses.tr_dpo(live, beta=0.1, alpha=0.6, tau=512)
    assert_metric(out, "tr_dpo/ref_deviation", [0.5, -0.25])
    assert_close(out.losses, losses.dpo(pair, beta=0.1).losses.tolist())


def test_tr_dpo_at_step_0_is_ln2():
    """policy == reference (step 0) → Δ = 0 → −log σ(0) = ln 2 for every pair, whatever α, τ, β."""
    inp = _pair([-3.5, -40.0], [2, 9], [-7.25, -1.0], [3, 1], rw=[-3.5, -40.0], rl=[-7.25, -1.0])
    assert_close(losses.tr_dpo(inp, beta=0.3, alpha=0.6, tau=2).losses, [math.log(2.0)] * 2)


@pytest.mark.parametrize(("alpha", "tau"), [(0.6, 512), (1.0, 2), (0.0, 1), (0.25, 3)])
def test_tr_dpo_update_schedule(alpha, tau):
    """After optimizer step s (1-based): α when s is a multiple of τ (steps τ, 2τ, …), else no update.
    α = 1 is the hard update (TR-DPO τ), α < 1 the soft one (TR-DPO α)."""
    hp = METHODS["tr_dpo"].hparams({"alpha": alpha, "tau": tau})
    steps = range(1, 3 * tau + 2)
    assert [losses.tr_dpo_update(s, hp) for s in steps] == [alpha if s % tau == 0 else None for s in steps]


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("alpha", 1.01, r"method\.alpha: 1\.01 is outside \[0, 1\]"),
        ("alpha", -0.5, r"method\.alpha: .* is outside \[0, 1\]"),
        ("alpha", math.nan, r"method\.alpha"),
        ("tau", 0, r"method\.tau: 0 is outside the integers in \[1, inf\)"),
        ("tau", -3, r"method\.tau"),
        ("tau", 2.5, r"method\.tau: must be a whole number for method 'tr_dpo', got 2\.5"),
        ("tau", "abc", r"method\.tau: must be a number"),
        ("tau", math.inf, r"method\.tau"),
    ],
)
def test_tr_dpo_hparams_are_checked(key, value, match):
    with pytest.raises(ConfigError, match=match):
        METHODS["tr_dpo"].hparams({key: value})


def test_tr_dpo_hparams_accept_the_limits():
    assert METHODS["tr_dpo"].hparams({"alpha": 0, "tau": 1}) == {"beta": 0.1, "alpha": 0.0, "tau": 1.0}
    assert METHODS["tr_dpo"].hparams({"alpha": 1, "tau": "64"})["tau"] == 64.0


def test_cpo_value():
    """cpo = log(1 + e^{−β(logp_w − logp_l)}) + NLL, β = 0.1, logp_w = −2 (4 tokens), logp_l = −3 (2 tokens).

    Preference term: margin 1 → log(1 + e^{−0.1}). NLL: summed form λ = 1 → −λ·logp_w = 2; per-token form
    λ = 1 → −λ·avg_w = 0.5. rewards = β·logp: chosen −0.2, rejected −0.3, margins 0.1; nll = −avg_w = 0.5.
    """
    inp = _pair([-2], [4], [-3], [2])
    out = losses.cpo(inp, beta=0.1, lambda_nll=1.0)
    assert_close(out.losses, [softplus(-0.1) + 2.0])
    per_token = losses.cpo(inp, beta=0.1, lambda_nll=0.0, lambda_nll_avg=1.0)
    assert_close(per_token.losses, [softplus(-0.1) + 0.5])
    for o in (out, per_token):
        assert_metric(o, "rewards/chosen", [-0.2])
        assert_metric(o, "rewards/rejected", [-0.3])
        assert_metric(o, "rewards/margins", [0.1])
        assert_metric(o, "rewards/accuracies", [1.0])
        assert_metric(o, "nll", [0.5])
        assert_metric(o, "logps/chosen", [-2.0])
        assert_metric(o, "logps/rejected", [-3.0])


def test_slic_hf_value():
    """slic_hf = max(0, δ − logp_w + logp_l) − λ·logp_w, δ = 1, λ = 0.1.

    Pair 1: logp_w = −2, logp_l = −3 → margin 1 = δ → hinge 0 (on the edge: not active); NLL 0.1·2 = 0.2.
    Pair 2: logp_w = −5, logp_l = −4.5 → margin −0.5 → hinge 1.5; NLL 0.5 → 2.0.
    Per-token NLL (λ = 0.1 on −avg_w): pair 1 n_w = 4 → 0.05; pair 2 n_w = 5 → 0.1.
    """
    inp = _pair([-2, -5], [4, 5], [-3, -4.5], [2, 3])
    out = losses.slic_hf(inp, delta=1.0, lambda_nll=0.1)
    assert_close(out.losses, [0.2, 2.0])
    assert_metric(out, "slic_hf/margin", [1.0, -0.5])
    assert_metric(out, "slic_hf/hinge_active", [0.0, 1.0])
    assert_metric(out, "rewards/accuracies", [1.0, 0.0])
    assert_metric(out, "nll", [0.5, 1.0])
    per_token = losses.slic_hf(inp, delta=1.0, lambda_nll=0.0, lambda_nll_avg=0.1)
    assert_close(per_token.losses, [0.05, 1.5 + 0.1])


def test_rrhf_value():
    """rrhf = max(0, avg_l − avg_w) − λ·logp_w, λ = 1.

    Pair 1: avg_w = −2/4 = −0.5 > avg_l = −3/2 = −1.5 → ranking 0; NLL 2 → 2.
    Pair 2: avg_w = −6/3 = −2 < avg_l = −3/6 = −0.5 → ranking 1.5; NLL 6 → 7.5.
    Per-token NLL: −avg_w → 0.5 and 1.5 + 2 = 3.5.
    """
    inp = _pair([-2, -6], [4, 3], [-3, -3], [2, 6])
    out = losses.rrhf(inp, lambda_nll=1.0)
    assert_close(out.losses, [2.0, 7.5])
    assert_metric(out, "rrhf/rank_active", [0.0, 1.0])
    assert_metric(out, "rewards/accuracies", [1.0, 0.0])
    assert_metric(out, "likelihood/margin", [1.0, -1.5])
    assert_metric(out, "nll", [0.5, 2.0])
    assert_close(losses.rrhf(inp, lambda_nll=0.0, lambda_nll_avg=1.0).losses, [0.5, 3.5])


def test_rrhf_ranks_length_normalised_not_summed():
    """A pair whose sums and averages disagree: logp_w = −4 over 8 tokens (avg −0.5), logp_l = −3 over 2
    (avg −1.5). Summed, the rejected is more likely; length-normalised (the paper) the chosen is, so the
    ranking term is 0 (a sum-based ranking would give 1)."""
    out = losses.rrhf(_pair([-4], [8], [-3], [2]), lambda_nll=0.0)
    assert_close(out.losses, [0.0])


def test_reference_metrics_values():
    """deviation = r(y)/n(y) (minor-sft Eq. 8 before the batch mean); gamma_ref = ref_w − ref_l.

    r_w = −3 − (−4) = 1 over 2 tokens → 0.5; r_l = −7 − (−5) = −2 over 4 → −0.5; gamma_ref = −4 + 5 = 1.
    """
    m = losses.reference_metrics(_pair([-3], [2], [-7], [4], rw=[-4], rl=[-5]))
    assert m["deviation"].item() == 0.5
    assert m["deviation/rejected"].item() == -0.5
    assert m["gamma_ref"].item() == 1.0


# ==================================================================================================
# 2. TRL 1.16 as oracle
# ==================================================================================================

PROMPT = 2  # prompt tokens in front of each completion in the fake TRL batch


@pytest.fixture(scope="module")
def trl_mod():
    """TRL 1.16's trainer modules. Their loss code is private API, pinned to this version."""
    trl = pytest.importorskip("trl")
    if not trl.__version__.startswith("1.16."):
        pytest.skip(f"oracle written against TRL 1.16, found {trl.__version__}")
    with warnings.catch_warnings():  # "trl.experimental APIs are unstable": that is why the version is pinned
        warnings.simplefilter("ignore")
        from trl.experimental.cpo.cpo_trainer import CPOTrainer
        from trl.experimental.orpo import orpo_trainer
        from trl.trainer.dpo_trainer import DPOTrainer

    return types.SimpleNamespace(DPOTrainer=DPOTrainer, CPOTrainer=CPOTrainer, orpo=orpo_trainer)


def _trl_accelerator():
    return types.SimpleNamespace(device="cpu", gather=lambda x: x, gather_for_metrics=lambda x: x)


def trl_dpo_compute_loss(trl_mod, loss_type, beta, tok_w, tok_l, ref_w, ref_l):
    """Run ``DPOTrainer._compute_loss`` (TRL 1.16) on given per-token completion log-probs of one pair.

    TRL 1.16 has no standalone ``dpo_loss``: the loss is computed inside ``_compute_loss(model, inputs)``.
    We call that real method, bound to a namespace carrying the attributes it reads, with
    ``precompute_ref_logps=True`` (reference log-probs come from the batch) and a stub model whose
    ``log_probs`` output is the given per-token completion log-probs (0 on prompt positions, as TRL's fused
    head returns for label −100). Everything from the log-probs on is TRL's code. It returns the batch-mean
    loss, so one pair per call gives the per-pair loss. Returns (loss, token log-probs leaf, TRL metrics).
    """
    length = PROMPT + max(len(tok_w), len(tok_l))
    completion_mask = torch.zeros(2, length, dtype=torch.long)
    log_probs = torch.zeros(2, length - 1, dtype=F64)
    for row, toks in enumerate((tok_w, tok_l)):
        completion_mask[row, PROMPT : PROMPT + len(toks)] = 1
        log_probs[row, PROMPT - 1 : PROMPT - 1 + len(toks)] = torch.tensor(toks, dtype=F64)
    log_probs.requires_grad_(True)
    zeros = torch.zeros(2, length - 1)

    def model(**kwargs):
        return types.SimpleNamespace(
            log_probs=log_probs, entropy=zeros, mean_logits=zeros, is_top1=zeros.bool()
        )

    trainer = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True),
        accelerator=_trl_accelerator(),
        aux_loss_enabled=False,
        ld_alpha=None,
        precompute_ref_logps=True,
        f_divergence_type="reverse_kl",
        loss_types=[loss_type],
        loss_weights=[1.0],
        beta=beta,
        label_smoothing=0.0,
        use_weighting=False,
        _metrics=collections.defaultdict(lambda: collections.defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    inputs = {
        "input_ids": torch.zeros(2, length, dtype=torch.long),
        "attention_mask": torch.ones(2, length, dtype=torch.long),
        "completion_mask": completion_mask,
        "ref_chosen_logps": t(ref_w),
        "ref_rejected_logps": t(ref_l),
    }
    loss = trl_mod.DPOTrainer._compute_loss(trainer, model, inputs, False)
    return loss, log_probs, {k: v[-1] for k, v in trainer._metrics["train"].items()}


# (chosen token log-probs, rejected token log-probs, ref_w, ref_l)
TRL_PAIRS = [
    ([-1.0, -2.0], [-3.0, -1.0, -0.5], -2.5, -5.0),
    ([-0.25, -0.75, -1.5, -0.1], [-0.6], -4.0, -0.2),
    ([-7.5], [-2.0, -2.0], -7.5, -4.0),
    ([-1.0, -2.0], [-3.0], -3.0, -3.0),  # policy == reference
]


def _tether_pair(tok_w, tok_l, ref_w, ref_l, grad=False) -> LossInputs:
    return _pair([sum(tok_w)], [len(tok_w)], [sum(tok_l)], [len(tok_l)], rw=[ref_w], rl=[ref_l], grad=grad)


@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("pair", TRL_PAIRS)
def test_dpo_matches_trl(trl_mod, pair, beta):
    """dpo == TRL DPOTrainer loss_type='sigmoid' (value, gradient w.r.t. the summed log-probs, metrics)."""
    trl_loss, log_probs, trl_metrics = trl_dpo_compute_loss(trl_mod, "sigmoid", beta, *pair)
    inp = _tether_pair(*pair, grad=True)
    out = losses.dpo(inp, beta=beta)
    assert_close(out.losses, [trl_loss.item()])
    # Gradients: TRL's d loss/d token log-prob is the same for every completion token of a side and equals
    # tether's d loss/d summed log-prob.
    trl_loss.backward()
    out.losses.sum().backward()
    n_w, n_l = len(pair[0]), len(pair[1])
    assert_close(log_probs.grad[0, PROMPT - 1 : PROMPT - 1 + n_w], [inp.chosen.sum.grad.item()] * n_w)
    assert_close(log_probs.grad[1, PROMPT - 1 : PROMPT - 1 + n_l], [inp.rejected.sum.grad.item()] * n_l)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
        assert_metric(out, key, [trl_metrics[key]])
    assert_metric(out, "logps/chosen", [trl_metrics["logps/chosen"]])
    assert_metric(out, "logps/rejected", [trl_metrics["logps/rejected"]])


@pytest.mark.parametrize("beta", [0.1, 0.5])
@pytest.mark.parametrize("pair", TRL_PAIRS)
def test_ipo_matches_trl(trl_mod, pair, beta):
    """ipo == TRL DPOTrainer loss_type='ipo', which divides each summed log-ratio by its completion
    length (``completion_mask.sum(dim=1)``); tether's n_tokens is that same count."""
    trl_loss, _, _ = trl_dpo_compute_loss(trl_mod, "ipo", beta, *pair)
    assert_close(losses.ipo(_tether_pair(*pair), beta=beta).losses, [trl_loss.item()])


@pytest.mark.parametrize("pair", TRL_PAIRS)
def test_sft_matches_trl(trl_mod, pair):
    """sft == TRL DPOTrainer loss_type='sft' (mean chosen-token NLL; per example when the batch is one pair)."""
    trl_loss, _, _ = trl_dpo_compute_loss(trl_mod, "sft", 0.1, *pair)
    inp = _tether_pair(*pair)
    assert_close(losses.sft(LossInputs(chosen=inp.chosen)).losses, [trl_loss.item()])


@pytest.mark.parametrize("s", [1, -1, 0])
@pytest.mark.parametrize("pair", TRL_PAIRS[:3])
def test_epsilon_dpo_matches_trl_sigmoid_at_beta_i(trl_mod, pair, s):
    """TRL has no ε-DPO. With s fixed, ε-DPO's pair loss is TRL's sigmoid DPO loss at β_i = β/(1 + ε·s)."""
    beta, eps = 0.1, 0.25
    tok_w, tok_l, ref_w, ref_l = pair
    lr = sum(tok_w) - sum(tok_l)
    hi, lo = [lr + 1.0], [lr - 1.0]
    lr_plus, lr_minus = {1: (hi, lo), -1: (lo, hi), 0: (hi, hi)}[s]
    cp = Perturbed(plus=t(*lr_plus), minus=t(*lr_minus))
    rp = Perturbed(plus=t(0.0), minus=t(0.0))
    inp = _pair([sum(tok_w)], [len(tok_w)], [sum(tok_l)], [len(tok_l)], rw=[ref_w], rl=[ref_l], cp=cp, rp=rp)
    out = losses.epsilon_dpo(inp, beta=beta, epsilon=eps)
    assert out.metrics["kl/s"].item() == s
    trl_loss, _, trl_metrics = trl_dpo_compute_loss(trl_mod, "sigmoid", beta / (1 + eps * s), *pair)
    assert_close(out.losses, [trl_loss.item()])
    assert_metric(out, "rewards/chosen", [trl_metrics["rewards/chosen"]])


AVG_PAIRS = [(-0.5, -1.5), (-2.0, -0.3), (-0.01, -0.02), (-1.0, -1.0), (-12.0, -0.9)]


@pytest.mark.parametrize(("beta", "gamma"), [(2.0, 0.5), (2.5, 1.4), (0.7, 0.0)])
def test_simpo_matches_trl_cpo(trl_mod, beta, gamma):
    """simpo == TRL CPOTrainer.cpo_loss with loss_type='simpo' (TRL feeds it length-averaged log-probs:
    ``average_log_prob=self.loss_type in ['ipo', 'simpo']``). cpo_alpha's NLL term is outside cpo_loss."""
    avg_w, avg_l = t(*[p[0] for p in AVG_PAIRS]), t(*[p[1] for p in AVG_PAIRS])
    cpo = types.SimpleNamespace(
        alpha=0.0,
        beta=beta,
        simpo_gamma=gamma,
        loss_type="simpo",
        label_smoothing=0.0,
        accelerator=_trl_accelerator(),
    )
    trl_losses, trl_chosen, trl_rejected = trl_mod.CPOTrainer.cpo_loss(cpo, avg_w, avg_l)
    ones = torch.ones_like(avg_w)
    out = losses.simpo(
        LossInputs(chosen=seq(avg_w * 3, 3 * ones), rejected=seq(avg_l * 5, 5 * ones)), beta=beta, gamma=gamma
    )
    torch.testing.assert_close(out.losses, trl_losses, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.metrics["rewards/chosen"], trl_chosen.float())
    torch.testing.assert_close(out.metrics["rewards/rejected"], trl_rejected.float())


@pytest.mark.parametrize("beta", [0.1, 0.25])
def test_orpo_matches_trl(trl_mod, beta):
    """orpo == −avg_w − (TRL ORPOTrainer.odds_ratio_loss's per-pair ``losses`` = β·log σ(log-odds)).

    TRL's full ORPO loss is ``policy_nll_loss − losses.mean()`` where policy_nll_loss comes from the model's
    logits over *prompt and response* tokens (a TRL choice needing a full model); the OR term, the part with
    the ORPO-specific math, is called directly. TRL casts to float32 inside, so compare at float32 precision.
    """
    avg_w, avg_l = t(*[p[0] for p in AVG_PAIRS]), t(*[p[1] for p in AVG_PAIRS])
    orpo = types.SimpleNamespace(beta=beta, accelerator=_trl_accelerator())
    trl_losses, *_ = trl_mod.orpo.ORPOTrainer.odds_ratio_loss(orpo, avg_w, avg_l)
    ones = torch.ones_like(avg_w)
    out = losses.orpo(
        LossInputs(chosen=seq(avg_w * 4, 4 * ones), rejected=seq(avg_l * 2, 2 * ones)), beta=beta
    )
    torch.testing.assert_close(out.losses, -avg_w - trl_losses.double(), rtol=1e-6, atol=1e-7)
    # TRL returns mean(log_odds); one pair at a time gives it per pair.
    for i in range(len(AVG_PAIRS)):
        *_, trl_log_odds = trl_mod.orpo.ORPOTrainer.odds_ratio_loss(orpo, avg_w[i : i + 1], avg_l[i : i + 1])
        torch.testing.assert_close(out.metrics["orpo/log_odds"][i], trl_log_odds, rtol=1e-6, atol=1e-6)


def trl_cpo_batch(trl_mod, loss_type, beta, cpo_alpha, pairs):
    """Run ``CPOTrainer.get_batch_loss_metrics`` (TRL 1.16) on given per-token completion log-probs.

    The real method (and the ``concatenated_forward``, ``concatenated_inputs``, ``get_batch_logps``,
    ``cpo_loss`` it calls) is bound to a namespace carrying the attributes it reads. The stub model returns
    logits over a 2-token vocabulary: at the position predicting a completion token (label 0) they are
    ``[lp, log(1 − e^lp)]``, so TRL's log-softmax gives back exactly ``lp`` (and its cross-entropy ``−lp``).
    Prompt tokens (``PROMPT`` of them) and padding carry label −100, as in TRL's tokenisation. Everything
    from the logits on is TRL's code: summed log-probs, ``cpo_loss``, the NLL (``nn.CrossEntropyLoss``
    over the chosen rows) and ``loss = losses.mean() + cpo_alpha·nll``. ``pairs`` are
    (chosen token log-probs, rejected token log-probs). Returns (loss, metrics, the [2B, T] leaf of token
    log-probs the logits are built from: rows are chosen then rejected, a completion token's log-prob at
    ``PROMPT − 1 + t``). The logits' log-sum-exp is identically 0, so d loss/d leaf is d loss/d log-prob.
    """
    width = PROMPT + max(len(toks) for pair in pairs for toks in pair)
    b = len(pairs)
    batch, token_logps = {}, torch.full((2 * b, width), -1.0, dtype=F64)  # −1 where labels are −100
    for side, offset in (("chosen", 0), ("rejected", b)):
        labels = torch.full((b, width), -100, dtype=torch.long)
        for i, pair in enumerate(pairs):
            toks = pair[0] if side == "chosen" else pair[1]
            labels[i, PROMPT : PROMPT + len(toks)] = 0
            token_logps[offset + i, PROMPT - 1 : PROMPT - 1 + len(toks)] = torch.tensor(toks, dtype=F64)
        batch[f"{side}_input_ids"] = torch.zeros(b, width, dtype=torch.long)
        batch[f"{side}_attention_mask"] = torch.ones(b, width, dtype=torch.long)
        batch[f"{side}_labels"] = labels
    token_logps.requires_grad_(True)
    logits = torch.stack([token_logps, losses.log1mexp(token_logps)], -1)

    def model(input_ids, **kwargs):
        assert input_ids.shape == logits.shape[:2]
        return types.SimpleNamespace(logits=logits)

    cpo = types.SimpleNamespace(
        is_encoder_decoder=False,
        pad_token_id=0,
        aux_loss_enabled=False,
        accelerator=_trl_accelerator(),
        loss_type=loss_type,
        beta=beta,
        cpo_alpha=cpo_alpha,
        alpha=0.0,
        label_smoothing=0.0,
        simpo_gamma=0.5,
        concatenated_inputs=trl_mod.CPOTrainer.concatenated_inputs,
        get_batch_logps=trl_mod.CPOTrainer.get_batch_logps,
    )
    cpo.concatenated_forward = types.MethodType(trl_mod.CPOTrainer.concatenated_forward, cpo)
    cpo.cpo_loss = types.MethodType(trl_mod.CPOTrainer.cpo_loss, cpo)
    loss, metrics = trl_mod.CPOTrainer.get_batch_loss_metrics(cpo, model, batch)
    return loss, metrics, token_logps


def random_token_pairs(n: int, seed: int) -> list[tuple[list[float], list[float]]]:
    """``n`` pairs of per-token log-probs in (−3, −0.05), 1–6 tokens per answer, lengths unequal."""
    g = torch.Generator().manual_seed(seed)

    def toks():
        k = int(torch.randint(1, 7, (1,), generator=g))
        return (-(torch.rand(k, generator=g, dtype=F64) * 2.95 + 0.05)).tolist()

    return [(toks(), toks()) for _ in range(n)]


def _sums(pairs, grad=False) -> LossInputs:
    """Pair inputs from per-token log-prob lists: summed log-probs and token counts of each side."""
    chosen, rejected = [w for w, _ in pairs], [r for _, r in pairs]
    return _pair([sum(x) for x in chosen], [len(x) for x in chosen], [sum(x) for x in rejected],
                 [len(x) for x in rejected], grad=grad)  # fmt: skip


@pytest.mark.parametrize(("beta", "lam"), [(0.1, 1.0), (0.5, 0.3), (0.05, 0.0)])
def test_cpo_matches_trl(trl_mod, beta, lam):
    """cpo with the per-token NLL (``lambda_nll_avg`` = λ) == TRL CPOTrainer loss_type='sigmoid',
    cpo_alpha = λ, one pair per call (TRL's NLL is the token mean over the micro-batch's chosen tokens, which
    for one pair is −avg(y_w)); random pairs, float64, values and gradients to 1e-10. TRL's metrics match
    tether's."""
    for pair in random_token_pairs(8, seed=int(beta * 100)):
        trl_loss, trl_metrics, token_logps = trl_cpo_batch(trl_mod, "sigmoid", beta, lam, [pair])
        inp = _sums([pair], grad=True)
        out = losses.cpo(inp, beta=beta, lambda_nll=0.0, lambda_nll_avg=lam)
        assert_close(out.losses, [trl_loss.item()], tol=1e-10)
        # Gradients: TRL's d loss/d token log-prob is the same for every completion token of a side and
        # equals tether's d loss/d summed log-prob (the per-token NLL's −λ/n_w included).
        trl_loss.backward()
        out.losses.sum().backward()
        (n_w, n_l), at = (len(pair[0]), len(pair[1])), PROMPT - 1
        assert_close(token_logps.grad[0, at : at + n_w], [inp.chosen.sum.grad.item()] * n_w, tol=1e-10)
        assert_close(token_logps.grad[1, at : at + n_l], [inp.rejected.sum.grad.item()] * n_l, tol=1e-10)
        for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"):
            assert_metric(out, key, [trl_metrics[key]])
        assert_metric(out, "logps/chosen", [trl_metrics["logps/chosen"]])
        if lam:
            assert_metric(out, "nll", [trl_metrics["nll_loss"]])


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_cpo_preference_term_matches_trl_cpo_loss(trl_mod, beta):
    """cpo with λ = 0 == TRL ``cpo_loss`` (loss_type='sigmoid') per pair on a random batch of summed
    log-probs (TRL sums for 'sigmoid': ``average_log_prob`` only for 'ipo'/'simpo'), to 1e-12."""
    inp = _sums(random_token_pairs(16, seed=7))
    cpo = types.SimpleNamespace(
        alpha=0.0, beta=beta, loss_type="sigmoid", label_smoothing=0.0, accelerator=_trl_accelerator()
    )
    trl_losses, trl_chosen, trl_rejected = trl_mod.CPOTrainer.cpo_loss(cpo, inp.chosen.sum, inp.rejected.sum)
    out = losses.cpo(inp, beta=beta, lambda_nll=0.0)
    torch.testing.assert_close(out.losses, trl_losses, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out.metrics["rewards/chosen"], trl_chosen.float())
    torch.testing.assert_close(out.metrics["rewards/rejected"], trl_rejected.float())


def test_cpo_nll_batch_differs_from_trl_as_documented(trl_mod):
    """On a micro-batch with unequal chosen lengths TRL's NLL is Σ_i(−logp_w,i) / Σ_i n_w,i (one token mean
    over the batch): the mean of tether's summed-form NLL divided by the mean chosen length, and not the mean
    of tether's per-token form −avg(y_w) (each pair weighted equally). Both identities are checked."""
    pairs = random_token_pairs(6, seed=11)
    _, trl_metrics, _ = trl_cpo_batch(trl_mod, "sigmoid", 0.1, 1.0, pairs)
    inp = _sums(pairs)
    summed = (
        losses.cpo(inp, beta=0.1, lambda_nll=1.0).losses - losses.cpo(inp, beta=0.1, lambda_nll=0.0).losses
    )
    token_mean = summed.mean() / inp.chosen.n_tokens.mean()
    assert trl_metrics["nll_loss"] == pytest.approx(token_mean.item(), rel=1e-12)
    per_example = (-inp.chosen.avg).mean().item()
    assert abs(trl_metrics["nll_loss"] - per_example) > 1e-3


@pytest.mark.parametrize(("delta", "lam"), [(1.0, 0.1), (0.5, 1.0), (2.0, 0.0)])
def test_slic_hf_matches_trl_cpo_hinge(trl_mod, delta, lam):
    """slic_hf == δ × TRL CPOTrainer loss_type='hinge' at β = 1/δ and cpo_alpha = λ/δ.

    TRL's hinge is ``relu(1 − β·(logp_w − logp_l))`` on summed log-probs, and
    ``max(0, δ − x) = δ·relu(1 − x/δ)``; TRL's total ``relu(...) + cpo_alpha·(−avg_w)`` (one pair per call)
    times δ is ``max(0, δ − x) + λ·(−avg_w)``, tether's slic_hf with the per-token NLL weight
    ``lambda_nll_avg`` = λ. Random pairs and one exactly on the margin, float64, values and gradients to
    1e-10; and the hinge alone (λ = 0) against TRL's per-pair ``cpo_loss`` on a batch, to 1e-12.
    """
    pairs = random_token_pairs(8, seed=int(delta * 10))
    pairs.append(([-0.5], [-0.5 - delta]))  # exactly on the margin: hinge 0 in both
    for pair in pairs:
        trl_loss, _, token_logps = trl_cpo_batch(trl_mod, "hinge", 1.0 / delta, lam / delta, [pair])
        inp = _sums([pair], grad=True)
        out = losses.slic_hf(inp, delta=delta, lambda_nll=0.0, lambda_nll_avg=lam)
        assert_close(out.losses, [delta * trl_loss.item()], tol=1e-10)
        (delta * trl_loss).backward()  # gradients too, the kink included (relu: 0 there in both)
        out.losses.sum().backward()
        (n_w, n_l), at = (len(pair[0]), len(pair[1])), PROMPT - 1
        assert_close(token_logps.grad[0, at : at + n_w], [inp.chosen.sum.grad.item()] * n_w, tol=1e-10)
        assert_close(token_logps.grad[1, at : at + n_l], [inp.rejected.sum.grad.item()] * n_l, tol=1e-10)
    inp = _sums(random_token_pairs(16, seed=5))
    cpo = types.SimpleNamespace(
        alpha=0.0, beta=1.0 / delta, loss_type="hinge", label_smoothing=0.0, accelerator=_trl_accelerator()
    )
    trl_losses, _, _ = trl_mod.CPOTrainer.cpo_loss(cpo, inp.chosen.sum, inp.rejected.sum)
    out = losses.slic_hf(inp, delta=delta, lambda_nll=0.0)
    torch.testing.assert_close(out.losses, delta * trl_losses, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("delta", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("pair", TRL_PAIRS)
def test_slic_hf_hinge_is_trl_dpo_hinge_without_reference(trl_mod, pair, delta):
    """TRL's DPO ``loss_type='hinge'``, ``relu(1 − β·Δ)``, is the SLiC hinge on reference *log-ratios*; with
    the reference log-probs set to 0 the log-ratios are the log-likelihoods and δ × TRL's loss at β = 1/δ is
    slic_hf's hinge (λ = 0). A second, independent TRL code path for the same identity as the CPO hinge."""
    tok_w, tok_l, _, _ = pair
    trl_loss, _, _ = trl_dpo_compute_loss(trl_mod, "hinge", 1.0 / delta, tok_w, tok_l, 0.0, 0.0)
    out = losses.slic_hf(_sums([(tok_w, tok_l)]), delta=delta, lambda_nll=0.0)
    assert_close(out.losses, [delta * trl_loss.item()], tol=1e-10)


def test_log1mexp_matches_trl(trl_mod):
    """tether's log1mexp == TRL ORPO's ``log1mexp`` (same two branches at −ln 2) in float64 where both are
    defined (TRL's gives −inf at 0; tether's is finite there by design)."""
    x = -torch.logspace(-300, 2, 500, dtype=F64)
    torch.testing.assert_close(losses.log1mexp(x), trl_mod.orpo.log1mexp(x), rtol=1e-15, atol=0)


# ==================================================================================================
# 3. Gradient identities
# ==================================================================================================

R_VALUES = [-30.0, -2.0, -0.1, 0.0, 0.3, 5.0, 40.0]


@pytest.mark.parametrize("beta", [0.04, 0.5])
def test_sft_dpo_gradient(beta):
    """d/d logp of −log σ(β r) = −β·σ(−β r) (minor-sft Eq. 4), r = logp − logp_ref."""
    logp = t(*[r - 10.0 for r in R_VALUES], grad=True)
    out = losses.sft_dpo(LossInputs(chosen=seq(logp, 5.0), ref_chosen=t(*[-10.0] * len(R_VALUES))), beta=beta)
    out.losses.sum().backward()
    assert_close(logp.grad, [-beta * sigmoid(-beta * r) for r in R_VALUES])


@pytest.mark.parametrize("beta", [0.04, 0.5])
def test_minor_sft_gradient(beta):
    """d/d logp of −2·sg[σ(−β r)]·logp/m = −(2/m)·σ(−β r) (minor-sft Eq. 7): the weight is stop-gradient."""
    m = [1.0, 2.0, 3.0, 7.0, 11.0, 64.0, 300.0]
    logp = t(*[r - 10.0 for r in R_VALUES], grad=True)
    inp = LossInputs(chosen=seq(logp, t(*m)), ref_chosen=t(*[-10.0] * len(R_VALUES)))
    losses.minor_sft(inp, beta=beta).losses.sum().backward()
    assert_close(logp.grad, [-(2.0 / mi) * sigmoid(-beta * r) for r, mi in zip(R_VALUES, m, strict=True)])


def test_minor_dpo_gradients():
    """MinorDPO, β = 0.1. Pair 1 has r_l = −2 < 0: clamped, d/d logp_l = 0 exactly, and
    d/d logp_w = −β·σ(−β r_w) with r_w = 1. Pair 2 has r_l = 2 > 0: the DPO gradients,
    d/d logp_w = −β·σ(−βΔ), d/d logp_l = +β·σ(−βΔ), Δ = 1 − 2 = −1."""
    inp = _pair([-3, -3], [2, 2], [-7, -4], [3, 3], rw=[-4, -4], rl=[-5, -6], grad=True)
    losses.minor_dpo(inp, beta=0.1).losses.sum().backward()
    assert inp.rejected.sum.grad[0].item() == 0.0
    assert_close(inp.chosen.sum.grad, [-0.1 * sigmoid(-0.1), -0.1 * sigmoid(0.1)])
    assert_close(inp.rejected.sum.grad[1:], [0.1 * sigmoid(0.1)])


ASFT_CASES = [(-0.5, 4, -1.5, 2), (-2.0, 1, -0.05, 3), (-0.01, 9, -0.9, 1), (-5.0, 2, -0.6931, 5)]


@pytest.mark.parametrize(("avg_w", "n_w", "avg_l", "n_l"), ASFT_CASES)
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_asft_gradients(avg_w, n_w, avg_l, n_l, beta):
    """d/d sum_w = −(1+β)/n_w; d/d sum_l = β·p/(1−p)/n_l with p = exp(avg_l)
    (from −β·log(1 − e^{sum_l/n_l}): −β·(−e^{a}/(1 − e^{a}))·(1/n_l))."""
    inp = _pair([avg_w * n_w], [n_w], [avg_l * n_l], [n_l], grad=True)
    losses.asft(inp, beta=beta).losses.sum().backward()
    p = math.exp(avg_l)
    assert_close(inp.chosen.sum.grad, [-(1 + beta) / n_w])
    assert_close(inp.rejected.sum.grad, [beta * p / (1 - p) / n_l], tol=1e-10)


def asft_literal(avg_w: torch.Tensor, avg_l: torch.Tensor, beta: float) -> torch.Tensor:
    """asft-aligned-sft.txt Eq. 14 / Appendix B as written: −avg_w + β·[−log σ(logit p_w) − log σ(−logit p_l)]."""
    p_w, p_l = avg_w.exp(), avg_l.exp()
    return -avg_w + beta * (
        -torch.nn.functional.logsigmoid(torch.logit(p_w)) - torch.nn.functional.logsigmoid(-torch.logit(p_l))
    )


def asft_appendix_b(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, beta: float) -> torch.Tensor:
    """The authors' Appendix B ``preference_loss`` body, verbatim (on length-averaged log-probs)."""
    import torch.nn.functional as F

    log_f_theta = -F.logsigmoid(chosen_logps - torch.log1p(-torch.exp(chosen_logps))) - F.logsigmoid(
        -rejected_logps + torch.log1p(-torch.exp(rejected_logps))
    )
    sft_loss = -chosen_logps
    return sft_loss + beta * log_f_theta


@pytest.mark.parametrize("beta", [0.1, 0.3])
def test_asft_literal_form_equals_simplified(beta):
    """Eq. 14 / App. B literal forms == tether's −(1+β)·avg_w − β·log1mexp(avg_l) (values and gradients),
    away from the guard, to 1e-10."""
    avg_w = t(-0.5, -2.0, -0.01, -5.0, -0.2, grad=True)
    avg_l = t(-1.5, -0.05, -0.9, -0.6931, -3.0, grad=True)
    ones = torch.ones(5, dtype=F64)
    out = losses.asft(LossInputs(chosen=seq(avg_w, ones), rejected=seq(avg_l, ones)), beta=beta)
    for form in (asft_literal, asft_appendix_b):
        ref = form(avg_w, avg_l, beta)
        torch.testing.assert_close(out.losses, ref, rtol=1e-10, atol=1e-10)
        g_tether = torch.autograd.grad(out.losses.sum(), (avg_w, avg_l), retain_graph=True)
        g_ref = torch.autograd.grad(ref.sum(), (avg_w, avg_l))
        for a, b in zip(g_tether, g_ref, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("avg_l", [-1e-12, 0.0, -1e-7, 1e-9])
def test_asft_guard_is_finite_and_flagged(avg_l, dtype):
    """As avg_l → 0 the rejected term −β·log(1 − e^{avg_l}) → +∞. tether clamps avg_l at −1e-6 (value) with
    a straight-through gradient: the loss is finite, bounded by −(1+β)avg_w + β·(−log(1 − e^{−1e-6})), the
    gradient is finite and positive (still pushes the rejected down), and ``asft/guarded`` is 1."""
    beta, n_l = 0.1, 4.0
    s_w = torch.tensor([-2.0], dtype=dtype, requires_grad=True)
    s_l = torch.tensor([avg_l * n_l], dtype=dtype, requires_grad=True)
    ones = torch.ones(1, dtype=dtype)
    out = losses.asft(LossInputs(chosen=seq(s_w, 2 * ones), rejected=seq(s_l, n_l * ones)), beta=beta)
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all()
    assert torch.isfinite(s_l.grad).all() and s_l.grad.item() > 0
    assert out.metrics["asft/guarded"].item() == 1.0
    eps = losses.ASFT_LOG1MEXP_EPS
    bound = 1.1 * 1.0 - beta * math.log(-math.expm1(-eps))
    tol = 1e-12 if dtype == F64 else 1e-5
    assert out.losses.item() == pytest.approx(bound, rel=tol)
    p = math.exp(-eps)  # gradient at the clamp point
    assert s_l.grad.item() == pytest.approx(beta * p / (1 - p) / n_l, rel=1e-4 if dtype == F64 else 5e-2)


def test_asft_guard_not_flagged_below_threshold():
    out = losses.asft(_pair([-2, -2], [2, 2], [-4e-6, -1.0], [2, 2]), beta=0.1)
    assert_metric(out, "asft/guarded", [0.0, 0.0])


def _log1mexp_exact(x: float) -> float:
    """log(1 − e^x) with 700-digit decimals (the float64 naive form loses digits near 0 and below −37)."""
    getcontext().prec = 700
    return float((Decimal(1) - Decimal(x).exp()).ln())


def test_log1mexp_matches_high_precision():
    """log1mexp(x) == log(1 − e^x) in float64 to a few ulps over [−700, −1e-300], both branches (the switch is
    at −ln 2 ≈ −0.6931), and finite (value and gradient) at and near 0⁻ in float64 and float32."""
    xs = [-700.0, -50.0, -37.0, -5.0, -1.0, -0.7, -0.6931471805599453, -0.69, -0.5, -0.1, -1e-3]
    xs += [-1e-8, -1e-12, -1e-20, -1e-100, -1e-300]
    got = losses.log1mexp(t(*xs))
    for x, g in zip(xs, got.tolist(), strict=True):
        assert g == pytest.approx(_log1mexp_exact(x), rel=1e-14, abs=0), x
    for dtype in (torch.float64, torch.float32):
        x = torch.tensor([-1e-30, -1e-7, -0.0, 0.0], dtype=dtype, requires_grad=True)
        y = losses.log1mexp(x)
        (g,) = torch.autograd.grad(y.sum(), x)
        assert torch.isfinite(y).all() and torch.isfinite(g).all()


def test_log1mexp_gradient():
    """d/dx log(1 − e^x) = −e^x/(1 − e^x) = −1/expm1(−x), on both branches."""
    xs = [-20.0, -3.0, -0.8, -0.6, -0.1, -1e-4]
    x = t(*xs, grad=True)
    (g,) = torch.autograd.grad(losses.log1mexp(x).sum(), x)
    assert_close(g, [-1.0 / math.expm1(-v) for v in xs], tol=1e-10)


M_VALUES = [-30.0, -2.0, -0.5, 0.0, 0.3, 0.99, 1.01, 5.0, 40.0]  # summed margins logp_w − logp_l


@pytest.mark.parametrize(("beta", "lam"), [(0.1, 1.0), (0.5, 0.0)])
def test_cpo_gradient(beta, lam):
    """d/d logp_w of −log σ(β m) − λ·logp_w = −β·σ(−β m) − λ; d/d logp_l = +β·σ(−β m), m = logp_w − logp_l."""
    n = len(M_VALUES)
    inp = _pair([m - 10.0 for m in M_VALUES], [3] * n, [-10.0] * n, [5] * n, grad=True)
    losses.cpo(inp, beta=beta, lambda_nll=lam).losses.sum().backward()
    assert_close(inp.chosen.sum.grad, [-beta * sigmoid(-beta * m) - lam for m in M_VALUES])
    assert_close(inp.rejected.sum.grad, [beta * sigmoid(-beta * m) for m in M_VALUES])


@pytest.mark.parametrize("lam", [0.1, 0.0])
def test_slic_hf_hinge_inactive_beyond_margin(lam):
    """Inside the margin (m < δ) the hinge pulls with slope 1: d/d logp_w = −1 − λ, d/d logp_l = +1. Beyond
    it (m > δ) the hinge is flat: only the NLL's −λ on the chosen side, exactly 0 on the rejected side."""
    delta, n = 1.0, len(M_VALUES)
    inp = _pair([m - 10.0 for m in M_VALUES], [3] * n, [-10.0] * n, [5] * n, grad=True)
    out = losses.slic_hf(inp, delta=delta, lambda_nll=lam)
    out.losses.sum().backward()
    inside = [m < delta for m in M_VALUES]
    assert_close(inp.chosen.sum.grad, [-1.0 - lam if a else -lam for a in inside])
    assert_close(inp.rejected.sum.grad, [1.0 if a else 0.0 for a in inside])
    assert_metric(out, "slic_hf/hinge_active", [float(a) for a in inside])


@pytest.mark.parametrize("lam", [1.0, 0.0])
def test_rrhf_ranking_gradient_zero_when_ranked_right(lam):
    """RRHF's ranking term max(0, avg_l − avg_w) has no gradient once avg_w > avg_l: then d/d logp_l = 0 and
    d/d logp_w = −λ (the NLL only). Ranked wrongly: d/d logp_w = −1/n_w − λ, d/d logp_l = +1/n_l."""
    avg_w = [-0.5, -2.0, -0.1, -3.0, -1.0]
    avg_l = [-1.5, -0.3, -0.2, -0.4, -1.2]
    n_w, n_l = [4.0, 3.0, 7.0, 1.0, 2.0], [2.0, 5.0, 1.0, 6.0, 3.0]
    sw = [a * n for a, n in zip(avg_w, n_w, strict=True)]
    sl = [a * n for a, n in zip(avg_l, n_l, strict=True)]
    inp = _pair(sw, n_w, sl, n_l, grad=True)
    losses.rrhf(inp, lambda_nll=lam).losses.sum().backward()
    right = [w > r for w, r in zip(avg_w, avg_l, strict=True)]
    assert_close(
        inp.chosen.sum.grad, [-lam if ok else -1.0 / nw - lam for ok, nw in zip(right, n_w, strict=True)]
    )
    assert_close(inp.rejected.sum.grad, [0.0 if ok else 1.0 / nl for ok, nl in zip(right, n_l, strict=True)])


def test_r_dpo_gradient():
    """d/d logp_w of −log σ(βΔ + α(n_w − n_l)) = −β·σ(−(βΔ + α(n_w − n_l))) (lengths are data, not
    differentiable); d/d logp_l is its negative. β = 0.1, α = 0.05."""
    beta, alpha = 0.1, 0.05
    n_w, n_l = [3.0, 10.0, 1.0, 40.0], [8.0, 2.0, 1.0, 5.0]
    deltas = [-3.0, 0.0, 2.0, 25.0]
    inp = _pair([d - 10.0 for d in deltas], n_w, [-10.0] * 4, n_l, rw=[0.0] * 4, rl=[0.0] * 4, grad=True)
    losses.r_dpo(inp, beta=beta, alpha=alpha).losses.sum().backward()
    z = [beta * d + alpha * (a - b) for d, a, b in zip(deltas, n_w, n_l, strict=True)]
    assert_close(inp.chosen.sum.grad, [-beta * sigmoid(-x) for x in z])
    assert_close(inp.rejected.sum.grad, [beta * sigmoid(-x) for x in z])


@pytest.mark.parametrize("name", ["cpo", "slic_hf", "rrhf"])
def test_nll_forms_differ_by_the_length_factor(name):
    """The NLL term in the papers' summed form (``lambda_nll`` = λ: −λ·logp(y_w)) is n(y_w) times the
    per-token form (``lambda_nll_avg`` = λ: −λ·avg(y_w)), in value and in its gradient w.r.t. logp(y_w)
    (−λ against −λ/n_w); the preference/ranking term is the same in both."""
    method, lam = METHODS[name], 0.7
    hp = method.hparams({})
    g = torch.Generator().manual_seed(1)
    n_w, n_l = (
        torch.randint(1, 20, (8,), generator=g).double(),
        torch.randint(1, 20, (8,), generator=g).double(),
    )
    s_w = (-torch.rand(8, generator=g, dtype=F64) * 3 * n_w).requires_grad_(True)
    s_l = -torch.rand(8, generator=g, dtype=F64) * 3 * n_l
    inp = LossInputs(chosen=seq(s_w, n_w), rejected=seq(s_l, n_l))

    def nll_part(lambda_nll, lambda_nll_avg):
        full = method.loss(inp, **{**hp, "lambda_nll": lambda_nll, "lambda_nll_avg": lambda_nll_avg}).losses
        return full - method.loss(inp, **{**hp, "lambda_nll": 0.0, "lambda_nll_avg": 0.0}).losses

    summed, per_token = nll_part(lam, 0.0), nll_part(0.0, lam)
    torch.testing.assert_close(summed, n_w * per_token, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(summed, -lam * s_w, rtol=1e-12, atol=1e-12)
    (g_sum,) = torch.autograd.grad(summed.sum(), s_w)
    (g_tok,) = torch.autograd.grad(per_token.sum(), s_w)
    assert_close(g_sum, [-lam] * 8)
    assert_close(g_sum, (n_w * g_tok).tolist())


# ==================================================================================================
# 4. ε-DPO criterion and β update
# ==================================================================================================


@pytest.mark.parametrize(
    ("lr_plus", "lr_minus", "s"),
    [
        (5.0, 3.0, 1),  # LR⁺ > LR > LR⁻
        (3.0, 5.0, -1),  # LR⁻ > LR > LR⁺
        (4.0, 3.0, 0),  # LR⁺ == LR: tie
        (5.0, 4.0, 0),  # LR == LR⁻: tie
        (4.0, 4.0, 0),  # all equal (the bf16 case)
        (5.0, 6.0, 0),  # both above LR: not monotone
        (2.0, 3.0, 0),  # both below LR
        (4.0 + 1e-12, 4.0 - 1e-12, 1),  # strict but tiny
    ],
)
def test_epsilon_criterion(lr_plus, lr_minus, s):
    """LR = −3 − (−7) = 4; s = +1 iff LR⁺ > LR > LR⁻, −1 iff LR⁻ > LR > LR⁺, else 0 (strict)."""
    got = losses.epsilon_criterion(_eps_inputs([lr_plus], [lr_minus], grad=True))
    assert got.tolist() == [float(s)]
    assert not got.requires_grad


def test_epsilon_criterion_uses_differences_of_both_sides():
    """LR⁺ = cp.plus − rp.plus: shifting both sides by the same amount leaves s unchanged; shifting only the
    rejected side flips it. Here cp.plus = −2, rp.plus = −7 → LR⁺ = 5; LR⁻ = −4 − (−7) = 3; LR = 4 → +1."""
    cp, rp = Perturbed(plus=t(-2.0), minus=t(-4.0)), Perturbed(plus=t(-7.0), minus=t(-7.0))
    base = dict(sw=[-3], nw=[2], sl=[-7], nl=[3], rw=[-4], rl=[-5])
    assert losses.epsilon_criterion(_pair(**base, cp=cp, rp=rp)).item() == 1.0
    shifted = Perturbed(plus=t(-12.0), minus=t(-14.0)), Perturbed(plus=t(-17.0), minus=t(-17.0))
    assert losses.epsilon_criterion(_pair(**base, cp=shifted[0], rp=shifted[1])).item() == 1.0
    flipped = Perturbed(plus=t(-5.0), minus=t(-9.0))  # LR⁺ = −2 + 5 = 3, LR⁻ = −4 + 9 = 5
    assert losses.epsilon_criterion(_pair(**base, cp=cp, rp=flipped)).item() == -1.0


def test_epsilon_dpo_no_gradient_through_perturbed():
    """s only selects β_i: gradients of ε-DPO are those of DPO at β_i, none reach the perturbed values."""
    inp = _eps_inputs([5.0], [3.0], grad=True)
    assert not inp.chosen_perturbed.plus.requires_grad
    losses.epsilon_dpo(inp, beta=0.1, epsilon=0.5).losses.sum().backward()
    b = 0.1 / 1.5
    assert_close(inp.chosen.sum.grad, [-b * sigmoid(-3 * b)])
    assert_close(inp.rejected.sum.grad, [b * sigmoid(-3 * b)])


def test_epsilon_dpo_update_is_harmonic_mean():
    """β ← β/(1 + ε·mean(s)) = harmonic mean of β_i = β/(1 + ε s_i):
    n / Σ (1 + ε s_i)/β = β / (1 + ε·mean(s)). Batch s = [+1, −1, 0, +1, +1], β = 0.1, ε = 0.5:
    mean(s) = 0.4 → β' = 0.1/1.2; HM = 5 / (1.5 + 0.5 + 1 + 1.5 + 1.5)/0.1 = 0.5/6 = 0.1/1.2."""
    beta, eps = 0.1, 0.5
    inp = _eps_inputs([5.0, 3.0, 4.0, 5.0, 5.0], [3.0, 5.0, 3.0, 3.0, 3.0])
    out = losses.epsilon_dpo(inp, beta=beta, epsilon=eps)
    s = [1, -1, 0, 1, 1]
    assert out.metrics["kl/s"].tolist() == s
    beta_i = [beta / (1 + eps * si) for si in s]
    harmonic = len(s) / sum(1 / b for b in beta_i)
    hp = {"beta": beta, "epsilon": eps}
    new = losses.epsilon_dpo_update(hp, {"kl/s": sum(s) / len(s)})
    assert new["beta"] == pytest.approx(harmonic, rel=1e-15)
    assert new["beta"] == pytest.approx(0.1 / 1.2, rel=1e-15)
    assert new["epsilon"] == eps and hp == {"beta": beta, "epsilon": eps}  # input not mutated
    # The trainer feeds the global-batch mean of the logged metric (float32); that gives the same β.
    from_metric = losses.epsilon_dpo_update(hp, {"kl/s": out.metrics["kl/s"].mean().item()})
    assert from_metric["beta"] == pytest.approx(harmonic, rel=1e-7)
    assert METHODS["epsilon_dpo"].on_optimizer_step is losses.epsilon_dpo_update


# ==================================================================================================
# 4b. β-DPO's batch plan and loss
# ==================================================================================================

BETA_DPO = {"beta": 0.1, "rho": 0.2, "a": 0.6, "momentum": 0.9, "per_micro_batch": 0.0}


def _margin_pairs(deltas: list[float], grad: bool = False) -> LossInputs:
    """Pairs whose margin Δ = r_w − r_l is ``deltas`` (r_l = 0, reference log-probs −10)."""
    k = len(deltas)
    return _pair([d - 10.0 for d in deltas], [3] * k, [-10.0] * k, [3] * k, rw=[-10.0] * k, rl=[-10.0] * k,
                 grad=grad)  # fmt: skip


def _std(xs: list[float]) -> float:
    """Unbiased standard deviation (torch's default, as the authors' ``gap_local.std()``)."""
    mu = sum(xs) / len(xs)
    return math.sqrt(sum((x - mu) ** 2 for x in xs) / (len(xs) - 1))


def test_beta_dpo_plan_without_filter():
    """ρ = 0: every pair kept. Δ = [1, 2, 3, 6], state M = 0.5, σ = 1, m = 0.9, β = 0.1, a = 0.6.

    mean Δ = 3, std Δ = sqrt(14/3) ≈ 2.1602 → M' = 0.9·0.5 + 0.1·3 = 0.75, σ' = 0.9 + 0.1·2.1602;
    K = int(4·1) = 4 → kept mean 3 → β_b = 0.1·(1 + 0.6·(3 − 0.75)) = 0.235; weights 1;
    loss_i = log(1 + e^{−0.235·Δ_i}).
    """
    deltas = [1.0, 2.0, 3.0, 6.0]
    hp = {**BETA_DPO, "rho": 0.0, "gap_mean": 0.5, "gap_std": 1.0}
    new, per = losses.beta_dpo_plan(hp, t(*deltas), torch.Generator().manual_seed(0))
    mean, std = 0.9 * 0.5 + (1 - 0.9) * 3.0, 0.9 * 1.0 + (1 - 0.9) * _std(deltas)
    assert new["gap_mean"] == pytest.approx(0.75, abs=1e-15) and mean == pytest.approx(0.75, abs=1e-15)
    assert new["gap_std"] == pytest.approx(std, abs=1e-12) and std == pytest.approx(1.116024, abs=1e-6)
    assert new["beta_batch"] == pytest.approx(0.235, abs=1e-12)
    assert_close(per["beta_b"], [0.235] * 4)
    assert_close(per["weight"], [1.0] * 4)
    out = losses.beta_dpo(_margin_pairs(deltas), **new, **per)
    assert_close(out.losses, [softplus(-0.235 * d) for d in deltas])
    assert_metric(out, "rewards/margins", [0.1 * d for d in deltas])  # rewards at the base β
    assert_metric(out, "beta_dpo/kept_fraction", [1.0] * 4)


def test_beta_dpo_plan_filters_with_the_seeded_draw():
    """ρ = 0.5: K = int(4·0.5) = 2 pairs drawn without replacement with probabilities ∝
    p_i = exp(−½((Δ_i − M')/σ')²), computed here by hand from M' and σ'; the kept pairs are those
    ``torch.multinomial`` returns for the same seeded generator; β_b uses their mean; a kept pair weighs
    4/2 = 2, so the mean loss over the 4 pairs is the mean over the 2 kept ones."""
    deltas = [-4.0, 0.5, 1.0, 9.0]
    hp = {**BETA_DPO, "rho": 0.5, "gap_mean": 1.0, "gap_std": 2.0}
    new, per = losses.beta_dpo_plan(hp, t(*deltas), torch.Generator().manual_seed(7))
    mean = 0.9 * 1.0 + (1 - 0.9) * (sum(deltas) / 4)
    std = 0.9 * 2.0 + (1 - 0.9) * _std(deltas)
    p = torch.tensor([math.exp(-0.5 * ((d - mean) / std) ** 2) for d in deltas], dtype=F64)
    kept = sorted(
        torch.multinomial(p, 2, replacement=False, generator=torch.Generator().manual_seed(7)).tolist()
    )
    beta_b = 0.1 * (1 + 0.6 * (sum(deltas[i] for i in kept) / 2 - mean))
    assert (new["gap_mean"], new["gap_std"]) == (
        pytest.approx(mean, abs=1e-12),
        pytest.approx(std, abs=1e-12),
    )
    assert new["beta_batch"] == pytest.approx(beta_b, abs=1e-12)
    assert_close(per["weight"], [2.0 if i in kept else 0.0 for i in range(4)])
    out = losses.beta_dpo(_margin_pairs(deltas), **new, **per)
    expected = [2.0 * softplus(-beta_b * d) if i in kept else 0.0 for i, d in enumerate(deltas)]
    assert_close(out.losses, expected)
    assert float(out.losses.mean()) == pytest.approx(
        sum(softplus(-beta_b * deltas[i]) for i in kept) / 2, abs=1e-6
    )
    assert_metric(out, "beta_dpo/kept_fraction", [1.0 if i in kept else 0.0 for i in range(4)])
    # other seeds draw other sets (the draw is the generator's, not fixed): over 20 seeds more than one set
    sets = set()
    for seed in range(20):
        _, other = losses.beta_dpo_plan(hp, t(*deltas), torch.Generator().manual_seed(seed))
        sets.add(tuple(other["weight"].nonzero().flatten().tolist()))
    assert len(sets) > 1


def test_beta_dpo_plan_guards():
    """σ = 0 (all Δ equal, fresh state, e.g. step 0): nothing filtered, β_b = β. One pair: nothing filtered,
    σ unchanged (a one-pair std is undefined). A low kept mean: β_b is floored at 1e-3. At least one pair
    is kept even when int(n·(1 − ρ)) = 0."""
    new, per = losses.beta_dpo_plan({**BETA_DPO, "rho": 0.9}, t(0.0, 0.0, 0.0), torch.Generator())
    assert (new["gap_mean"], new["gap_std"], new["beta_batch"]) == (0.0, 0.0, 0.1)
    assert_close(per["weight"], [1.0] * 3)
    new, per = losses.beta_dpo_plan({**BETA_DPO, "gap_std": 3.0}, t(2.0), torch.Generator())
    assert new["gap_std"] == 3.0 and new["gap_mean"] == pytest.approx(0.2, abs=1e-15)
    assert_close(per["weight"], [1.0])
    new, per = losses.beta_dpo_plan(
        {**BETA_DPO, "gap_mean": 50.0, "gap_std": 1.0}, t(-1.0, 1.0), torch.Generator()
    )
    assert new["beta_batch"] == losses.BETA_DPO_MIN_BETA and float(per["beta_b"][0]) == 1e-3
    new, per = losses.beta_dpo_plan({**BETA_DPO, "rho": 0.9, "gap_std": 1.0}, t(-1.0, 1.0), torch.Generator())
    assert sorted(per["weight"].tolist()) == [0.0, 2.0]  # K = max(1, int(2·0.1)) = 1 of 2


def test_beta_dpo_plan_per_micro_batch_is_the_groups_in_turn():
    """per_micro_batch = 1 with 2 groups = the plan of group 1 then, from its state, of group 2 (each with
    its own β_b and filter; weights n_g/K_g = 2 for kept pairs); per_micro_batch = 0 ignores the groups."""
    deltas, hp = [0.5, 3.0, -1.0, 2.0], {**BETA_DPO, "rho": 0.5, "gap_mean": 0.2, "gap_std": 1.5}
    g = torch.Generator().manual_seed(3)
    first, p1 = losses.beta_dpo_plan(hp, t(*deltas[:2]), g)
    second, p2 = losses.beta_dpo_plan(first, t(*deltas[2:]), g)
    new, per = losses.beta_dpo_plan(
        {**hp, "per_micro_batch": 1.0}, t(*deltas), torch.Generator().manual_seed(3), 2
    )
    assert (new["gap_mean"], new["gap_std"]) == (second["gap_mean"], second["gap_std"])
    assert new["beta_batch"] == pytest.approx((first["beta_batch"] + second["beta_batch"]) / 2, abs=1e-15)
    torch.testing.assert_close(per["beta_b"], torch.cat([p1["beta_b"], p2["beta_b"]]), rtol=0, atol=0)
    torch.testing.assert_close(per["weight"], torch.cat([p1["weight"], p2["weight"]]), rtol=0, atol=0)
    assert first["beta_batch"] != second["beta_batch"]
    one, _ = losses.beta_dpo_plan(hp, t(*deltas), torch.Generator().manual_seed(3), 2)
    whole, _ = losses.beta_dpo_plan(hp, t(*deltas), torch.Generator().manual_seed(3), 1)
    assert one == whole and one["gap_mean"] != new["gap_mean"]


def test_beta_dpo_without_adaptation_is_dpo():
    """a = 0 and ρ = 0: β_b = β·(1 + 0) = β and every pair weighs 1, so the losses, gradients and reward
    metrics are DPO's at β bit for bit (random pairs, after a state that would filter if ρ > 0)."""
    method = METHODS["beta_dpo"]
    inp, leaves = random_inputs(method, batch=16, seed=5)
    hp = {**method.hparams({"a": 0, "rho": 0}), "gap_mean": 0.3, "gap_std": 0.2}
    hp, per = losses.beta_dpo_plan(hp, losses.beta_dpo_margin(inp), torch.Generator().manual_seed(0))
    b, d = method(inp, hp, per), METHODS["dpo"](inp, {"beta": 0.1})
    torch.testing.assert_close(b.losses, d.losses, rtol=0, atol=0)
    for x, y in zip(
        torch.autograd.grad(b.losses.sum(), leaves), torch.autograd.grad(d.losses.sum(), leaves), strict=True
    ):
        torch.testing.assert_close(x, y, rtol=0, atol=0)
    for key, value in d.metrics.items():
        torch.testing.assert_close(b.metrics[key], value, rtol=0, atol=0)


def test_beta_dpo_is_ln2_at_step_0():
    """policy = reference → Δ = 0 → σ' = 0 (nothing filtered), β_b = β, loss ln 2 for every pair."""
    inp = _pair([-3.5, -40.0, -1.0], [2, 9, 1], [-7.25, -1.0, -2.0], [3, 1, 2], rw=[-3.5, -40.0, -1.0],
                rl=[-7.25, -1.0, -2.0])  # fmt: skip
    hp, per = losses.beta_dpo_plan(BETA_DPO, losses.beta_dpo_margin(inp), torch.Generator())
    assert_close(losses.beta_dpo(inp, **hp, **per).losses, [math.log(2.0)] * 3)
    assert_close(losses.beta_dpo(inp, beta=0.1).losses, [math.log(2.0)] * 3)  # no plan: DPO at β


def test_beta_dpo_gradient_is_weighted_dpo_at_beta_b():
    """d/d logp_w of w·(−log σ(β_b Δ)) = −w·β_b·σ(−β_b Δ), β_b fixed (detached); d/d logp_l its negative."""
    deltas, beta_b, w = [-3.0, 0.0, 2.0, 25.0], 0.3, [2.0, 0.0, 2.0, 0.0]
    inp = _margin_pairs(deltas, grad=True)
    out = losses.beta_dpo(inp, beta=0.1, beta_b=t(*[beta_b] * 4), weight=t(*w))
    out.losses.sum().backward()
    assert_close(
        inp.chosen.sum.grad, [-wi * beta_b * sigmoid(-beta_b * d) for wi, d in zip(w, deltas, strict=True)]
    )
    assert_close(
        inp.rejected.sum.grad, [wi * beta_b * sigmoid(-beta_b * d) for wi, d in zip(w, deltas, strict=True)]
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("rho", 1.0),
        ("rho", -0.1),
        ("momentum", 1.0),
        ("a", -0.1),
        ("per_micro_batch", 0.5),
        ("per_micro_batch", 2),
    ],
)
def test_beta_dpo_hparams_are_bounded(key, value):
    """ρ ∈ [0, 1) (ρ = 1 would keep nothing), m ∈ [0, 1) (m = 1 freezes M = σ = 0), a ≥ 0 (a < 0 would
    lower β for easy batches, against the paper), per_micro_batch ∈ {0, 1}."""
    with pytest.raises(ConfigError, match=key):
        METHODS["beta_dpo"].hparams({key: value})
    assert (
        METHODS["beta_dpo"].hparams({"per_micro_batch": 1, "rho": 0, "momentum": 0, "a": 0})[
            "per_micro_batch"
        ]
        == 1
    )


def test_beta_dpo_batch_problem():
    problem = METHODS["beta_dpo"].batch_plan.problem
    assert problem(BETA_DPO, 1, 2) is None and problem({**BETA_DPO, "per_micro_batch": 1.0}, 2, 4) is None
    assert "the global batch has 1" in problem(BETA_DPO, 1, 1)
    assert "a micro-batch has 1" in problem({**BETA_DPO, "per_micro_batch": 1.0}, 1, 4)


# ==================================================================================================
# 5. Registry
# ==================================================================================================


def random_inputs(method, batch: int = 4, *, with_ref: bool | None = None, seed: int = 0):
    """Valid random float32 inputs for ``method``'s data kind and declared capabilities.

    Returns (inputs, grad leaves). Reference fields only if the method uses a reference (needs it, or
    computes it for metrics); perturbed log-probs only if it declares ``needs_reference_logits``.
    """
    g = torch.Generator().manual_seed(seed)
    with_ref = method.uses_reference if with_ref is None else with_ref

    def side():
        n = torch.randint(1, 20, (batch,), generator=g).float()
        s = (-(torch.rand(batch, generator=g) * 3 + 0.05) * n).requires_grad_(True)
        return SequenceLogps(sum=s, n_tokens=n)

    def ref(sq):
        return (sq.sum.detach() + torch.randn(batch, generator=g)).clone()

    if method.head == "score":  # a reward model: one score per response, no log-probs
        sc = [torch.randn(batch, generator=g).requires_grad_(True) for _ in range(2)]
        return LossInputs(scores=Scores(*sc), row_values={"margin": torch.rand(batch, generator=g)}), sc
    chosen = side()
    rejected = side() if method.data == "pairs" else None
    label = kl = ref_kl = None
    if method.data == "unpaired":
        label = torch.tensor([True, False] * (batch // 2) + [True] * (batch % 2))
    if method.mismatched_completion:
        kl = SequenceLogps(sum=side().sum.detach(), n_tokens=chosen.n_tokens)
        ref_kl = ref(kl) if with_ref else None
    perturbed = None
    if method.needs_reference_logits:
        perturbed = [
            Perturbed(
                plus=x.sum.detach() + torch.randn(batch, generator=g),
                minus=x.sum.detach() + torch.randn(batch, generator=g),
            )
            for x in (chosen, rejected)
        ]
    inp = LossInputs(
        chosen=chosen,
        rejected=rejected,
        ref_chosen=ref(chosen) if with_ref else None,
        ref_rejected=ref(rejected) if with_ref and rejected is not None else None,
        chosen_perturbed=perturbed[0] if perturbed else None,
        rejected_perturbed=perturbed[1] if perturbed else None,
        label=label,
        kl=kl,
        ref_kl=ref_kl,
    )
    leaves = [chosen.sum] + ([rejected.sum] if rejected is not None else [])
    return inp, leaves


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_runs_on_valid_inputs(name):
    method = METHODS[name]
    inp, leaves = random_inputs(method)
    out = method(inp, method.hparams({}))
    assert out.losses.shape == (4,)
    assert torch.isfinite(out.losses).all()
    assert out.losses.requires_grad
    grads = torch.autograd.grad(out.losses.sum(), leaves)
    assert all(torch.isfinite(gr).all() and gr.abs().sum() > 0 for gr in grads)
    assert out.metrics, "every loss logs metrics"
    for key, value in out.metrics.items():
        assert value.shape == (4,), key
        assert not value.requires_grad, key
        assert torch.isfinite(value).all(), key
    if method.uses_reference:
        assert "deviation" in out.metrics  # METHODS.md: every run with a reference logs deviation
    if method.data == "pairs" and method.needs_reference:
        assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"} <= set(
            out.metrics
        )


@pytest.mark.parametrize("name", list(METHODS))
def test_declared_reference_capability_is_truthful(name):
    """A loss that needs no reference runs without one; one that declares it fails loudly without it.
    ε-DPO must fail without its perturbed log-probs."""
    method = METHODS[name]
    inp, _ = random_inputs(method, with_ref=False)
    if method.needs_reference:
        with pytest.raises(ValueError, match="ref_chosen"):
            method.loss(inp, **method.hparams({}))
    else:
        out = method.loss(inp, **method.hparams({}))
        assert torch.isfinite(out.losses).all()
    if method.needs_reference_logits:
        full, _ = random_inputs(method)
        no_pert = LossInputs(full.chosen, full.rejected, full.ref_chosen, full.ref_rejected)
        with pytest.raises(ValueError, match="perturbed"):
            method.loss(no_pert, **method.hparams({}))


#: Methods whose registry entry names its equation instead of numbering it, and why.
UNNUMBERED = {
    "beta_dpo": "the β-DPO paper is not in shared/papers and its equation numbers could not be checked; the "
    "rule is cited by name as METHODS.md specifies it, checked against the authors' trainers.py",
    "r_dpo": "the R-DPO paper is not in shared/papers and its equation number could not be checked; the "
    "loss is cited by name, in the SimPO paper's baseline-table form that METHODS.md specifies",
    "kto": "the KTO paper is not in shared/papers; its loss is cited by name and section (TRL's comment "
    "calls it Eq. 7, which could not be checked against the paper's text)",
}


@pytest.mark.parametrize("name", list(METHODS))
def test_docstring_cites_paper_and_equation(name):
    """Every loss docstring cites its paper and the equation the registry names (same Eq. numbers)."""
    method = METHODS[name]
    doc = method.loss.__doc__ or ""
    assert re.search(r"arXiv:\d{4}\.\d{4,5}|\.txt", doc), "docstring names no paper"
    assert method.paper and method.equation
    if name in UNNUMBERED:  # cited by name: the docstring names the same result
        assert method.equation.split(" (")[0] in " ".join(doc.split()), "docstring does not name the equation"
        return
    cited = re.findall(r"Eq\. [\d\-–]+", method.equation)
    assert cited, f"registry equation {method.equation!r} has no Eq. number"
    for eq in cited:
        assert eq in doc, f"{eq} (registry) not in the docstring"


PAPERS = {
    "sft": "minor-sft.txt",
    "sft_dpo": "minor-sft.txt",
    "minor_sft": "minor-sft.txt",
    "minor_dpo": "minor-sft.txt",
    "epsilon_dpo": "epsilon-dpo.txt",
    "asft": "asft-aligned-sft.txt",
}


def _papers_dir() -> Path | None:
    here = Path(__file__).resolve().parents[1]
    for cand in (here / "shared" / "papers", here.parent / "shared" / "papers"):
        if cand.is_dir():
            return cand
    return None


@pytest.mark.parametrize("name", list(PAPERS))
def test_cited_equation_numbers_exist_in_paper(name):
    """The registry's Eq. numbers exist in the paper's text (equation labels appear as "(N)")."""
    papers = _papers_dir()
    if papers is None:
        pytest.skip("shared/papers not present")
    text = (papers / PAPERS[name]).read_text(encoding="utf-8")
    labels = {int(n) for n in re.findall(r"\((\d{1,2})\)", text)}
    for rng in re.findall(r"Eq\. ([\d\-–]+)", METHODS[name].equation):
        ends = [int(x) for x in re.split(r"[\-–]", rng)]
        for n in range(ends[0], ends[-1] + 1):
            assert n in labels, f"{name}: Eq. {n} is not an equation of {PAPERS[name]} (has {sorted(labels)})"


def test_unknown_method_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'dpo'"):
        get_method("dpoo")
    with pytest.raises(ConfigError, match="valid: "):
        get_method("zzz")


def test_hparams_unknown_key_suggests_closest():
    with pytest.raises(ConfigError, match="did you mean 'beta'"):
        METHODS["dpo"].hparams({"betta": 0.5})
    with pytest.raises(ConfigError, match="did you mean 'epsilon'"):
        METHODS["epsilon_dpo"].hparams({"epsilon_": 0.1})
    with pytest.raises(ConfigError, match="unknown hyper-parameter"):
        METHODS["sft"].hparams({"beta": 0.1})


@pytest.mark.parametrize("name", [n for n, m in METHODS.items() if "beta" in m.defaults])
@pytest.mark.parametrize("beta", [0.0, -0.1, -math.inf, math.nan])
def test_hparams_reject_nonpositive_beta(name, beta):
    with pytest.raises(ConfigError, match="beta"):
        METHODS[name].hparams({"beta": beta})


@pytest.mark.parametrize("epsilon", [0.0, 1.0, -0.01, 1.5, math.nan])
def test_hparams_reject_epsilon_outside_open_unit_interval(epsilon):
    with pytest.raises(ConfigError, match="epsilon"):
        METHODS["epsilon_dpo"].hparams({"epsilon": epsilon})


def test_hparams_accept_valid_and_reject_non_numbers():
    assert METHODS["epsilon_dpo"].hparams({"epsilon": 0.5}) == {"beta": 0.01, "epsilon": 0.5}
    assert METHODS["simpo"].hparams({"gamma": 0}) == {"beta": 2.0, "gamma": 0.0}
    for bad in (True, "abc", None, [0.1]):
        with pytest.raises(ConfigError, match="must be a number"):
            METHODS["dpo"].hparams({"beta": bad})


@pytest.mark.parametrize(
    ("name", "key", "value"),
    [
        ("r_dpo", "alpha", -0.01),
        ("r_dpo", "alpha", math.nan),
        ("slic_hf", "delta", 0.0),
        ("slic_hf", "delta", -1.0),
        ("cpo", "lambda_nll", -0.1),
        ("slic_hf", "lambda_nll", -1.0),
        ("rrhf", "lambda_nll", math.nan),
        ("rrhf", "lambda_nll_avg", -0.5),
        ("cpo", "beta", 0.0),
    ],
)
def test_hparams_reject_out_of_range_comparators(name, key, value):
    """α ≥ 0 (α = 0 is DPO), δ > 0, λ ≥ 0 (λ = 0: no NLL term), β > 0: anything else is a ConfigError."""
    with pytest.raises(ConfigError, match=key):
        METHODS[name].hparams({key: value})


@pytest.mark.parametrize("name", ["cpo", "slic_hf", "rrhf"])
def test_nll_weight_is_given_in_one_form(name):
    """``lambda_nll`` (summed, default) and ``lambda_nll_avg`` (per token) are two forms of one term: giving
    only ``lambda_nll_avg`` switches the summed weight off; both non-zero is refused at config load."""
    method = METHODS[name]
    assert method.hparams({})["lambda_nll_avg"] == 0.0 and method.hparams({})["lambda_nll"] > 0
    hp = method.hparams({"lambda_nll_avg": 0.5})
    assert (hp["lambda_nll"], hp["lambda_nll_avg"]) == (0.0, 0.5)
    assert method.hparams({"lambda_nll": 0, "lambda_nll_avg": 0.5}) == hp  # the resolved values reload
    with pytest.raises(ConfigError, match="two forms of one term"):
        method.hparams({"lambda_nll": 1.0, "lambda_nll_avg": 0.5})
    assert method.hparams({"lambda_nll": 2.0})["lambda_nll_avg"] == 0.0
    assert method.hparams({"lambda_nll_avg": 0}) == method.hparams({})  # a zero alternative switches nothing


def test_comparator_errors_surface_at_config_load():
    """Out-of-range δ and both NLL forms are ConfigErrors from the config loader, before any model loads."""
    from tether.config import from_dict

    base = {"model": {"name": "nonexistent-model-dir"}, "data": {"train": "nonexistent.jsonl"}}
    with pytest.raises(ConfigError, match=r"method\.delta"):
        from_dict({**base, "method": {"name": "slic_hf", "delta": -1}})
    with pytest.raises(ConfigError, match="two forms"):
        from_dict({**base, "method": {"name": "cpo", "lambda_nll": 1, "lambda_nll_avg": 1}})


# ==================================================================================================
# 6. KTO: values, TRL 1.16 as oracle, the reference point z, masked metric means
# ==================================================================================================


def _kto_inputs(pol, ref, label, kl, ref_kl, *, grad=False, n_tokens=3.0) -> LossInputs:
    chosen = seq(t(*pol, grad=grad), n_tokens)
    return LossInputs(
        chosen=chosen,
        ref_chosen=t(*ref),
        label=torch.tensor(label),
        kl=seq(t(*kl, grad=grad), n_tokens),
        ref_kl=t(*ref_kl),
    )


def test_kto_value_and_metrics():
    """Hand-derived: r = (1, −2, 0.5), KL log-ratios (0.6, 0.3, 0.0) → z = 0.3; β = 0.5, λ_D = 2, λ_U = 3."""
    inp = _kto_inputs([-1.0, -4.0, -2.5], [-2.0, -2.0, -3.0], [True, False, True], [-1.4, -2.7, -1.0],
                      [-2.0, -3.0, -1.0])  # fmt: skip
    beta, lam_d, lam_u, z = 0.5, 2.0, 3.0, 0.3
    out = losses.kto(inp, beta=beta, lambda_d=lam_d, lambda_u=lam_u)
    expected = [
        lam_d * (1 - sigmoid(beta * (1.0 - z))),
        lam_u * (1 - sigmoid(beta * (z + 2.0))),
        lam_d * (1 - sigmoid(beta * (0.5 - z))),
    ]
    assert_close(out.losses, expected)
    assert out.mean("rewards/chosen").item() == pytest.approx(beta * (1.0 + 0.5) / 2, rel=1e-6)
    assert out.mean("rewards/rejected").item() == pytest.approx(beta * -2.0, rel=1e-6)
    assert out.mean("logps/chosen").item() == pytest.approx((-1.0 - 2.5) / 2, rel=1e-6)
    assert out.mean("logps/rejected").item() == pytest.approx(-4.0, rel=1e-6)
    assert_metric(out, "kto/z", [z] * 3)
    assert out.mean("kto/desirable").item() == pytest.approx(2 / 3)


@pytest.mark.parametrize(("lam_d", "lam_u"), [(1.0, 1.0), (1.5, 0.5)])
def test_kto_at_step_0_is_lambda_over_2(lam_d, lam_u):
    """π = π_ref: every r is 0 and so is z, and each row's loss is λ·(1 − σ(0)) = λ/2."""
    logps = [-3.0, -7.5, -1.25, -4.0]
    label = [True, False, False, True]
    inp = _kto_inputs(logps, logps, label, [-2.0, -5.0, -6.0, -0.5], [-2.0, -5.0, -6.0, -0.5])
    out = METHODS["kto"](inp, {"beta": 0.1, "lambda_d": lam_d, "lambda_u": lam_u})
    assert_close(out.losses, [(lam_d if lab else lam_u) / 2 for lab in label])
    assert_metric(out, "kto/z", [0.0] * 4)
    assert out.mean("deviation").item() == 0.0


def test_kto_z_is_clamped_at_zero_and_detached():
    """z = max(0, mean KL log-ratio) and carries no gradient: ∂loss/∂logp(y) of a desirable row is
    −λ_D·β·σ'(β(r − z)), of an undesirable row +λ_U·β·σ'(β(z − r)), and ∂loss/∂logp(y') = 0."""
    beta, lam_d, lam_u = 0.3, 1.2, 0.7
    for kl, z in (([-1.0, -2.0, -3.0], 0.0), ([0.5, 1.5, -1.0], 1.0 / 3.0)):  # below 0: clamped
        inp = _kto_inputs([-1.0, -4.0, -2.5], [-2.0, -2.0, -3.0], [True, False, True], kl, [-2.0, -2.0, -3.0],
                          grad=True)  # fmt: skip
        inp = LossInputs(inp.chosen, ref_chosen=inp.ref_chosen, label=inp.label,
                         kl=seq(inp.kl.sum, 3.0), ref_kl=t(0.0, 0.0, 0.0))  # fmt: skip
        out = losses.kto(inp, beta=beta, lambda_d=lam_d, lambda_u=lam_u)
        assert out.metrics["kto/z"][0].item() == pytest.approx(z, rel=1e-6)
        out.losses.sum().backward()
        r = [1.0, -2.0, 0.5]
        dsig = lambda x: sigmoid(x) * (1 - sigmoid(x))  # noqa: E731
        expected = [-lam_d * beta * dsig(beta * (r[0] - z)), lam_u * beta * dsig(beta * (z - r[1])),
                    -lam_d * beta * dsig(beta * (r[2] - z))]  # fmt: skip
        assert_close(inp.chosen.sum.grad, expected)
        assert inp.kl.sum.grad is None or not inp.kl.sum.grad.any()


def test_kto_uses_the_process_mean_of_z():
    """The trainer hands the across-process mean of ``kto_kl`` in ``process_mean``; the loss clamps it."""
    inp = _kto_inputs([-1.0, -4.0], [-2.0, -2.0], [True, False], [0.0, 0.0], [0.0, 0.0])
    assert METHODS["kto"].across_processes is losses.kto_kl
    for given, z in ((0.8, 0.8), (-0.4, 0.0)):
        with_mean = LossInputs(inp.chosen, ref_chosen=inp.ref_chosen, label=inp.label, kl=inp.kl,
                               ref_kl=inp.ref_kl, process_mean=t(given)[0])  # fmt: skip
        out = losses.kto(with_mean, beta=0.1, lambda_d=1.0, lambda_u=1.0)
        assert_close(out.losses, [1 - sigmoid(0.1 * (1.0 - z)), 1 - sigmoid(0.1 * (z + 2.0))])


def trl_kto_compute_loss(trl_kto, beta, lam_d, lam_u, rows, other_kl=None):
    """Run ``KTOTrainer._compute_loss`` (TRL 1.16) on given per-token completion log-probs.

    ``rows``: (label, completion token log-probs, ref logp, KL token log-probs, ref KL logp) per row. As for
    DPO, the real method is bound to a namespace carrying what it reads (``precompute_ref_logps=True``:
    reference log-probs come from the batch) and a stub model returns the given token log-probs, for the
    KL sequences (called under no_grad) and the completions alike. ``other_kl``: another process's KL
    estimate, returned by the stub ``gather_for_metrics`` next to this one's (two processes).
    Returns (mean loss, completion token log-probs leaf, TRL metrics)."""
    b = len(rows)
    length = PROMPT + max(max(len(r[1]), len(r[3])) for r in rows)

    def tensors(which):
        mask = torch.zeros(b, length, dtype=torch.long)
        lp = torch.zeros(b, length - 1, dtype=F64)
        for i, row in enumerate(rows):
            toks = row[which]
            mask[i, PROMPT : PROMPT + len(toks)] = 1
            lp[i, PROMPT - 1 : PROMPT - 1 + len(toks)] = torch.tensor(toks, dtype=F64)
        return mask, lp

    mask, log_probs = tensors(1)
    kl_mask, kl_log_probs = tensors(3)
    log_probs.requires_grad_(True)
    ids, kl_ids = torch.zeros(b, length, dtype=torch.long), torch.ones(b, length, dtype=torch.long)
    zeros = torch.zeros(b, length - 1)

    def model(**kw):
        lp = kl_log_probs if kw["input_ids"] is kl_ids else log_probs
        return types.SimpleNamespace(log_probs=lp, entropy=zeros, mean_logits=zeros)

    def gather(x):
        if other_kl is not None and x.dim() == 0 and x.dtype.is_floating_point and x.requires_grad is False:
            gather.calls += 1
            if gather.calls == 1:  # the first gathered value is the KL estimate
                return torch.stack([x, torch.tensor(other_kl, dtype=x.dtype)])
        return x

    gather.calls = 0
    trainer = types.SimpleNamespace(
        model=types.SimpleNamespace(training=True),
        accelerator=types.SimpleNamespace(device="cpu", gather_for_metrics=gather),
        calculate_KL=True,
        aux_loss_enabled=False,
        precompute_ref_logps=True,
        loss_type="kto",
        beta=beta,
        desirable_weight=lam_d,
        undesirable_weight=lam_u,
        _metrics=collections.defaultdict(lambda: collections.defaultdict(list)),
        _total_train_tokens=0,
        _tp_size=1,
    )
    trainer._compute_kl_logps = types.MethodType(trl_kto.KTOTrainer._compute_kl_logps, trainer)  # TRL's too
    inputs = {
        "input_ids": ids,
        "attention_mask": torch.ones(b, length, dtype=torch.long),
        "completion_mask": mask,
        "KL_input_ids": kl_ids,
        "KL_attention_mask": torch.ones(b, length, dtype=torch.long),
        "KL_completion_mask": kl_mask,
        "label": torch.tensor([r[0] for r in rows]),
        "ref_logps": torch.tensor([r[2] for r in rows], dtype=F64),
        "ref_KL_logps": torch.tensor([r[4] for r in rows], dtype=F64),
    }
    loss = trl_kto.KTOTrainer._compute_loss(trainer, model, inputs, False)
    return loss, log_probs, {k: v[-1] for k, v in trainer._metrics["train"].items()}


@pytest.fixture(scope="module")
def trl_kto():
    trl = pytest.importorskip("trl")
    if not trl.__version__.startswith("1.16."):
        pytest.skip(f"oracle written against TRL 1.16, found {trl.__version__}")
    from trl.trainer import kto_trainer

    return kto_trainer


def _random_kto_rows(seed: int, b: int, kl_shift: float):
    g = torch.Generator().manual_seed(seed)

    def toks():
        n = int(torch.randint(1, 6, (1,), generator=g))
        return (-(torch.rand(n, generator=g, dtype=F64) * 2 + 0.01)).tolist()

    rows = []
    for i in range(b):
        c, k = toks(), toks()
        label = bool(i % 3 != 1) if seed % 2 else bool(i % 2)
        ref = sum(c) + float(torch.randn(1, generator=g, dtype=F64))
        ref_kl = sum(k) + float(torch.randn(1, generator=g, dtype=F64)) - kl_shift
        rows.append((label, c, ref, k, ref_kl))
    return rows


@pytest.mark.parametrize("seed", range(6))
# the mean KL log-ratio mostly below 0 (clamped), mixed, above
@pytest.mark.parametrize("kl_shift", [-2.0, 0.0, 2.0])
def test_kto_matches_trl(trl_kto, seed, kl_shift):
    """kto == TRL 1.16 KTOTrainer (loss_type='kto') on random rows: the mean loss, the gradient w.r.t.
    every completion's summed log-prob (so each row's loss), z (TRL's ``kl``, clamped at 0 and detached)
    and the reward/logp metrics, to 1e-6 (float64: far tighter)."""
    beta, lam_d, lam_u = (0.1, 1.0, 1.0) if seed < 3 else (0.5, 1.33, 0.8)
    rows = _random_kto_rows(seed, 6, kl_shift)
    trl_loss, log_probs, m = trl_kto_compute_loss(trl_kto, beta, lam_d, lam_u, rows)
    inp = LossInputs(
        chosen=seq(t(*[sum(r[1]) for r in rows], grad=True), t(*[len(r[1]) for r in rows])),
        ref_chosen=t(*[r[2] for r in rows]),
        label=torch.tensor([r[0] for r in rows]),
        kl=seq(t(*[sum(r[3]) for r in rows], grad=True), t(*[len(r[3]) for r in rows])),
        ref_kl=t(*[r[4] for r in rows]),
    )
    out = METHODS["kto"](inp, {"beta": beta, "lambda_d": lam_d, "lambda_u": lam_u})
    assert abs(out.losses.mean().item() - trl_loss.item()) < 1e-6
    trl_loss.backward()
    (out.losses.mean()).backward()
    for i, r in enumerate(rows):  # TRL's d loss / d token log-prob is that of the row's summed log-prob
        got = log_probs.grad[i, PROMPT - 1 : PROMPT - 1 + len(r[1])]
        assert (got - inp.chosen.sum.grad[i]).abs().max() < 1e-9
    assert inp.kl.sum.grad is None or not inp.kl.sum.grad.any()  # z is detached
    assert abs(out.metrics["kto/z"][0].item() - m["kl"]) < 1e-6
    for key in ("rewards/chosen", "rewards/rejected", "logps/chosen", "logps/rejected"):
        assert abs(out.mean(key).item() - m[key]) < 1e-5 * max(1.0, abs(m[key])), key


def test_kto_matches_trl_across_two_processes(trl_kto):
    """Two processes: TRL gathers each process's KL estimate and averages; tether's trainer hands the loss
    the all-reduced mean of ``kto_kl`` (``process_mean``). Same losses and z, including a clamped case."""
    for shift_a, shift_b in ((1.0, -3.0), (2.0, 0.5)):
        a, b = _random_kto_rows(7, 4, shift_a), _random_kto_rows(8, 4, shift_b)

        def inputs(rows):
            return LossInputs(
                chosen=seq(t(*[sum(r[1]) for r in rows]), t(*[len(r[1]) for r in rows])),
                ref_chosen=t(*[r[2] for r in rows]),
                label=torch.tensor([r[0] for r in rows]),
                kl=seq(t(*[sum(r[3]) for r in rows]), t(*[len(r[3]) for r in rows])),
                ref_kl=t(*[r[4] for r in rows]),
            )

        inp_a, inp_b = inputs(a), inputs(b)
        mean = (losses.kto_kl(inp_a) + losses.kto_kl(inp_b)) / 2
        trl_loss, _, m = trl_kto_compute_loss(trl_kto, 0.1, 1.0, 1.0, a, other_kl=losses.kto_kl(inp_b).item())
        inp_a = LossInputs(inp_a.chosen, ref_chosen=inp_a.ref_chosen, label=inp_a.label, kl=inp_a.kl,
                           ref_kl=inp_a.ref_kl, process_mean=mean)  # fmt: skip
        out = losses.kto(inp_a, beta=0.1, lambda_d=1.0, lambda_u=1.0)
        assert abs(out.losses.mean().item() - trl_loss.item()) < 1e-6
        assert abs(out.metrics["kto/z"][0].item() - m["kl"]) < 1e-6


def test_masked_metric_is_the_mean_over_its_rows_of_the_global_batch():
    """``rewards/chosen`` of a KTO step is the mean over the desirable rows of all micro-batches (the
    trainer sums value·mask and mask separately), not the mean over all rows; a step without any desirable
    row logs no ``rewards/chosen``."""
    from tether.training.trainer import Trainer

    micro = [
        _kto_inputs([-1.0, -4.0, -2.5], [-2.0, -2.0, -3.0], [True, False, True], [0.0] * 3, [0.0] * 3),
        _kto_inputs([-6.0, -1.0], [-2.0, -3.0], [False, True], [0.0] * 2, [0.0] * 2),
    ]
    sums: dict = {}
    outs = [METHODS["kto"](inp, METHODS["kto"].hparams({})) for inp in micro]
    for out in outs:
        Trainer._accumulate(sums, out)
    means = Trainer._means({k: v.item() for k, v in sums.items()}, 5.0)
    r_desirable = [1.0, 0.5, 2.0]  # over both micro-batches
    assert means["rewards/chosen"] == pytest.approx(0.1 * sum(r_desirable) / 3, rel=1e-6)
    assert means["rewards/rejected"] == pytest.approx(0.1 * (-2.0 - 4.0) / 2, rel=1e-6)
    assert means["kto/desirable"] == pytest.approx(3 / 5)
    assert means["loss"] == pytest.approx(sum(o.losses.sum().item() for o in outs) / 5, rel=1e-6)
    assert not any(k.startswith("_w:") for k in means)
    only_undesirable = METHODS["kto"](
        _kto_inputs([-6.0], [-2.0], [False], [0.0], [0.0]), METHODS["kto"].hparams({})
    )
    sums = {}
    Trainer._accumulate(sums, only_undesirable)
    means = Trainer._means({k: v.item() for k, v in sums.items()}, 1.0)
    assert "rewards/chosen" not in means and "rewards/rejected" in means


def test_kto_balance_notes():
    """λ_D·n_D/(λ_U·n_U) against the KTO paper's recommended [1, 4/3] (TRL's warning uses the same bounds)."""
    notes = METHODS["kto"].label_notes
    hp = METHODS["kto"].hparams({})
    assert "within" in notes([True, False] * 4, hp)[0]
    assert "within" in notes([True] * 4 + [False] * 3, hp)[0]  # 4/3
    out = notes([True] * 2 + [False] * 6, hp)[0]
    assert "outside" in out and "method.lambda_d in [3, 4]" in out
    assert "every training row is desirable" in notes([True] * 3, hp)[0]
    assert "every training row is undesirable" in notes([False] * 3, hp)[0]
