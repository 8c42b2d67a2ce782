"""Training objectives as pure functions of log-probs.

Each function takes a :class:`~tether.contract.LossInputs` plus its hyper-parameters (keyword-only, named
as in the paper: β → ``beta``, ε → ``epsilon``, γ → ``gamma``) and returns per-example losses and
per-example detached metrics. No reduction, no trainer state, no distributed calls.

Notation (``shared/METHODS.md``): ``logp(y)`` summed over response tokens, ``avg(y) = logp(y)/n(y)``,
``r(y) = logp(y) − logp_ref(y)``, ``Δ = r_w − r_l``, ``sg`` = stop-gradient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from tether.contract import LossInputs, LossOutput, Perturbed, SequenceLogps, require

#: ASFT guard: avg(y_l) is clamped to at most ``-ASFT_LOG1MEXP_EPS`` inside log(1 − exp(·)), so the term
#: stays ≤ −log(ASFT_LOG1MEXP_EPS)·β ≈ 13.8·β. Beyond the clamp the gradient is the (finite) gradient at
#: the clamp point (straight-through), so a rejected answer with per-token probability → 1 is still
#: pushed down instead of silently ignored.
ASFT_LOG1MEXP_EPS = 1e-6


def log1mexp(x: Tensor) -> Tensor:
    """Numerically stable ``log(1 − exp(x))`` for ``x < 0`` (Mächler 2012).

    ``log1p(−exp(x))`` for ``x < −ln 2``, ``log(−expm1(x))`` otherwise.
    """
    threshold = -math.log(2.0)
    safe_lo = torch.minimum(x, torch.full_like(x, threshold))  # branch inputs kept in-range so that
    safe_hi = torch.clamp(
        x, min=threshold, max=-torch.finfo(x.dtype).tiny
    )  # unused branches have finite grads
    return torch.where(x < threshold, torch.log1p(-torch.exp(safe_lo)), torch.log(-torch.expm1(safe_hi)))


def _pair(inp: LossInputs) -> tuple[SequenceLogps, SequenceLogps]:
    return inp.chosen, require(inp.rejected, "rejected")  # type: ignore[return-value]


def _ratios(inp: LossInputs) -> tuple[Tensor, Tensor]:
    chosen, rejected = _pair(inp)
    r_w = chosen.sum - require(inp.ref_chosen, "ref_chosen")
    r_l = rejected.sum - require(inp.ref_rejected, "ref_rejected")
    return r_w, r_l


def reward_metrics(beta: Tensor | float, r_w: Tensor, r_l: Tensor) -> dict[str, Tensor]:
    """The implicit-reward metrics β·r of a pair (TRL's names), per example; training and held-out
    evaluation both use these."""
    return {
        "rewards/chosen": beta * r_w,
        "rewards/rejected": beta * r_l,
        "rewards/accuracies": (r_w > r_l).float(),
        "rewards/margins": beta * (r_w - r_l),
    }


def _reward_metrics(out: LossOutput, beta: Tensor | float, r_w: Tensor, r_l: Tensor) -> None:
    for name, value in reward_metrics(beta, r_w, r_l).items():
        out.add(name, value)


def _logp_metrics(out: LossOutput, inp: LossInputs) -> None:
    out.add("logps/chosen", inp.chosen.sum)
    if inp.rejected is not None:
        out.add("logps/rejected", inp.rejected.sum)


# --------------------------------------------------------------------------------------------------
# Supervised family: data = prompt + completion (``inp.chosen`` is the completion)
# --------------------------------------------------------------------------------------------------


def sft(inp: LossInputs) -> LossOutput:
    """Plain SFT: ``−avg(y)``, the token-averaged negative log-likelihood of the completion.

    minor-sft.txt Eq. 5 (the raw SFT gradient ``−(1/m)·∇log π(y|x)``).
    """
    out = LossOutput(losses=-inp.chosen.avg)
    _logp_metrics(out, inp)
    out.add("nll", -inp.chosen.avg)
    return out


def sft_dpo(inp: LossInputs, *, beta: float) -> LossOutput:
    """SFT using DPO (Xie et al. 2024, "Minor SFT", minor-sft.txt Eq. 3): ``−log σ(β·r(y))``.

    Its gradient is ``−β·σ(−β·r)·∇log π(y|x)`` (Eq. 4): the summed log-ratio, no 1/m.
    """
    r = inp.chosen.sum - require(inp.ref_chosen, "ref_chosen")
    out = LossOutput(losses=-F.logsigmoid(beta * r))
    out.add("rewards/chosen", beta * r)
    _logp_metrics(out, inp)
    return out


def minor_sft(inp: LossInputs, *, beta: float) -> LossOutput:
    """MinorSFT (minor-sft.txt Eq. 7): ``−2·sg[σ(−β·r(y))]·avg(y)``.

    Gradient ``−(2/m)·σ(−β·r)·∇log π(y|x)``. ``r`` is the *summed* log-ratio inside σ and the 1/m is
    outside. At step 0, r = 0 and σ(0) = ½, so the loss equals plain SFT's ``−avg(y)``.
    """
    r = inp.chosen.sum - require(inp.ref_chosen, "ref_chosen")
    weight = 2.0 * torch.sigmoid(-beta * r).detach()
    out = LossOutput(losses=-weight * inp.chosen.avg)
    out.add("rewards/chosen", beta * r)
    out.add("minor_sft/weight", weight)
    _logp_metrics(out, inp)
    return out


# --------------------------------------------------------------------------------------------------
# Pairwise, reference-based: data = prompt + chosen + rejected
# --------------------------------------------------------------------------------------------------


def dpo(inp: LossInputs, *, beta: float) -> LossOutput:
    """DPO (Rafailov et al. 2023, arXiv:2305.18290, Eq. 7): ``−log σ(β·Δ)``, ``Δ = r_w − r_l``."""
    r_w, r_l = _ratios(inp)
    out = LossOutput(losses=-F.logsigmoid(beta * (r_w - r_l)))
    _reward_metrics(out, beta, r_w, r_l)
    _logp_metrics(out, inp)
    return out


def minor_dpo(inp: LossInputs, *, beta: float) -> LossOutput:
    """MinorDPO (Xie et al. 2024, minor-sft.txt Eq. 2): ``−log σ(β·r_w − β·max(0, r_l))``.

    Once π(y_l) < π_ref(y_l) (r_l < 0) the rejected side is clamped and gets no gradient; while
    r_l > 0 it is exactly DPO. ``minor_dpo/clamped`` is the fraction of pairs with r_l < 0.
    """
    r_w, r_l = _ratios(inp)
    out = LossOutput(losses=-F.logsigmoid(beta * r_w - beta * torch.clamp(r_l, min=0.0)))
    _reward_metrics(out, beta, r_w, r_l)
    out.add("minor_dpo/clamped", (r_l < 0).float())
    _logp_metrics(out, inp)
    return out


def ipo(inp: LossInputs, *, beta: float) -> LossOutput:
    """IPO (Azar et al. 2023, arXiv:2310.12036, Eq. 17), length-normalised as in TRL:
    ``((r_w/n_w − r_l/n_l) − 1/(2β))²``. ``beta`` is the paper's τ."""
    chosen, rejected = _pair(inp)
    r_w, r_l = _ratios(inp)
    h = r_w / chosen.n_tokens - r_l / rejected.n_tokens
    out = LossOutput(losses=(h - 1.0 / (2.0 * beta)) ** 2)
    _reward_metrics(out, beta, r_w, r_l)
    _logp_metrics(out, inp)
    return out


def epsilon_criterion(inp: LossInputs) -> Tensor:
    """ε-DPO's per-pair direction s ∈ {−1, 0, +1} (epsilon-dpo.txt §3.2-3.3, Eq. 1-5; authors' ``trainer.py``).

    With ``LR = logp(y_w) − logp(y_l)`` and ``LR⁺``/``LR⁻`` the same with the per-token mixed logits
    ``(1±ε)·z ∓ ε·z_ref`` (log-softmax renormalised): s = +1 if LR⁺ > LR > LR⁻, −1 if LR⁻ > LR > LR⁺,
    else 0 (strict: ties give 0). Decides β only; no gradient.
    """
    chosen, rejected = _pair(inp)
    cp: Perturbed = require(inp.chosen_perturbed, "chosen_perturbed")  # type: ignore[assignment]
    rp: Perturbed = require(inp.rejected_perturbed, "rejected_perturbed")  # type: ignore[assignment]
    dt = torch.promote_types(chosen.sum.dtype, torch.float32)  # at least fp32: in bf16 most pairs tie

    def diff(a: Tensor, b: Tensor) -> Tensor:
        return a.detach().to(dt) - b.detach().to(dt)

    lr, lr_plus, lr_minus = diff(chosen.sum, rejected.sum), diff(cp.plus, rp.plus), diff(cp.minus, rp.minus)
    up = (lr_plus > lr) & (lr > lr_minus)
    down = (lr_minus > lr) & (lr > lr_plus)
    return (up.to(lr.dtype) - down.to(lr.dtype)).to(chosen.sum.dtype)


def epsilon_mixtures(z: Tensor, z_ref: Tensor, targets: Tensor, hparams: Mapping[str, float]) -> Tensor:
    """ε-DPO's per-token log-probs under the mixed logits (epsilon-dpo.txt Eq. 4-5), ``[n, 2]``:
    ``log_softmax((1+ε)·z − ε·z_ref)[y]`` and ``log_softmax((1−ε)·z + ε·z_ref)[y]``.

    ``z``/``z_ref``: [n, V] policy and reference logits at n response positions (fp32, soft-capped by the
    engine), ``targets``: [n] the tokens. The method's ``reference_logits`` function: the log-prob engine
    calls it chunk by chunk (no gradient) and sums it per row into :attr:`LossInputs.chosen_perturbed`.
    """
    eps = hparams["epsilon"]
    y = targets[:, None]
    plus = ((1 + eps) * z - eps * z_ref).log_softmax(-1).gather(-1, y).squeeze(-1)
    minus = ((1 - eps) * z + eps * z_ref).log_softmax(-1).gather(-1, y).squeeze(-1)
    return torch.stack([plus, minus], dim=-1)


def epsilon_dpo(inp: LossInputs, *, beta: float, epsilon: float) -> LossOutput:
    """ε-DPO (Lee et al. 2025, "KL Penalty Control via Perturbation for DPO", epsilon-dpo.txt Eq. 3-6, Alg. 1).

    Per-pair ``β_i = β/(1 + ε·s_i)`` with s from :func:`epsilon_criterion`; loss ``−log σ(β_i·Δ_i)``.
    ``beta`` here is the *current* β; the trainer re-centres it after every optimizer step with
    :func:`epsilon_dpo_update`. Rewards are logged with β_i. With ε = 0 this is exactly DPO.
    """
    r_w, r_l = _ratios(inp)
    s = epsilon_criterion(inp)
    beta_i = beta / (1.0 + epsilon * s)
    out = LossOutput(losses=-F.logsigmoid(beta_i * (r_w - r_l)))
    _reward_metrics(out, beta_i, r_w, r_l)
    out.add("kl/s", s)
    out.add("kl/p_epsilon_steps", (s > 0).float())
    out.add("kl/n_epsilon_steps", (s < 0).float())
    out.add("kl/beta_i", beta_i)
    _logp_metrics(out, inp)
    return out


def epsilon_dpo_update(hparams: dict[str, float], window_means: dict[str, float]) -> dict[str, float]:
    """ε-DPO's β re-centring after an optimizer step (epsilon-dpo.txt Eq. 6): ``β ← β / (1 + ε·mean(s))``.

    ``mean(s)`` is over the whole global batch of the step (all micro-batches, all processes); the new β
    equals the harmonic mean of that step's β_i.
    """
    new = dict(hparams)
    new["beta"] = hparams["beta"] / (1.0 + hparams["epsilon"] * window_means["kl/s"])
    return new


# --------------------------------------------------------------------------------------------------
# Pairwise, reference-free
# --------------------------------------------------------------------------------------------------


def asft(inp: LossInputs, *, beta: float) -> LossOutput:
    """Aligned SFT (Wang et al. 2024, arXiv:2409.10571, Eq. 14 and Appendix B).

    ``−avg(y_w) + β·[−log σ(logit p_w) − log σ(−logit p_l)]`` with ``p = exp(avg(y))`` (length-averaged),
    which simplifies to ``−(1+β)·avg(y_w) − β·log(1 − exp(avg(y_l)))``. Computed in the simplified form
    with a stable :func:`log1mexp`; ``avg(y_l)`` is guarded at ``−ASFT_LOG1MEXP_EPS`` (see there).
    No reference model. Not *Anchored* SFT, which other toolkits also call ASFT.
    """
    chosen, rejected = _pair(inp)
    avg_w, avg_l = chosen.avg, rejected.avg
    clamped = torch.clamp(avg_l, max=-ASFT_LOG1MEXP_EPS)
    avg_l_guarded = avg_l - (avg_l - clamped).detach()  # value of the clamp, gradient of the identity
    losses = -(1.0 + beta) * avg_w - beta * log1mexp(avg_l_guarded)
    out = LossOutput(losses=losses)
    out.add("logps/chosen_avg", avg_w)
    out.add("logps/rejected_avg", avg_l)
    out.add("likelihood/margin", avg_w - avg_l)
    out.add("asft/guarded", (avg_l > -ASFT_LOG1MEXP_EPS).float())
    _logp_metrics(out, inp)
    return out


def orpo(inp: LossInputs, *, beta: float) -> LossOutput:
    """ORPO (Hong et al. 2024, arXiv:2403.07691, Eq. 6-7): ``−avg(y_w) − β·log σ(log-odds)``, with
    ``log-odds = (avg_w − avg_l) − (log(1−e^{avg_w}) − log(1−e^{avg_l}))``. ``beta`` is the paper's λ."""
    chosen, rejected = _pair(inp)
    avg_w, avg_l = chosen.avg, rejected.avg
    log_odds = (avg_w - avg_l) - (log1mexp(avg_w) - log1mexp(avg_l))
    ratio = F.logsigmoid(log_odds)
    out = LossOutput(losses=-avg_w - beta * ratio)
    out.add("orpo/log_odds", log_odds)
    out.add("orpo/nll", -avg_w)
    out.add("likelihood/margin", avg_w - avg_l)
    out.add("rewards/accuracies", (avg_w > avg_l).float())
    _logp_metrics(out, inp)
    return out


def simpo(inp: LossInputs, *, beta: float, gamma: float) -> LossOutput:
    """SimPO (Meng et al. 2024, arXiv:2405.14734, Eq. 6): ``−log σ(β·(avg_w − avg_l) − γ)``."""
    chosen, rejected = _pair(inp)
    avg_w, avg_l = chosen.avg, rejected.avg
    out = LossOutput(losses=-F.logsigmoid(beta * (avg_w - avg_l) - gamma))
    out.add("rewards/chosen", beta * avg_w)
    out.add("rewards/rejected", beta * avg_l)
    out.add("rewards/accuracies", (avg_w > avg_l).float())
    out.add("rewards/margins", beta * (avg_w - avg_l))
    out.add("likelihood/margin", avg_w - avg_l)
    _logp_metrics(out, inp)
    return out


def reference_metrics(inp: LossInputs) -> dict[str, Tensor]:
    """Metrics every run with reference log-probs logs, whatever its loss.

    ``deviation`` is MinorSFT's m_θ (minor-sft.txt Eq. 8): per example ``r(y)/n(y)`` on the chosen
    (or SFT) response; its batch mean is the paper's metric. ``deviation/rejected`` likewise.
    """
    out: dict[str, Tensor] = {}
    if inp.ref_chosen is not None:
        out["deviation"] = ((inp.chosen.sum - inp.ref_chosen) / inp.chosen.n_tokens).detach().float()
        out["logps/ref_chosen"] = inp.ref_chosen.detach().float()
    if inp.ref_rejected is not None and inp.rejected is not None:
        out["deviation/rejected"] = (
            ((inp.rejected.sum - inp.ref_rejected) / inp.rejected.n_tokens).detach().float()
        )
        out["logps/ref_rejected"] = inp.ref_rejected.detach().float()
        out["gamma_ref"] = (inp.ref_chosen - inp.ref_rejected).detach().float()  # type: ignore[operator]
    return out
