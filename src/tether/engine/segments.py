"""Attention computed segment by segment: padding-free packing and a pair's prompt run once.

A :class:`Layout` describes rows of token positions cut into *segments*. A segment is one example:
``n_causal`` tokens attending causally to each other (the prompt and the chosen answer, or an SFT row)
followed by ``n_branch`` tokens (the rejected answer) that attend to the segment's first ``n_prefix`` tokens
(the prompt) and causally to themselves, never to the chosen answer. Segments never see each other, so
several rows can be packed into one sequence without padding.

The layout reaches every attention layer through the model's own attention interface: the model's
``config._attn_implementation`` is switched to ``tether+<inner>`` (registered here), which runs the
original ``<inner>`` attention on an ordinary forward and, when the forward carries ``tether_layout=``,
scaled-dot-product attention per segment. Attention is therefore ``Σ segment²`` work, not ``packed²``
(``benchmarks/bench_attention.py`` measures both). The keyword argument is captured by gradient
checkpointing, so recomputed layers see the same layout.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PREFIX = "tether+"


@dataclass
class Layout:
    """Segments ``(row, start, n_causal, n_branch, n_prefix)`` of a ``[rows, width]`` batch of positions."""

    segments: list[tuple[int, int, int, int, int]]
    rows: int
    width: int
    masks: list[Tensor | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.masks:
            # the branch's queries see the prefix keys and, causally, their own: key j ≤ query i + n_prefix
            self.masks = [
                torch.ones(r, p + r, dtype=torch.bool).tril(p) if r else None
                for _, _, _, r, p in self.segments
            ]

    def to(self, device: torch.device | str) -> Layout:
        masks = [None if m is None else m.to(device) for m in self.masks]
        return Layout(self.segments, self.rows, self.width, masks)


def segment_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    layout: Layout,
    scaling: float | None = None,
    dropout: float = 0.0,
) -> Tensor:
    """``[B, H, L, D]`` query/key/value → ``[B, H, L, D]`` attention output, segment by segment.

    Positions outside every segment (padding) get zeros. Grouped-query attention is handled by SDPA.
    """
    gqa = query.shape[1] != key.shape[1]
    kw = {"scale": scaling, "dropout_p": dropout, "enable_gqa": gqa}
    pieces: list[list[Tensor]] = [[] for _ in range(query.shape[0])]
    ends = [0] * query.shape[0]

    def gap(b: int, n: int) -> None:
        if n > 0:
            pieces[b].append(query.new_zeros(1, query.shape[1], n, value.shape[-1]))

    for (b, s, a, r, p), mask in zip(layout.segments, layout.masks, strict=True):
        gap(b, s - ends[b])
        q, k, v = query[b : b + 1], key[b : b + 1], value[b : b + 1]
        pieces[b].append(
            F.scaled_dot_product_attention(
                q[:, :, s : s + a], k[:, :, s : s + a], v[:, :, s : s + a], is_causal=True, **kw
            )
        )
        if r:
            kk = torch.cat([k[:, :, s : s + p], k[:, :, s + a : s + a + r]], 2)
            vv = torch.cat([v[:, :, s : s + p], v[:, :, s + a : s + a + r]], 2)
            pieces[b].append(F.scaled_dot_product_attention(q[:, :, s + a : s + a + r], kk, vv, mask, **kw))
        ends[b] = s + a + r
    for b in range(query.shape[0]):
        gap(b, query.shape[2] - ends[b])
    return torch.cat([torch.cat(row, 2) for row in pieces], 0)


def _inner_function(module: nn.Module, inner: str):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    if inner == "eager":  # each architecture has its own eager function, beside its attention module
        return sys.modules[type(module).__module__].eager_attention_forward
    return ALL_ATTENTION_FUNCTIONS[inner]


def _dispatch(inner: str):
    def attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
        layout = kwargs.pop("tether_layout", None)
        if layout is None:
            return _inner_function(module, inner)(
                module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
            )
        for unsupported in ("sliding_window", "softcap", "position_bias", "sinks", "s_aux"):
            if kwargs.get(unsupported) is not None:
                raise NotImplementedError(f"segment attention does not support {unsupported}")
        out = segment_attention(query, key, value, layout, scaling=scaling, dropout=dropout)
        return out.transpose(1, 2).contiguous(), None

    return attention


def install(model: nn.Module) -> bool:
    """Route ``model``'s attention through ``tether+<inner>``; False if it cannot be routed."""
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS
    from transformers.modeling_utils import AttentionInterface

    config = getattr(model, "config", None)
    inner = getattr(config, "_attn_implementation", None)
    if not isinstance(inner, str):
        return False
    if inner.startswith(PREFIX):
        return True
    if not getattr(model, "_supports_attention_backend", False):
        return False
    name = PREFIX + inner
    AttentionInterface.register(name, _dispatch(inner))
    mask = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(inner)
    if mask is not None:
        from transformers.masking_utils import AttentionMaskInterface

        AttentionMaskInterface.register(name, mask)
    config._attn_implementation = name
    return True


def inner_implementation(model: nn.Module) -> str | None:
    name = getattr(getattr(model, "config", None), "_attn_implementation", None)
    return name[len(PREFIX) :] if isinstance(name, str) and name.startswith(PREFIX) else name
