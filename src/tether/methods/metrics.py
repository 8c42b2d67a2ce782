"""The metrics every loss shares, as pure functions of log-probs: the implicit rewards of a pair, the
log-probs, and the reference metrics (MinorSFT's deviation, sDPO's γ_ref) that every run with reference
log-probs logs whatever its loss. Training (:mod:`tether.methods.losses`) and held-out evaluation both use
these."""

from __future__ import annotations

from torch import Tensor

from tether.contract import LossInputs, LossOutput


def reward_metrics(beta: Tensor | float, r_w: Tensor, r_l: Tensor) -> dict[str, Tensor]:
    """The implicit-reward metrics β·r of a pair (TRL's names), per example; training and held-out
    evaluation both use these."""
    return {
        "rewards/chosen": beta * r_w,
        "rewards/rejected": beta * r_l,
        "rewards/accuracies": (r_w > r_l).float(),
        "rewards/margins": beta * (r_w - r_l),
    }


def add_reward_metrics(out: LossOutput, beta: Tensor | float, r_w: Tensor, r_l: Tensor) -> None:
    for name, value in reward_metrics(beta, r_w, r_l).items():
        out.add(name, value)


def add_logp_metrics(out: LossOutput, inp: LossInputs) -> None:
    out.add("logps/chosen", inp.chosen.sum)
    if inp.rejected is not None:
        out.add("logps/rejected", inp.rejected.sum)


def add_reference_metrics(out: LossOutput, inp: LossInputs) -> None:
    """:func:`reference_metrics` into ``out``; for unpaired rows (``inp.label``) ``deviation`` and
    ``logps/ref_chosen`` are over the desirable rows, ``deviation/rejected`` and ``logps/ref_rejected``
    over the undesirable ones (as a pair's chosen and rejected answers)."""
    if inp.label is None or inp.ref_chosen is None:
        for name, value in reference_metrics(inp).items():
            out.add(name, value)
        return
    dev = (inp.chosen.sum - inp.ref_chosen) / inp.chosen.n_tokens
    out.add("deviation", dev, where=inp.label)
    out.add("deviation/rejected", dev, where=~inp.label)
    out.add("logps/ref_chosen", inp.ref_chosen, where=inp.label)
    out.add("logps/ref_rejected", inp.ref_chosen, where=~inp.label)


def reference_metrics(inp: LossInputs) -> dict[str, Tensor]:
    """Metrics every run with reference log-probs logs, whatever its loss.

    ``deviation`` is MinorSFT's m_θ (arXiv:2408.10642, Eq. 8): per example ``r(y)/n(y)`` on the chosen
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
