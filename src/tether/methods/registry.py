"""The one registry of training methods.

CLI choices, ``tether losses``, error messages, docs tables and test parametrisation all read
:data:`METHODS`. Capabilities are declared here, next to the loss; the trainer reads them, never method
names, and what they do after an optimizer step is :meth:`Method.after_optimizer_step`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor

import tether.methods.losses as losses
from tether.contract import LossInputs, LossOutput
from tether.data.kinds import Kind
from tether.errors import ConfigError, closest, shown


@dataclass(frozen=True)
class Bound:
    """An allowed open/closed interval for a hyper-parameter."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = True
    high_open: bool = True
    integer: bool = False  # a count (e.g. TR-DPO's τ, in optimizer steps): whole numbers only

    def contains(self, v: float) -> bool:
        lo_ok = v > self.low if self.low_open else v >= self.low
        hi_ok = v < self.high if self.high_open else v <= self.high
        return lo_ok and hi_ok and (not self.integer or float(v).is_integer())

    def __str__(self) -> str:
        s = f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        return f"the integers in {s}" if self.integer else s


POSITIVE = Bound(0.0, math.inf)
NONNEGATIVE = Bound(0.0, math.inf, low_open=False)
ANY = Bound()
UNIT = Bound(0.0, 1.0, low_open=False, high_open=False)
STEPS = Bound(1.0, math.inf, low_open=False, integer=True)  # a number of optimizer steps, ≥ 1


@dataclass(frozen=True)
class StatePlot:
    """How ``tether report`` draws a method's training state: one panel per ``(metric, title, y label)``;
    ``fractions`` are panels whose values are fractions in [0, 1]."""

    name: str
    title: str
    caption: str
    panels: tuple[tuple[str, str, str], ...]
    fractions: frozenset[str] = frozenset()


@dataclass(frozen=True)
class BatchPlan:
    """A loss that depends on the whole global batch of an optimizer step (β-DPO's batch β and filter).

    Before the step's losses, the trainer computes ``statistic`` ([B], detached) of every example of the
    global batch (a no-grad pre-pass when a process has several micro-batches; from the step's own forward
    when it has one), gathers it over processes in the global batch's order and calls
    ``plan(hparams, statistic, generator, groups)``: ``generator`` is seeded from the run's seed and the
    step, ``groups`` is the number of micro-batches of the step (each one all processes' share). It returns
    the hyper-parameters of the step (new training state included: saved in checkpoints, restored on
    resume) and per-example tensors in the same order; each micro-batch's loss receives its slice of them
    as keyword arguments. ``problem(hparams, micro-batch size over all processes, global batch)`` says why
    a batch layout cannot be planned (checked before weights load), or None.
    """

    statistic: Callable[[LossInputs], Tensor]
    plan: Callable[
        [Mapping[str, float], Tensor, torch.Generator, int], tuple[dict[str, float], dict[str, Tensor]]
    ]
    problem: Callable[[Mapping[str, float], int, int], str | None]


@dataclass(frozen=True)
class Method:
    """A training method and its declared capabilities."""

    name: str
    loss: Callable[..., LossOutput]
    paper: str
    equation: str
    data: Kind
    needs_reference: bool
    summary: str
    defaults: Mapping[str, float] = field(default_factory=dict)
    bounds: Mapping[str, Bound] = field(default_factory=dict)
    #: Reference log-probs also computed (once, precomputed) for metrics such as ``deviation`` when the
    #: loss itself does not need them.
    reference_for_metrics: bool = False
    #: A function of the policy's and the reference's full-vocabulary logits at every response token,
    #: ``(z, z_ref, targets, hparams) -> [n, k]``, summed per row by the log-prob engine (ε-DPO's
    #: perturbed log-probs). A precomputed reference serves it from the reference's cached hidden states at the
    #: response tokens and a frozen copy of its output head.
    reference_logits: Callable[[Tensor, Tensor, Tensor, Mapping[str, float]], Tensor] | None = None
    #: Hyper-parameters that are training state: updated after each optimizer step from the step's
    #: global-batch metric means, saved in checkpoints and restored on resume.
    on_optimizer_step: Callable[[dict[str, float], dict[str, float]], dict[str, float]] | None = None
    #: Two forms of one term, ``{alternative: primary}``: a config that gives the alternative (non-zero) and
    #: not the primary sets the primary to 0; both non-zero is a ConfigError. E.g. the NLL weight of CPO, SLiC-HF
    #: and RRHF, summed (``lambda_nll``, the papers') or per token (``lambda_nll_avg``, TRL's).
    alternatives: Mapping[str, str] = field(default_factory=dict)
    #: The metric name each state hyper-parameter is logged under after the update (its own names, so
    #: two stateful methods never share a label), e.g. ``{"beta": "kl/beta"}`` for ε-DPO.
    state_metrics: Mapping[str, str] = field(default_factory=dict)
    #: The plot of this method's state in ``tether report`` (``<name>.png``), drawn when a run logged it.
    state_plot: StatePlot | None = None
    #: Unpaired data only: each row also carries another row's completion after its own prompt
    #: (``LossInputs.kl``/``ref_kl``; KTO's KL estimate), fixed when the data is prepared after a shuffle
    #: with the run's seed (:func:`tether.data.split.with_mismatched_completions`).
    mismatched_completion: bool = False
    #: Unpaired data only: a pairs file is accepted too, each pair split into a desirable (chosen) and an
    #: undesirable (rejected) row.
    split_pairs: bool = False
    #: A detached scalar statistic of a micro-batch that the loss needs averaged over all processes (KTO's
    #: KL estimate): the trainer computes it on every process, all-reduces the mean and hands it to the
    #: loss as ``LossInputs.process_mean`` (training steps; evaluation uses each micro-batch's own).
    across_processes: Callable[[LossInputs], Tensor] | None = None
    #: One-line notes on the training rows' labels and the hyper-parameters, printed by ``tether validate``
    #: and ``tether train`` (KTO's λ_D·n_D/(λ_U·n_U) against the paper's recommended range).
    label_notes: Callable[[list[bool], Mapping[str, float]], list[str]] | None = None
    #: The loss depends on the whole global batch of the step (β-DPO): see :class:`BatchPlan`.
    batch_plan: BatchPlan | None = None
    #: A live reference (TR-DPO): after optimizer step ``s`` (1-based, counted over the run), the weight α
    #: of ``ref ← (1 − α)·ref + α·θ`` over all parameters, or None for no update at that step. The reference
    #: is then a frozen copy of the starting model, updated in fp32, saved in checkpoints; the number of
    #: updates so far is the state key ``reference_updates`` for ``state_metrics``; a precomputed reference,
    #: another reference model and LoRA are refused at config load.
    reference_update: Callable[[int, Mapping[str, float]], float | None] | None = None
    #: The model head the method trains: ``lm``, the causal LM (losses read response log-probs), or
    #: ``score``, a one-output sequence-classification head on the same backbone (a reward model; losses
    #: read ``LossInputs.scores``, one scalar per row at its last non-padding token; no reference).
    head: str = "lm"
    #: Numeric row fields the loss reads when a row has them (``LossInputs.row_values``; NaN where a row
    #: has none), checked as finite numbers when the data is read (e.g. the reward model's ``margin``).
    row_values: tuple[str, ...] = ()

    @property
    def live_reference(self) -> bool:
        """The reference changes during training (it must be a frozen copy, saved in checkpoints)."""
        return self.reference_update is not None

    @property
    def needs_reference_logits(self) -> bool:
        """Needs the reference's logits, not just its summed log-probs (copy, adapter or cached hidden states)."""
        return self.reference_logits is not None

    @property
    def uses_reference(self) -> bool:
        return self.needs_reference or self.reference_for_metrics

    def after_optimizer_step(
        self,
        step: int,
        hparams: dict[str, float],
        means: dict[str, float],
        mix_reference: Callable[[float], None],
    ) -> dict[str, float]:
        """The method's hyper-parameters after optimizer step ``step`` (1-based): ``on_optimizer_step``
        applied to the step's global-batch means, then, for a live reference, ``mix_reference(α)`` when
        ``reference_update`` says so (the caller mixes and counts the update)."""
        if self.on_optimizer_step is not None:
            hparams = self.on_optimizer_step(hparams, means)
        if self.reference_update is not None:
            alpha = self.reference_update(step, hparams)
            if alpha is not None:
                mix_reference(alpha)
        return hparams

    def state_values(self, hparams: Mapping[str, float], reference_updates: int) -> dict[str, float]:
        """The training state logged after a step, under the ``state_metrics`` names."""
        state = {**hparams, "reference_updates": float(reference_updates)}
        return {name: state[key] for key, name in self.state_metrics.items()}

    def hparams(self, given: Mapping[str, object], where: str = "method") -> dict[str, float]:
        """Defaults overlaid with ``given``; unknown names and out-of-range values raise ConfigError."""
        out = dict(self.defaults)
        for key, value in given.items():
            if key not in self.defaults:
                valid = ", ".join(self.defaults) or "none"
                raise ConfigError(
                    f"{where}.{key}: unknown hyper-parameter for method '{self.name}'"
                    f"{closest(key, self.defaults)}; valid: {valid}",
                    f"{where}.{key}",
                )
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    pass
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}.{key}: must be a number, got {shown(value)}", f"{where}.{key}")
            if isinstance(value, int) and abs(value) > 2**1023:  # beyond a float: not a hyper-parameter
                raise ConfigError(f"{where}.{key}: {shown(value)} is too large", f"{where}.{key}")
            bound = self.bounds.get(key, ANY)
            if bound.integer and math.isfinite(value) and not float(value).is_integer():
                raise ConfigError(
                    f"{where}.{key}: must be a whole number for method '{self.name}', got {value}",
                    f"{where}.{key}",
                )
            if not bound.contains(float(value)):
                raise ConfigError(
                    f"{where}.{key}: {value} is outside {bound} for method '{self.name}'", f"{where}.{key}"
                )
            out[key] = float(value)
        for alt, primary in self.alternatives.items():
            if alt in given and primary not in given and out[alt] != 0.0:
                out[primary] = 0.0
            if out[alt] != 0.0 and out[primary] != 0.0:
                raise ConfigError(
                    f"{where}: {primary} and {alt} are two forms of one term for method '{self.name}'; "
                    f"give one of them (the other is then 0)"
                )
        return out

    def __call__(
        self, inp: LossInputs, hparams: Mapping[str, float], per_example: Mapping[str, Tensor] | None = None
    ) -> LossOutput:
        """Run the loss and add the reference metrics (``deviation`` etc.) every reference run logs.
        ``per_example``: this micro-batch's slice of the step's :class:`BatchPlan` tensors."""
        out = self.loss(inp, **hparams, **(per_example or {}))
        losses.add_reference_metrics(out, inp)
        return out


_DPO = "Rafailov et al. 2023, Direct Preference Optimization, arXiv:2305.18290"
_MINOR = "Xie et al. 2024, Minor SFT loss for LLM fine-tune, arXiv:2408.10642"
_NLL_FORMS = {"lambda_nll_avg": "lambda_nll"}
_EDPO = "Lee et al. 2025, KL Penalty Control via Perturbation for DPO, arXiv:2502.13177"
_UNIT = Bound(0.0, 1.0, low_open=False)  # [0, 1)
_TR_DPO = "soft/hard reference update every τ steps; loss: DPO Eq. 7"

METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method(
            "sft",
            losses.sft,
            "Raw SFT, as the baseline of " + _MINOR,
            "Eq. 5",
            "sft",
            False,
            "token-averaged NLL of the completion; logs deviation against a precomputed reference",
            reference_for_metrics=True,
        ),
        Method(
            "sft_dpo",
            losses.sft_dpo,
            _MINOR,
            "Eq. 3",
            "sft",
            True,
            "SFT using DPO: -log σ(β·r(y)) on SFT data",
            defaults={"beta": 0.04},
            bounds={"beta": POSITIVE},
        ),
        Method(
            "minor_sft",
            losses.minor_sft,
            _MINOR,
            "Eq. 7",
            "sft",
            True,
            "MinorSFT: -2·sg[σ(-β·r)]·avg(y); equals SFT at step 0, then slows down drifting samples",
            defaults={"beta": 0.04},
            bounds={"beta": POSITIVE},
        ),
        Method(
            "dpo",
            losses.dpo,
            _DPO,
            "Eq. 7",
            "pairs",
            True,
            "DPO: -log σ(β·(r_w - r_l))",
            defaults={"beta": 0.1},
            bounds={"beta": POSITIVE},
        ),
        Method(
            "minor_dpo",
            losses.minor_dpo,
            _MINOR,
            "Eq. 2",
            "pairs",
            True,
            "MinorDPO: -log σ(β·r_w - β·max(0, r_l)); no push on a rejected answer already below reference",
            defaults={"beta": 0.1},
            bounds={"beta": POSITIVE},
        ),
        Method(
            "ipo",
            losses.ipo,
            "Azar et al. 2023, A General Theoretical Paradigm (IPO), arXiv:2310.12036",
            "Eq. 17",
            "pairs",
            True,
            "IPO: ((r_w/n_w - r_l/n_l) - 1/(2β))², length-normalised as in TRL",
            defaults={"beta": 0.1},
            bounds={"beta": POSITIVE},
        ),
        Method(
            "epsilon_dpo",
            losses.epsilon_dpo,
            _EDPO,
            "Eq. 3-6 (Alg. 1)",
            "pairs",
            True,
            "ε-DPO: per-pair β_i = β/(1+ε·s_i) from per-token logit perturbation; β re-centred each step",
            defaults={"beta": 0.01, "epsilon": 0.01},
            bounds={"beta": POSITIVE, "epsilon": Bound(0.0, 1.0)},
            reference_logits=losses.epsilon_mixtures,
            on_optimizer_step=losses.epsilon_dpo_update,
            state_metrics={"beta": "kl/beta"},
            state_plot=StatePlot(
                "epsilon_dpo",
                "ε-DPO: KL penalty control",
                "ε-DPO's β per step and the fractions of pairs with s = +1 and s = −1 (arXiv:2502.13177, Alg. 1).",
                (
                    ("kl/beta", "β (re-centred each step)", "β"),
                    (
                        "kl/p_epsilon_steps",
                        "fraction of pairs with s = +1 (β_i lowered)",
                        "fraction of pairs",
                    ),
                    ("kl/n_epsilon_steps", "fraction of pairs with s = −1 (β_i raised)", "fraction of pairs"),
                ),
                fractions=frozenset({"kl/p_epsilon_steps", "kl/n_epsilon_steps"}),
            ),
        ),
        Method(
            "r_dpo",
            losses.r_dpo,
            "Park et al. 2024, Disentangling Length from Quality in DPO (R-DPO), arXiv:2403.19159",
            "regularised DPO loss (the SimPO paper's baseline-table form, arXiv:2405.14734)",
            "pairs",
            True,
            "R-DPO: -log σ(β·(r_w - r_l) + α·(n_w - n_l)); DPO with a length regulariser, α=0 is DPO",
            defaults={"beta": 0.1, "alpha": 0.05},
            bounds={"beta": POSITIVE, "alpha": NONNEGATIVE},
        ),
        Method(
            "beta_dpo",
            losses.beta_dpo,
            "Wu et al. 2024, β-DPO: Direct Preference Optimization with Dynamic β, arXiv:2407.08639",
            "dynamic β calibration with β-guided data filtering (as the authors' released code; equation "
            "numbers not checked)",
            "pairs",
            True,
            "β-DPO: -log σ(β_b·Δ) over the pairs a Gaussian filter keeps; β_b from the batch's margins vs their "
            "moving average (over the step's global batch)",
            defaults={"beta": 0.1, "rho": 0.2, "a": 0.6, "momentum": 0.9, "per_micro_batch": 0.0},
            bounds={
                "beta": POSITIVE,
                "rho": _UNIT,
                "a": NONNEGATIVE,
                "momentum": _UNIT,
                "per_micro_batch": Bound(0.0, 1.0, low_open=False, high_open=False, integer=True),
            },
            state_metrics={
                "beta_batch": "beta_dpo/beta",
                "gap_mean": "beta_dpo/gap_mean",
                "gap_std": "beta_dpo/gap_std",
            },
            state_plot=StatePlot(
                "beta_dpo",
                "β-DPO: batch β and data filter",
                "β-DPO's batch β_b per step, the fraction of pairs the filter kept, and the moving averages M "
                "and σ of the margin Δ = r_w − r_l (arXiv:2407.08639).",
                (
                    ("beta_dpo/beta", "β_b (batch β)", "β"),
                    ("beta_dpo/kept_fraction", "fraction of pairs kept", "fraction of pairs"),
                    ("beta_dpo/gap_mean", "M: moving mean of Δ", "Δ"),
                    ("beta_dpo/gap_std", "σ: moving std of Δ", "Δ"),
                ),
                fractions=frozenset({"beta_dpo/kept_fraction"}),
            ),
            batch_plan=BatchPlan(losses.beta_dpo_margin, losses.beta_dpo_plan, losses.beta_dpo_batch_problem),
        ),
        Method(
            "asft",
            losses.asft,
            "Wang et al. 2024, ASFT: Aligned Supervised Fine-Tuning through Absolute Likelihood, arXiv:2409.10571",
            "Eq. 14, App. B",
            "pairs",
            False,
            "Aligned SFT (not Anchored SFT): -(1+β)·avg(y_w) - β·log(1 - exp(avg(y_l))); no reference",
            defaults={"beta": 0.1},
            bounds={"beta": POSITIVE},
        ),
        Method(
            "orpo",
            losses.orpo,
            "Hong et al. 2024, ORPO, arXiv:2403.07691",
            "Eq. 6-7",
            "pairs",
            False,
            "ORPO: NLL(y_w) - β·log σ(log-odds(avg_w, avg_l)); no reference",
            defaults={"beta": 0.1},
            bounds={"beta": POSITIVE},
        ),
        Method(
            "simpo",
            losses.simpo,
            "Meng et al. 2024, SimPO, arXiv:2405.14734",
            "Eq. 6",
            "pairs",
            False,
            "SimPO: -log σ(β·(avg_w - avg_l) - γ); no reference",
            defaults={"beta": 2.0, "gamma": 0.5},
            bounds={"beta": POSITIVE, "gamma": ANY},
        ),
        Method(
            "cpo",
            losses.cpo,
            "Xu et al. 2024, Contrastive Preference Optimization, arXiv:2401.08417",
            "Eq. 3 + L_NLL",
            "pairs",
            False,
            "CPO: -log σ(β·(logp_w - logp_l)) - λ·logp_w (summed; lambda_nll_avg: per token); no reference",
            defaults={"beta": 0.1, "lambda_nll": 1.0, "lambda_nll_avg": 0.0},
            bounds={"beta": POSITIVE, "lambda_nll": NONNEGATIVE, "lambda_nll_avg": NONNEGATIVE},
            alternatives=_NLL_FORMS,
        ),
        Method(
            "slic_hf",
            losses.slic_hf,
            "Zhao et al. 2023, SLiC-HF: Sequence Likelihood Calibration with Human Feedback, arXiv:2305.10425",
            "Eq. 1",
            "pairs",
            False,
            "SLiC-HF: max(0, δ - logp_w + logp_l) - λ·logp_w (y_ref = chosen; lambda_nll_avg: per token); no reference",
            defaults={"delta": 1.0, "lambda_nll": 0.1, "lambda_nll_avg": 0.0},
            bounds={"delta": POSITIVE, "lambda_nll": NONNEGATIVE, "lambda_nll_avg": NONNEGATIVE},
            alternatives=_NLL_FORMS,
        ),
        Method(
            "rrhf",
            losses.rrhf,
            "Yuan et al. 2023, RRHF: Rank Responses to Align Language Models with Human Feedback, arXiv:2304.05302",
            "Eq. 1-4",
            "pairs",
            False,
            "RRHF: max(0, avg_l - avg_w) - λ·logp_w (length-normalised ranking; lambda_nll_avg: per token); no reference",
            defaults={"lambda_nll": 1.0, "lambda_nll_avg": 0.0},
            bounds={"lambda_nll": NONNEGATIVE, "lambda_nll_avg": NONNEGATIVE},
            alternatives=_NLL_FORMS,
        ),
        Method(
            "kto",
            losses.kto,
            "Ethayarajh et al. 2024, KTO: Model Alignment as Prospect Theoretic Optimization, arXiv:2402.01306",
            "KTO loss L_KTO (§4; TRL cites it as Eq. 7)",
            "unpaired",
            True,
            "KTO: λ_D·(1 - σ(β·(r - z))) desirable, λ_U·(1 - σ(β·(z - r))) undesirable; z = max(0, mismatched-pair KL); pairs are split",
            defaults={"beta": 0.1, "lambda_d": 1.0, "lambda_u": 1.0},
            bounds={"beta": POSITIVE, "lambda_d": POSITIVE, "lambda_u": POSITIVE},
            mismatched_completion=True,
            split_pairs=True,
            across_processes=losses.kto_kl,
            label_notes=losses.kto_data_notes,
        ),
        Method(
            "tr_dpo",
            losses.tr_dpo,
            "Gorbatovski et al. 2024, Learn Your Reference Model for Real Good Alignment (TR-DPO), arXiv:2404.09656",
            _TR_DPO + " (arXiv:2305.18290) against the current reference",
            "pairs",
            True,
            "TR-DPO: DPO against a live reference, ref ← (1-α)·ref + α·θ every τ steps (α=1: TR-DPO τ, hard)",
            defaults={"beta": 0.1, "alpha": 0.6, "tau": 512},
            bounds={"beta": POSITIVE, "alpha": UNIT, "tau": STEPS},
            reference_update=losses.tr_dpo_update,
            state_metrics={"reference_updates": "tr_dpo/updates"},
            state_plot=StatePlot(
                "tr_dpo",
                "TR-DPO: the live reference",
                "TR-DPO's reference updates so far and how far the updated reference has moved from the "
                "original one: MinorSFT's Eq. 8 deviation of ref_t against ref_0 on the step's chosen "
                "answers, mean (logp_ref_t(y_w) − logp_ref_0(y_w))/n(y_w).",
                (
                    ("tr_dpo/updates", "reference updates so far", "updates"),
                    (
                        "tr_dpo/ref_deviation",
                        "deviation of the reference from the original",
                        "nats per token",
                    ),
                ),
            ),
        ),
        Method(
            "reward",
            losses.reward,
            "Bradley & Terry 1952; Ouyang et al. 2022, Training language models to follow instructions "
            "(InstructGPT), arXiv:2203.02155",
            "Eq. 1 (+ TRL's centering, arXiv:2312.09244 Eq. 2)",
            "pairs",
            False,
            "Bradley–Terry reward model: -log σ(r_c - r_r - margin) + c·(r_c + r_r)²; trains a one-output "
            "score head (a judge for tether eval --judge)",
            defaults={"center_rewards_coefficient": 0.0},
            bounds={"center_rewards_coefficient": NONNEGATIVE},
            head="score",
            row_values=("margin",),
        ),
    ]
}


HYPERPARAMETERS: dict[str, str] = {
    "beta": "β: how strongly the method holds the model (the KL penalty's weight for reference methods, "
    "the preference term's weight for ORPO and ASFT, the reward scale for SimPO; see the method's paper)",
    "epsilon": "ε-DPO's ε: the logit perturbation that decides whether each pair's β_i is lowered or raised",
    "alpha": "R-DPO's α: weight of the length regulariser (0 is DPO); TR-DPO's α: the weight of the policy "
    "in each reference update, ref ← (1 − α)·ref + α·θ (1: a hard copy, TR-DPO τ; 0 is DPO)",
    "tau": "TR-DPO's τ: the reference is updated after every τ-th optimizer step",
    "gamma": "SimPO's γ: the target reward margin",
    "delta": "SLiC-HF's δ: the ranking margin between chosen and rejected log-likelihoods",
    "lambda_nll": "weight of the NLL term on the chosen answer, summed over its tokens (the papers' form)",
    "lambda_nll_avg": "weight of the NLL term on the chosen answer, per token (TRL's form); give it or "
    "lambda_nll, not both",
    "rho": "β-DPO's ρ: the fraction of each batch's pairs the β-guided filter drops",
    "a": "β-DPO's a: how strongly β_b follows the kept pairs' mean margin against its moving average (0: β)",
    "momentum": "β-DPO's m: momentum of the moving averages of the margins' mean and standard deviation",
    "per_micro_batch": "β-DPO: 1 computes the statistics per micro-batch as the authors' code does (the "
    "result then depends on the micro-batch size); 0 over the step's global batch",
    "lambda_d": "KTO's λ_D: weight of the desirable rows' loss (TRL's desirable_weight)",
    "lambda_u": "KTO's λ_U: weight of the undesirable rows' loss (TRL's undesirable_weight)",
    "center_rewards_coefficient": "reward: weight c of TRL's centering term c·(r_c + r_r)², pulling the "
    "rewards toward mean zero (0: off; TRL recommends 0.01)",
}
"""What each hyper-parameter name means (``tether config``, docs/config.md); a test asserts every method's
hyper-parameters are here."""


def state_plots() -> list[StatePlot]:
    """Every method's declared state plot (once each), for ``tether report``."""
    plots = {m.state_plot.name: m.state_plot for m in METHODS.values() if m.state_plot is not None}
    return list(plots.values())


def state_metric_names() -> set[str]:
    """The metrics methods log as state (set by the method, not measured on a batch)."""
    return {name for m in METHODS.values() for name in m.state_metrics.values()}


def get_method(name: str, where: str = "method.name") -> Method:
    """The registered method, or a ConfigError naming the closest valid one."""
    if name not in METHODS:
        raise ConfigError(
            f"{where}: unknown method '{name}'{closest(name, METHODS)}; valid: {', '.join(METHODS)}", where
        )
    return METHODS[name]


def methods_table() -> list[dict[str, str]]:
    """Rows for ``tether losses`` and the docs."""
    rows = []
    for m in METHODS.values():
        if m.needs_reference_logits:
            ref = "logits"
        elif m.live_reference:
            ref = "live"
        elif m.needs_reference:
            ref = "yes"
        else:
            ref = "metrics" if m.reference_for_metrics else "no"
        rows.append(
            {
                "method": m.name,
                "data": m.data + (" or pairs (split)" if m.split_pairs else ""),
                "reference": ref,
                "defaults": ", ".join(f"{k}={v:g}" for k, v in m.defaults.items()) or "-",
                "paper": m.paper,
                "equation": m.equation,
                "summary": m.summary,
            }
        )
    return rows


def methods_markdown() -> str:
    """The README/docs table of methods, generated from the registry (a test keeps the docs in sync)."""
    lines = [
        "| method | data | reference | defaults | paper | equation | what it does |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in methods_table():
        lines.append(
            f"| `{r['method']}` | {r['data']} | {r['reference']} | {r['defaults']} | {r['paper']} | "
            f"{r['equation']} | {r['summary']} |"
        )
    return "\n".join(lines)
