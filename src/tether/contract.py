"""The data contract between the model side (log-prob engine, reference) and the loss side.

Every loss reads a :class:`LossInputs` and returns a :class:`LossOutput`. Nothing else crosses the
boundary: losses never see models, configs or trainer state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass(frozen=True)
class SequenceLogps:
    """Log-probs of one response per example, over response tokens only.

    ``sum``: [B] summed log π(y|x). ``n_tokens``: [B] number of response tokens (float).
    """

    sum: Tensor
    n_tokens: Tensor

    @property
    def avg(self) -> Tensor:
        """Length-averaged log-prob ``sum / n_tokens``."""
        return self.sum / self.n_tokens


@dataclass(frozen=True)
class Perturbed:
    """ε-DPO's summed log-probs of the per-token logit mixtures (no gradient).

    ``plus``: Σ_t log_softmax((1+ε)·z − ε·z_ref)[y_t]; ``minus``: Σ_t log_softmax((1−ε)·z + ε·z_ref)[y_t].
    """

    plus: Tensor
    minus: Tensor


@dataclass(frozen=True)
class Scores:
    """A score head's scalar per response (a one-output sequence-classification model, the reward
    ``r(x, y)``), each taken at its row's last non-padding token as transformers' classification heads
    take it. ``chosen``, ``rejected``: [B], with gradient."""

    chosen: Tensor
    rejected: Tensor


@dataclass(frozen=True)
class LossInputs:
    """Everything a loss may read. Fields that a method does not declare are ``None``.

    For SFT-family and unpaired methods ``chosen`` is the completion and ``rejected`` is ``None``;
    ``label`` ([B] bool) is an unpaired row's label (True: desirable completion), else ``None``.
    ``ref_*`` are summed reference log-probs (no gradient). ``kl``/``ref_kl``: an unpaired row's
    mismatched sequence (its prompt with another row's completion, KTO's KL estimate; the policy's without
    gradient), for methods that declare ``mismatched_completion``. ``process_mean``: a method's
    ``across_processes`` statistic of this micro-batch averaged over all processes (set by the trainer;
    ``None`` on one process or in a unit test, where the loss computes it from its own rows).
    ``ref_origin_chosen``: for a method whose reference changes during training (TR-DPO), the summed
    log-probs of ``chosen`` under the original (step-0) reference, for metrics.
    A method whose declared ``head`` is ``score`` (a reward model) reads ``scores`` and no log-probs
    (``chosen`` is then ``None``). ``row_values``: the numeric row fields a method declares
    (``row_values``, e.g. the reward model's ``margin``), [B] each, NaN where a row has none.
    """

    chosen: SequenceLogps = None  # type: ignore[assignment]  # None only for a score head's inputs
    rejected: SequenceLogps | None = None
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    label: Tensor | None = None
    chosen_perturbed: Perturbed | None = None
    rejected_perturbed: Perturbed | None = None
    kl: SequenceLogps | None = None
    ref_kl: Tensor | None = None
    process_mean: Tensor | None = None
    ref_origin_chosen: Tensor | None = None
    scores: Scores | None = None
    row_values: dict[str, Tensor] | None = None


@dataclass
class LossOutput:
    """Per-example losses (with gradient) and per-example detached metrics.

    The trainer reduces both: the loss as the mean over the global batch, each metric as its mean over
    the global batch (all micro-batches and processes of one optimizer step). A metric added with a
    ``where`` mask (``weights[name]``) is the mean over the masked examples of the global batch instead
    (e.g. ``rewards/chosen`` over KTO's desirable rows only): the trainer reduces Σ value·mask and Σ mask
    separately and logs their ratio, or nothing on a step whose global batch has no masked example.
    """

    losses: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)
    weights: dict[str, Tensor] = field(default_factory=dict)

    def add(self, name: str, value: Tensor, where: Tensor | None = None) -> None:
        v = value.detach().float()
        if v.dim() == 0:
            v = v.expand(self.losses.shape[0])
        if where is not None:
            w = where.detach().float().expand(v.shape)
            v = torch.where(w > 0, v, torch.zeros_like(v))  # a NaN/inf outside the mask never reaches the sum
            self.weights[name] = w
        self.metrics[name] = v

    def mean(self, name: str) -> Tensor:
        """The metric's mean as the trainer reduces it (over its ``where`` mask when it has one)."""
        v = self.metrics[name]
        if name not in self.weights:
            return v.mean()
        w = self.weights[name]
        return (v * w).sum() / w.sum()


def require(
    value: Tensor | SequenceLogps | Perturbed | Scores | None, what: str
) -> Tensor | SequenceLogps | Perturbed | Scores:
    """Return ``value`` or fail loudly when the engine did not provide a declared input."""
    if value is None:
        raise ValueError(f"loss input {what!r} is missing: the method's declared capabilities are wrong")
    return value
