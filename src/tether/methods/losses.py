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


def tr_dpo(inp: LossInputs, *, beta: float, alpha: float, tau: float) -> LossOutput:
    """TR-DPO (Gorbatovski et al. 2024, "Learn Your Reference Model for Real Good Alignment",
    arXiv:2404.09656): DPO's loss (Rafailov et al. 2023, arXiv:2305.18290, Eq. 7) ``−log σ(β·Δ)`` against
    the *current* reference, which :func:`tr_dpo_update` moves towards the policy every τ optimizer steps
    (soft/hard reference update every τ steps; loss: DPO Eq. 7). α and τ act between steps, not here.

    ``tr_dpo/ref_deviation``: how far the updated reference has moved from the original one, minor-sft.txt
    Eq. 8's deviation with the current reference in the policy's place and the original (step-0) reference
    as the reference, per example ``(logp_ref_t(y_w) − logp_ref_0(y_w))/n(y_w)`` (0, up to float noise,
    until the first update). A cheap, per-token stand-in for the KL of the updated reference to the original on the data's
    chosen answers (not a KL: it is measured on dataset answers, not on samples of the reference).
    """
    out = dpo(inp, beta=beta)
    if inp.ref_origin_chosen is not None and inp.ref_chosen is not None:
        out.add("tr_dpo/ref_deviation", (inp.ref_chosen - inp.ref_origin_chosen) / inp.chosen.n_tokens)
    return out


def tr_dpo_update(step: int, hparams: Mapping[str, float]) -> float | None:
    """TR-DPO's reference update schedule (Gorbatovski et al. 2024, arXiv:2404.09656): after optimizer
    step ``step`` (1-based, global), the weight α of ``π_ref ← α·π_θ + (1 − α)·π_ref_prev`` over all
    parameters when ``step`` is a multiple of τ, else None.

    The paper's two variants are settings of this one rule: the *soft* update (TR-DPO α) mixes the
    parameters with weight α every τ steps; the *hard* update (TR-DPO τ) is α = 1, the reference replaced
    by the policy every τ steps. α = 0 (or τ beyond the run) leaves the reference fixed: plain DPO.
    Defaults α = 0.6, τ = 512 are TRL's (``DPOConfig.ref_model_mixup_alpha``/``ref_model_sync_steps``).

    The mixing itself is :func:`tether.engine.reference.mix_parameters`: computed in fp32 and cast back to
    the reference's dtype, equal to TRL 1.16's ``SyncRefModelCallback._sync_target_model`` (written by a
    co-author; ``target.mul_(1 − α).add_(θ, alpha=α)`` in the parameters' own dtype), tested to 1e-6 in
    fp32. Where tether differs from TRL: TRL keeps the updated reference in memory only, so a resumed run
    silently restarts from the original reference; tether saves the reference in every checkpoint
    (``reference.safetensors``) and restores it. Like TRL, it refuses LoRA (the reference is then the
    adapter-disabled base, which a mix of the weights cannot be written as) and a precomputed reference.
    """
    if step % int(hparams["tau"]) != 0:
        return None
    return hparams["alpha"]


def r_dpo(inp: LossInputs, *, beta: float, alpha: float) -> LossOutput:
    """R-DPO (Park et al. 2024, "Disentangling Length from Quality in DPO", arXiv:2403.19159), the
    regularised DPO loss: ``−log σ(β·Δ + α·(n(y_w) − n(y_l)))``.

    DPO with a length regulariser α|y| in the reward: maximising ``E[r(x, y) − α|y|] − β·KL`` gives the
    implicit reward ``r = β·log(π_θ/π_ref) + α|y| + const``, so the Bradley-Terry margin gains
    ``α·(|y_w| − |y_l|)``: a longer chosen answer needs a smaller log-ratio margin, so length alone is not
    learnt. Symbols: β → ``beta``, α → ``alpha``, |y| → ``n_tokens`` (response tokens, EOS included when
    appended). The form is the SimPO paper's baseline table (arXiv:2405.14734), which the ε-DPO paper's
    R-DPO row comes from. The authors released no R-DPO code and TRL has no R-DPO loss. With α = 0 it is
    :func:`dpo` exactly. Rewards are logged as in DPO (β·r, without the length term);
    ``r_dpo/length_term`` is ``α·(n_w − n_l)``.
    """
    chosen, rejected = _pair(inp)
    r_w, r_l = _ratios(inp)
    length_term = alpha * (chosen.n_tokens - rejected.n_tokens)
    out = LossOutput(losses=-F.logsigmoid(beta * (r_w - r_l) + length_term))
    _reward_metrics(out, beta, r_w, r_l)
    out.add("r_dpo/length_term", length_term)
    _logp_metrics(out, inp)
    return out


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


def _nll(chosen: SequenceLogps, lambda_nll: float, lambda_nll_avg: float) -> Tensor:
    """The NLL regulariser on the chosen answer of CPO, SLiC-HF and RRHF, in either form.

    ``−λ·logp(y_w)`` (``lambda_nll``: summed over response tokens, the papers' and the SimPO table's
    form, tether's default) or ``−λ·avg(y_w)`` (``lambda_nll_avg``: per token, as TRL's CPO, whose
    ``nn.CrossEntropyLoss`` averages over all chosen tokens of the micro-batch, i.e.
    ``Σ_i logp_i / Σ_i n_i`` rather than tether's per-example ``avg`` reduced by the mean over examples;
    the two agree when the chosen answers of a batch have equal lengths). The registry lets a config give
    one of the two weights (see ``Method.alternatives``); the forms differ by exactly the factor n(y_w).
    """
    return -lambda_nll * chosen.sum - lambda_nll_avg * chosen.avg


def cpo(inp: LossInputs, *, beta: float, lambda_nll: float, lambda_nll_avg: float = 0.0) -> LossOutput:
    """CPO (Xu et al. 2024, "Contrastive Preference Optimization", arXiv:2401.08417, Eq. 3 + L_NLL):
    ``−log σ(β·(logp(y_w) − logp(y_l))) − λ·logp(y_w)``.

    The preference term is DPO with a uniform reference (Eq. 3, the upper bound L(π_θ; U)) on *summed*
    log-likelihoods; the paper adds ``L_NLL = −E[log π_θ(y_w|x)]`` with weight 1 (the SimPO table's λ).
    Symbols: β → ``beta``, λ → ``lambda_nll`` (summed form) or ``lambda_nll_avg`` (per-token form, see
    :func:`_nll`). **Decision** (``shared/METHODS.md``): the paper's summed NLL by default; TRL's
    ``CPOTrainer`` (``loss_type="sigmoid"``, ``cpo_alpha`` = λ) uses the micro-batch token mean, which
    ``lambda_nll_avg`` reproduces for equal-length chosen answers (tested against TRL 1.16). The
    preference term equals TRL's ``cpo_loss`` per pair. No reference model. Metrics as TRL's CPO:
    rewards are ``β·logp`` (``rewards/*``), ``nll`` is the per-token ``−avg(y_w)`` whatever the form.
    """
    chosen, rejected = _pair(inp)
    margin = chosen.sum - rejected.sum
    out = LossOutput(losses=-F.logsigmoid(beta * margin) + _nll(chosen, lambda_nll, lambda_nll_avg))
    _reward_metrics(out, beta, chosen.sum, rejected.sum)
    out.add("nll", -chosen.avg)
    out.add("likelihood/margin", chosen.avg - rejected.avg)
    _logp_metrics(out, inp)
    return out


def slic_hf(inp: LossInputs, *, delta: float, lambda_nll: float, lambda_nll_avg: float = 0.0) -> LossOutput:
    """SLiC-HF (Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human Feedback",
    arXiv:2305.10425, Eq. 1): ``max(0, δ − logp(y_w) + logp(y_l)) − λ·logp(y_ref)``.

    The rank-calibration hinge on *summed* log-likelihoods with margin δ, plus the cross-entropy
    regulariser on a target ``y_ref``. **Decision:** ``y_ref`` is the chosen answer (the SimPO table's
    choice; the paper's regularisation target may also be an SFT target), and the NLL is summed by
    default (``lambda_nll``) with the per-token form as ``lambda_nll_avg`` (see :func:`_nll`).
    Symbols: δ → ``delta``, λ → ``lambda_nll``. No reference model.

    TRL has no SLiC-HF trainer; its CPO ``loss_type="hinge"``, ``relu(1 − β·(logp_w − logp_l))``, is this
    hinge scaled: ``max(0, δ − x) = δ·relu(1 − x/δ)``, i.e. TRL's hinge at β = 1/δ times δ (tested
    against TRL 1.16). TRL's DPO ``loss_type="hinge"`` is the same hinge on *log-ratios* against a
    reference (SLiC as restated in the DPO/IPO papers), not this method. Where the hinge is inactive
    (``logp_w − logp_l ≥ δ``) only the NLL term has a gradient; ``slic_hf/hinge_active`` is the fraction
    of pairs still inside the margin, ``slic_hf/margin`` the summed margin ``logp_w − logp_l``.
    """
    chosen, rejected = _pair(inp)
    margin = chosen.sum - rejected.sum
    hinge = F.relu(delta - margin)  # relu: no gradient at the kink either (as TRL; = slic_hf/hinge_active)
    out = LossOutput(losses=hinge + _nll(chosen, lambda_nll, lambda_nll_avg))
    out.add("rewards/accuracies", (margin > 0).float())
    out.add("slic_hf/margin", margin)
    out.add("slic_hf/hinge_active", (margin < delta).float())
    out.add("nll", -chosen.avg)
    out.add("likelihood/margin", chosen.avg - rejected.avg)
    _logp_metrics(out, inp)
    return out


def rrhf(inp: LossInputs, *, lambda_nll: float, lambda_nll_avg: float = 0.0) -> LossOutput:
    """RRHF (Yuan et al. 2023, "RRHF: Rank Responses to Align Language Models with Human Feedback without
    Tears", arXiv:2304.05302, Eq. 1-4) on a pair: ``max(0, avg(y_l) − avg(y_w)) − λ·logp(y_w)``.

    Eq. 1 scores each response by its length-normalised log-likelihood ``p = logp(y)/n(y)``; Eq. 2 is the
    ranking loss ``Σ_{r_i < r_j} max(0, p_i − p_j)``, which for one pair is ``max(0, avg_l − avg_w)``;
    Eq. 3 is the cross-entropy on the best response (here the chosen one) and Eq. 4 their sum (λ = 1; the
    SimPO table makes λ a hyper-parameter). Symbols: λ → ``lambda_nll``.

    **Decisions:** the paper, not the released code (``GanjinZero/RRHF`` ``train.py``), whose SFT term is a
    ``.mean()`` over the padded row, i.e. divided by the padded row length (its issue #37); the NLL is the
    paper's summed form by default (``lambda_nll``), per token with ``lambda_nll_avg`` (see :func:`_nll`).
    The released code's ``length_penalty`` exponent on n(y) (default 1: the paper's normalisation) and its
    ``rrhf_weight`` on the ranking term (default 100) are not parameters here (the paper has neither).
    No reference model; TRL has no RRHF. When ``avg_w > avg_l`` the ranking term has no gradient;
    ``rrhf/rank_active`` is the fraction of pairs ranked wrongly (``avg_l > avg_w``).
    """
    chosen, rejected = _pair(inp)
    avg_w, avg_l = chosen.avg, rejected.avg
    rank = F.relu(avg_l - avg_w)  # relu: a tie gets no ranking gradient (= rrhf/rank_active)
    out = LossOutput(losses=rank + _nll(chosen, lambda_nll, lambda_nll_avg))
    out.add("rewards/accuracies", (avg_w > avg_l).float())
    out.add("likelihood/margin", avg_w - avg_l)
    out.add("rrhf/rank_active", (avg_l > avg_w).float())
    out.add("nll", -avg_w)
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
