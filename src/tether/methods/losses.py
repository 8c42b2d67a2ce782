"""Training objectives as pure functions of log-probs.

Each function takes a :class:`~tether.contract.LossInputs` plus its hyper-parameters (keyword-only, named
as in the paper: β → ``beta``, ε → ``epsilon``, γ → ``gamma``) and returns per-example losses and
per-example detached metrics. No reduction, no trainer state, no distributed calls.

Notation (docs/paper_index.md): ``logp(y)`` summed over response tokens, ``avg(y) = logp(y)/n(y)``,
``r(y) = logp(y) − logp_ref(y)``, ``Δ = r_w − r_l``, ``sg`` = stop-gradient.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from tether.contract import LossInputs, LossOutput, Perturbed, Scores, SequenceLogps, require
from tether.methods.metrics import (  # the noqa ones: also read as losses.* (registry, evaluation)
    add_logp_metrics,
    add_reference_metrics,  # noqa: F401
    add_reward_metrics,
    reference_metrics,  # noqa: F401
    reward_metrics,  # noqa: F401
)

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


# --------------------------------------------------------------------------------------------------
# Supervised family: data = prompt + completion (``inp.chosen`` is the completion)
# --------------------------------------------------------------------------------------------------


def sft(inp: LossInputs) -> LossOutput:
    """Plain SFT: ``−avg(y)``, the token-averaged negative log-likelihood of the completion.

    Xie et al. 2024, arXiv:2408.10642, Eq. 5 (the raw SFT gradient ``−(1/m)·∇log π(y|x)``).
    """
    out = LossOutput(losses=-inp.chosen.avg)
    add_logp_metrics(out, inp)
    out.add("nll", -inp.chosen.avg)
    return out


def sft_dpo(inp: LossInputs, *, beta: float) -> LossOutput:
    """SFT using DPO (Xie et al. 2024, "Minor SFT", arXiv:2408.10642, Eq. 3): ``−log σ(β·r(y))``.

    Its gradient is ``−β·σ(−β·r)·∇log π(y|x)`` (Eq. 4): the summed log-ratio, no 1/m.
    """
    r = inp.chosen.sum - require(inp.ref_chosen, "ref_chosen")
    out = LossOutput(losses=-F.logsigmoid(beta * r))
    out.add("rewards/chosen", beta * r)
    add_logp_metrics(out, inp)
    return out


def minor_sft(inp: LossInputs, *, beta: float) -> LossOutput:
    """MinorSFT (arXiv:2408.10642, Eq. 7): ``−2·sg[σ(−β·r(y))]·avg(y)``.

    Gradient ``−(2/m)·σ(−β·r)·∇log π(y|x)``. ``r`` is the *summed* log-ratio inside σ and the 1/m is
    outside. At step 0, r = 0 and σ(0) = ½, so the loss equals plain SFT's ``−avg(y)``.
    """
    r = inp.chosen.sum - require(inp.ref_chosen, "ref_chosen")
    weight = 2.0 * torch.sigmoid(-beta * r).detach()
    out = LossOutput(losses=-weight * inp.chosen.avg)
    out.add("rewards/chosen", beta * r)
    out.add("minor_sft/weight", weight)
    # with the weight's mean, its spread over the step's batch: std = sqrt(mean(w²) − mean(w)²)
    out.add("minor_sft/weight_sq", weight.square())
    add_logp_metrics(out, inp)
    return out


# --------------------------------------------------------------------------------------------------
# Pairwise, reference-based: data = prompt + chosen + rejected
# --------------------------------------------------------------------------------------------------


def dpo(inp: LossInputs, *, beta: float) -> LossOutput:
    """DPO (Rafailov et al. 2023, arXiv:2305.18290, Eq. 7): ``−log σ(β·Δ)``, ``Δ = r_w − r_l``."""
    r_w, r_l = _ratios(inp)
    out = LossOutput(losses=-F.logsigmoid(beta * (r_w - r_l)))
    add_reward_metrics(out, beta, r_w, r_l)
    add_logp_metrics(out, inp)
    return out


def minor_dpo(inp: LossInputs, *, beta: float) -> LossOutput:
    """MinorDPO (Xie et al. 2024, arXiv:2408.10642, Eq. 2): ``−log σ(β·r_w − β·max(0, r_l))``.

    Once π(y_l) < π_ref(y_l) (r_l < 0) the rejected side is clamped and gets no gradient; while
    r_l > 0 it is exactly DPO. ``minor_dpo/clamped`` is the fraction of pairs with r_l < 0.
    """
    r_w, r_l = _ratios(inp)
    out = LossOutput(losses=-F.logsigmoid(beta * r_w - beta * torch.clamp(r_l, min=0.0)))
    add_reward_metrics(out, beta, r_w, r_l)
    out.add("minor_dpo/clamped", (r_l < 0).float())
    add_logp_metrics(out, inp)
    return out


def ipo(inp: LossInputs, *, beta: float) -> LossOutput:
    """IPO (Azar et al. 2023, arXiv:2310.12036, Eq. 17), length-normalised as in TRL:
    ``((r_w/n_w − r_l/n_l) − 1/(2β))²``. ``beta`` is the paper's τ."""
    chosen, rejected = _pair(inp)
    r_w, r_l = _ratios(inp)
    h = r_w / chosen.n_tokens - r_l / rejected.n_tokens
    out = LossOutput(losses=(h - 1.0 / (2.0 * beta)) ** 2)
    add_reward_metrics(out, beta, r_w, r_l)
    add_logp_metrics(out, inp)
    return out


def epsilon_criterion(inp: LossInputs) -> Tensor:
    """ε-DPO's per-pair direction s ∈ {−1, 0, +1} (arXiv:2502.13177, §3.2-3.3, Eq. 1-5; as the authors'
    code).

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
    """ε-DPO's per-token log-probs under the mixed logits (arXiv:2502.13177, Eq. 4-5), ``[n, 2]``:
    ``log_softmax((1+ε)·z − ε·z_ref)[y]`` and ``log_softmax((1−ε)·z + ε·z_ref)[y]``.

    ``z``/``z_ref``: [n, V] policy and reference logits at n response positions (fp32, soft-capped by the
    engine), ``targets``: [n] the tokens. The method's ``reference_logits`` function: the log-prob engine
    calls it chunk by chunk (no gradient) and sums it per row into :attr:`LossInputs.chosen_perturbed`.
    """
    eps = hparams["epsilon"]
    y = targets[:, None]
    # in place on one temporary per mixture: [n, V] is large (V ~ 50k-150k), and this runs every step
    plus = torch.mul(z, 1 + eps).sub_(z_ref, alpha=eps).log_softmax(-1).gather(-1, y).squeeze(-1)
    minus = torch.mul(z, 1 - eps).add_(z_ref, alpha=eps).log_softmax(-1).gather(-1, y).squeeze(-1)
    return torch.stack([plus, minus], dim=-1)


def epsilon_dpo(inp: LossInputs, *, beta: float, epsilon: float) -> LossOutput:
    """ε-DPO (Lee et al. 2025, "KL Penalty Control via Perturbation for DPO", arXiv:2502.13177, Eq. 3-6,
    Alg. 1).

    Per-pair ``β_i = β/(1 + ε·s_i)`` with s from :func:`epsilon_criterion`; loss ``−log σ(β_i·Δ_i)``.
    ``beta`` here is the *current* β; the trainer re-centres it after every optimizer step with
    :func:`epsilon_dpo_update`. Rewards are logged with β_i. With ε = 0 this is exactly DPO.
    """
    r_w, r_l = _ratios(inp)
    s = epsilon_criterion(inp)
    beta_i = beta / (1.0 + epsilon * s)
    out = LossOutput(losses=-F.logsigmoid(beta_i * (r_w - r_l)))
    add_reward_metrics(out, beta_i, r_w, r_l)
    out.add("kl/s", s)
    out.add("kl/p_epsilon_steps", (s > 0).float())
    out.add("kl/n_epsilon_steps", (s < 0).float())
    out.add("kl/beta_i", beta_i)
    add_logp_metrics(out, inp)
    return out


def epsilon_dpo_update(hparams: dict[str, float], window_means: dict[str, float]) -> dict[str, float]:
    """ε-DPO's β re-centring after an optimizer step (arXiv:2502.13177, Eq. 6):
    ``β ← β / (1 + ε·mean(s))``.

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

    ``tr_dpo/ref_deviation``: how far the updated reference has moved from the original one, MinorSFT's
    Eq. 8 deviation (arXiv:2408.10642) with the current reference in the policy's place and the original
    (step-0) reference as the reference, per example ``(logp_ref_t(y_w) − logp_ref_0(y_w))/n(y_w)`` (0, up
    to float noise, until the first update). A cheap, per-token stand-in for the KL of the updated
    reference to the original on the data's chosen answers (not a KL: it is measured on dataset answers,
    not on samples of the reference).
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
    add_reward_metrics(out, beta, r_w, r_l)
    out.add("r_dpo/length_term", length_term)
    add_logp_metrics(out, inp)
    return out


BETA_DPO_MIN_BETA = 1e-3
"""β-DPO's floor on the batch β (the authors' ``clamp(min=1e-3)``)."""


def beta_dpo_margin(inp: LossInputs) -> Tensor:
    """β-DPO's per-pair statistic: the raw (unscaled) log-ratio margin ``Δ = r_w − r_l``, detached."""
    r_w, r_l = _ratios(inp)
    return (r_w - r_l).detach()


def beta_dpo(
    inp: LossInputs,
    *,
    beta: float,
    beta_b: Tensor | None = None,
    weight: Tensor | None = None,
    **plan_hparams: float,
) -> LossOutput:
    """β-DPO (Wu et al. 2024, "β-DPO: Direct Preference Optimization with Dynamic β", arXiv:2407.08639):
    dynamic β calibration with β-guided data filtering. Per pair ``w_i·(−log σ(β_b·Δ_i))``.

    ``beta_b`` ([B], the batch's β) and ``weight`` ([B]: ``n/K`` for the K pairs the filter kept out of
    the n of the batch, 0 for the others) come from :func:`beta_dpo_plan`, which the trainer runs on the
    whole global batch of the step before any loss (see there for the β_b and the filter); the trainer's
    mean over the global batch of these per-pair losses is then the mean over the kept pairs, as the
    paper's loss. ``beta_b`` is detached (the authors' ``beta_used.detach()``). Rewards are logged with the
    base β, as the authors log them; ``beta_dpo/kept_fraction`` is the fraction of pairs kept.
    ``plan_hparams`` (ρ, a, m and the moving averages) are the plan's, unused here.

    Without a plan (held-out evaluation, or a direct call) this is DPO at the base β with every pair
    kept: evaluation neither updates nor uses the training state. With ``a = 0`` and ``ρ = 0`` the plan
    gives ``β_b = β`` (for β ≥ 1e-3) and weights 1, so this is :func:`dpo` exactly (tested). The paper's
    equation numbers were not checked; the formulas are checked against the authors' code
    (``preference_loss``).
    """
    r_w, r_l = _ratios(inp)
    b: Tensor | float = beta if beta_b is None else beta_b.detach().to(r_w)
    losses = -F.logsigmoid(b * (r_w - r_l))
    kept = torch.ones_like(losses) if weight is None else (weight > 0).to(losses)
    if weight is not None:
        losses = losses * weight.to(losses)
    out = LossOutput(losses=losses)
    add_reward_metrics(out, beta, r_w, r_l)
    out.add("beta_dpo/kept_fraction", kept)
    add_logp_metrics(out, inp)
    return out


def beta_dpo_plan(
    hparams: Mapping[str, float], margin: Tensor, generator: torch.Generator, groups: int = 1
) -> tuple[dict[str, float], dict[str, Tensor]]:
    """β-DPO's batch β and data filter (arXiv:2407.08639; the authors' code,
    ``update_and_sync_tensor_mean`` and ``preference_loss``), from the margins ``Δ`` ([n], float) of every
    pair of one optimizer step's global batch, in the global batch's order.

    For a batch of n pairs, with the state ``M`` (``gap_mean``) and ``σ`` (``gap_std``), both 0 at the start:

    1. ``M ← m·M + (1−m)·mean(Δ)``, ``σ ← m·σ + (1−m)·std(Δ)`` (unbiased std; the batch first, as the
       authors; m = ``momentum``);
    2. weights ``p_i = exp(−½·((Δ_i − M)/σ)²)``; ``K = max(1, int(n·(1−ρ)))`` pairs are drawn without
       replacement with probabilities ∝ p (``torch.multinomial(p, K, replacement=False, generator)``);
    3. ``β_b = max(β·(1 + a·(mean(Δ over the kept pairs) − M)), 1e-3)``.

    Returns the hyper-parameters with the new state (``gap_mean``, ``gap_std``, ``beta_batch``) and the
    per-pair loss inputs ``{"beta_b": [n], "weight": [n]}`` of :func:`beta_dpo` (``weight`` = n/K for a
    kept pair, 0 otherwise, so the mean over the n pairs is the mean over the kept ones).

    **Decisions** (docs/paper_index.md): the batch is the whole global batch of the optimizer step (all
    accumulation micro-batches, all processes), so β_b does not depend on how the step is split; the
    authors compute all of this per micro-batch (over processes, not over accumulation steps), which
    ``per_micro_batch = 1`` reproduces: then the n pairs are ``groups`` consecutive micro-batch groups of
    equal size, each updating the state in turn and getting its own β_b and filter, and a kept pair's
    weight is ``n_g/K_g`` (the step's loss is the mean over micro-batches of the mean over each one's kept
    pairs; ``beta_batch`` is then the mean of the groups' β_b). The authors' per-process division by the
    local kept count before DDP's average is not reproduced. The draws come from ``generator``, seeded by
    the trainer from the run's seed and the step, so a resumed run draws the same pairs. Guards (the
    authors' code has none): nothing is filtered when a batch has fewer than 2 pairs (its std is undefined;
    σ is then left as it was), when σ = 0 (e.g. at step 0, where Δ = 0), or when the weights are not
    finite or all 0; at least one pair is kept.
    """
    n = margin.numel()
    per_group = bool(hparams["per_micro_batch"])
    g = groups if per_group else 1
    if n % g:
        raise ValueError(f"beta_dpo_plan: {n} pairs do not split into {g} equal micro-batch groups")
    size = n // g
    m, rho, a, beta = hparams["momentum"], hparams["rho"], hparams["a"], hparams["beta"]
    mean, std = float(hparams.get("gap_mean", 0.0)), float(hparams.get("gap_std", 0.0))
    beta_b = torch.empty(n, dtype=torch.float64)
    weight = torch.zeros(n, dtype=torch.float64)
    betas = []
    for k in range(g):
        d = margin[k * size : (k + 1) * size].detach().to(torch.float64).cpu()
        mean = m * mean + (1 - m) * d.mean().item()
        if size >= 2:
            std = m * std + (1 - m) * d.std().item()
        keep = torch.ones(size, dtype=torch.bool)
        n_keep = max(1, int(size * (1 - rho)))
        if size >= 2 and std > 0 and n_keep < size:
            p = torch.exp(-0.5 * ((d - mean) / std) ** 2)
            if torch.isfinite(p).all() and p.sum() > 0:
                keep = torch.zeros(size, dtype=torch.bool)
                keep[torch.multinomial(p, n_keep, replacement=False, generator=generator)] = True
        b = max(beta * (1 + a * (d[keep].mean().item() - mean)), BETA_DPO_MIN_BETA)
        beta_b[k * size : (k + 1) * size] = b
        weight[k * size : (k + 1) * size] = keep.to(torch.float64) * (size / int(keep.sum()))
        betas.append(b)
    new = {**hparams, "gap_mean": mean, "gap_std": std, "beta_batch": sum(betas) / len(betas)}
    return new, {"beta_b": beta_b, "weight": weight}


def beta_dpo_batch_problem(hparams: Mapping[str, float], micro_pairs: int, global_pairs: int) -> str | None:
    """Why a batch layout cannot serve :func:`beta_dpo_plan` (None when it can): its statistics need at
    least 2 pairs per planned batch: the global batch, or with ``per_micro_batch`` each micro-batch over
    all processes (``micro_pairs``)."""
    if hparams["per_micro_batch"] and micro_pairs < 2:
        return (
            f"with per_micro_batch=1 β-DPO's statistics need at least 2 pairs per micro-batch over all "
            f"processes; a micro-batch has {micro_pairs}"
        )
    if global_pairs < 2:
        return f"β-DPO's batch statistics need at least 2 pairs per optimizer step; the global batch has {global_pairs}"
    return None


# --------------------------------------------------------------------------------------------------
# Unpaired, reference-based: data = prompt + completion + label (desirable or not)
# --------------------------------------------------------------------------------------------------

#: The KTO paper's recommended range of λ_D·n_D / (λ_U·n_U) (TRL's KTOTrainer warns outside it).
KTO_BALANCE = (1.0, 4.0 / 3.0)


def kto_kl(inp: LossInputs) -> Tensor:
    """KTO's estimate of KL(π‖π_ref) on one micro-batch, before clamping: the mean log-ratio
    ``logp(y') − logp_ref(y')`` over the rows' mismatched sequences (each row's prompt with another row's
    completion y'), detached. The method's ``across_processes`` statistic: the trainer averages it over
    processes (TRL: ``gather_for_metrics(kl).mean()``) and hands it back as ``inp.process_mean``."""
    kl: SequenceLogps = require(inp.kl, "kl")  # type: ignore[assignment]
    return (kl.sum.detach() - require(inp.ref_kl, "ref_kl")).mean()  # type: ignore[operator]


def kto(inp: LossInputs, *, beta: float, lambda_d: float, lambda_u: float) -> LossOutput:
    """KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization",
    arXiv:2402.01306), the KTO loss L_KTO (§4; TRL cites it as its Eq. 7), per unpaired row:
    desirable ``λ_D·(1 − σ(β·(r − z)))``, undesirable ``λ_U·(1 − σ(β·(z − r)))``, ``r = logp(y) − logp_ref(y)``
    summed over the completion's tokens.

    The reference point ``z = max(0, mean r(x, y'))`` over the micro-batch's mismatched pairs (prompt x
    of one row, completion y' of another; :func:`kto_kl`), averaged over processes, clamped at 0 and
    detached: no gradient flows through z (the authors and TRL). The policy's log-probs of y' are scored
    without an LM-head graph (``Batch.mismatched``). Symbols: β → ``beta``, λ_D → ``lambda_d``,
    λ_U → ``lambda_u`` (TRL: ``desirable_weight``/``undesirable_weight``). At step 0 (π = π_ref) z = 0
    and every row's loss is λ/2. The loss of a step is the mean over all rows of the global batch, each
    weighted by its λ, as TRL's ``losses.nanmean()``.

    **Where tether differs from TRL 1.16** (the loss of given log-probs and z is TRL's exactly, tested):
    the mismatched completion of a row is fixed when the data is prepared: the rows (a pairs file split
    into a desirable chosen and an undesirable rejected row) are shuffled with ``train.seed`` and row i's
    is the completion of the next row with another prompt
    (:func:`tether.data.split.with_mismatched_completions`); TRL rotates completions by one within blocks of ``per_device_train_batch_size`` of the
    unshuffled data and samples sequentially, so its micro-batch's y' are the micro-batch's own
    completions and a split pairs file gives nearly single-label micro-batches. Fixing y' per row lets a
    ``precomputed`` reference hold logp_ref(x, y') in its table, like a pair's rejected answer, and makes
    the pairing identical across runs and resumes; the trainer's per-epoch shuffle then draws a row's y'
    from outside its micro-batch, which estimates the same KL with a different sample. Cost: y' shares
    the row's prompt pass (``prompt | y | y'``) and its LM head runs without a graph, but its decoder
    positions still take part in the backward pass (with zero gradient); TRL instead runs a second,
    no-grad forward over prompt + y'. On evaluation steps z is each eval micro-batch's own (not averaged
    over processes).

    Metrics: ``rewards/chosen`` (β·r over the desirable rows of the global batch), ``rewards/rejected``
    (undesirable rows), ``logps/chosen``/``logps/rejected`` likewise, ``kto/z`` (the clamped z) and
    ``kto/desirable`` (the fraction of desirable rows); ``deviation`` is over desirable rows.
    """
    label: Tensor = require(inp.label, "label")  # type: ignore[assignment]
    r = inp.chosen.sum - require(inp.ref_chosen, "ref_chosen")  # type: ignore[operator]
    z_est = inp.process_mean if inp.process_mean is not None else kto_kl(inp)
    z = z_est.detach().clamp(min=0).to(r.dtype)
    desirable = lambda_d * (1.0 - torch.sigmoid(beta * (r - z)))
    undesirable = lambda_u * (1.0 - torch.sigmoid(beta * (z - r)))
    out = LossOutput(losses=torch.where(label, desirable, undesirable))
    out.add("rewards/chosen", beta * r, where=label)
    out.add("rewards/rejected", beta * r, where=~label)
    out.add("logps/chosen", inp.chosen.sum, where=label)
    out.add("logps/rejected", inp.chosen.sum, where=~label)
    out.add("kto/z", z)
    out.add("kto/desirable", label.float())
    return out


def kto_data_notes(labels: list[bool], hparams: Mapping[str, float]) -> list[str]:
    """KTO's one-line notes on a training set's labels: the recommended range of λ_D·n_D/(λ_U·n_U)
    (``KTO_BALANCE``, the KTO paper's recommendation that TRL's warning applies), or that one label is
    missing (allowed, as in TRL: the loss then only moves r relative to z on one side)."""
    n_d = sum(labels)
    n_u = len(labels) - n_d
    lam_d, lam_u = hparams["lambda_d"], hparams["lambda_u"]
    if n_d == 0 or n_u == 0:
        which, other = ("desirable", "undesirable") if n_u == 0 else ("undesirable", "desirable")
        return [
            f"kto: every training row is {which} ({n_d} desirable, {n_u} undesirable): it trains "
            f"(as in TRL), but with no {other} rows there is no balance to check"
        ]
    ratio = lam_d * n_d / (lam_u * n_u)
    lo, hi = KTO_BALANCE
    if lo <= ratio <= hi:
        return [
            f"kto: λ_D·n_D/(λ_U·n_U) = {lam_d:g}·{n_d}/({lam_u:g}·{n_u}) = {ratio:.3g}, within the KTO paper's "
            "recommended [1, 4/3]"
        ]
    return [
        f"kto: λ_D·n_D/(λ_U·n_U) = {lam_d:g}·{n_d}/({lam_u:g}·{n_u}) = {ratio:.3g} is outside the KTO paper's "
        f"recommended [1, 4/3]; e.g. method.lambda_d in [{lam_u * n_u / n_d:.3g}, "
        f"{4 * lam_u * n_u / (3 * n_d):.3g}] brings it inside"
    ]


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
    add_logp_metrics(out, inp)
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
    add_logp_metrics(out, inp)
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
    add_logp_metrics(out, inp)
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
    :func:`_nll`). **Decision** (docs/paper_index.md): the paper's summed NLL by default; TRL's
    ``CPOTrainer`` (``loss_type="sigmoid"``, ``cpo_alpha`` = λ) uses the micro-batch token mean, which
    ``lambda_nll_avg`` reproduces for equal-length chosen answers (tested against TRL 1.16). The
    preference term equals TRL's ``cpo_loss`` per pair. No reference model. Metrics as TRL's CPO:
    rewards are ``β·logp`` (``rewards/*``), ``nll`` is the per-token ``−avg(y_w)`` whatever the form.
    """
    chosen, rejected = _pair(inp)
    margin = chosen.sum - rejected.sum
    out = LossOutput(losses=-F.logsigmoid(beta * margin) + _nll(chosen, lambda_nll, lambda_nll_avg))
    add_reward_metrics(out, beta, chosen.sum, rejected.sum)
    out.add("nll", -chosen.avg)
    out.add("likelihood/margin", chosen.avg - rejected.avg)
    add_logp_metrics(out, inp)
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
    add_logp_metrics(out, inp)
    return out


def rrhf(inp: LossInputs, *, lambda_nll: float, lambda_nll_avg: float = 0.0) -> LossOutput:
    """RRHF (Yuan et al. 2023, "RRHF: Rank Responses to Align Language Models with Human Feedback without
    Tears", arXiv:2304.05302, Eq. 1-4) on a pair: ``max(0, avg(y_l) − avg(y_w)) − λ·logp(y_w)``.

    Eq. 1 scores each response by its length-normalised log-likelihood ``p = logp(y)/n(y)``; Eq. 2 is the
    ranking loss ``Σ_{r_i < r_j} max(0, p_i − p_j)``, which for one pair is ``max(0, avg_l − avg_w)``;
    Eq. 3 is the cross-entropy on the best response (here the chosen one) and Eq. 4 their sum (λ = 1; the
    SimPO table makes λ a hyper-parameter). Symbols: λ → ``lambda_nll``.

    **Decisions:** the paper, not the authors' released code, whose SFT term is a
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
    add_logp_metrics(out, inp)
    return out


# --------------------------------------------------------------------------------------------------
# A score head: data = pairs, inputs = one scalar per response (``inp.scores``), no log-probs
# --------------------------------------------------------------------------------------------------


def reward(inp: LossInputs, *, center_rewards_coefficient: float) -> LossOutput:
    """A Bradley–Terry reward model: ``−log σ(r_c − r_r − m) + c·(r_c + r_r)²`` per pair.

    Bradley & Terry 1952 (Biometrika 39): P(y_c ≻ y_r) = σ(r_c − r_r); its negative log-likelihood is the
    InstructGPT reward model's loss (Ouyang et al. 2022, arXiv:2203.02155, Eq. 1). ``r``: the score head's
    output at the row's last non-padding token. ``m``: the row's ``margin`` field, 0 where it has none
    (Llama 2, arXiv:2307.09288, Eq. 2, as TRL). ``c`` → ``center_rewards_coefficient``: TRL's centering
    term ``c·mean((r_c + r_r)²)`` (Eisenstein et al. 2023, arXiv:2312.09244, Eq. 2), here per pair, so the
    batch mean is TRL 1.16's ``RewardTrainer`` loss (tested). ``rewards/margins`` is r_c − r_r.
    """
    s: Scores = require(inp.scores, "scores")  # type: ignore[assignment]
    delta = s.chosen - s.rejected
    margin = (inp.row_values or {}).get("margin")
    if margin is not None:
        delta = delta - torch.nan_to_num(margin.to(delta), nan=0.0)
    out = LossOutput(losses=-F.logsigmoid(delta) + center_rewards_coefficient * (s.chosen + s.rejected) ** 2)
    add_reward_metrics(out, 1.0, s.chosen, s.rejected)
    return out
