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
    ``tokens``/``mask``: [B, T] per-token log-probs (0 where ``mask`` is False), when the engine was
    asked for them (methods that declare ``needs_token_logps``).
    """

    sum: Tensor
    n_tokens: Tensor
    tokens: Tensor | None = None
    mask: Tensor | None = None

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
class LossInputs:
    """Everything a loss may read. Fields that a method does not declare are ``None``.

    For SFT-family and unpaired methods ``chosen`` is the completion and ``rejected`` is ``None``;
    ``label`` ([B] bool) is an unpaired row's label (True: desirable completion), else ``None``.
    ``ref_*`` are summed reference log-probs (no gradient). ``ref_origin_chosen``: for a method whose
    reference changes during training (TR-DPO), the summed log-probs of ``chosen`` under the original
    (step-0) reference, for metrics.
    """

    chosen: SequenceLogps
    rejected: SequenceLogps | None = None
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    label: Tensor | None = None
    chosen_perturbed: Perturbed | None = None
    rejected_perturbed: Perturbed | None = None
    ref_origin_chosen: Tensor | None = None


@dataclass
class LossOutput:
    """Per-example losses (with gradient) and per-example detached metrics.

    The trainer reduces both: the loss as the mean over the global batch, each metric as its mean over
    the global batch (all micro-batches and processes of one optimizer step).
    """

    losses: Tensor
    metrics: dict[str, Tensor] = field(default_factory=dict)

    def add(self, name: str, value: Tensor) -> None:
        v = value.detach().float()
        if v.dim() == 0:
            v = v.expand(self.losses.shape[0])
        self.metrics[name] = v


def require(
    value: Tensor | SequenceLogps | Perturbed | None, what: str
) -> Tensor | SequenceLogps | Perturbed:
    """Return ``value`` or fail loudly when the engine did not provide a declared input."""
    if value is None:
        raise ValueError(f"loss input {what!r} is missing: the method's declared capabilities are wrong")
    return value


def as_float(x: Tensor) -> Tensor:
    return x.float() if x.dtype != torch.float64 else x
