"""Per-token log-probs of response tokens without materialising ``[batch, length, vocab]`` logits.

The model's decoder runs once to give hidden states. Only the positions that predict a response token are
gathered (prompt and padding positions never reach the LM head), and the LM head + log-softmax run over
those positions in chunks of ``chunk`` rows. Under autograd each chunk is checkpointed, so the only
tensors kept for backward are the gathered hidden states; the logits of a chunk are recomputed in the
backward pass. Peak logits memory is ``chunk × vocab`` floats instead of ``batch × length × vocab``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tether.contract import LossInputs, Perturbed, SequenceLogps
from tether.errors import TetherError


@dataclass
class Batch:
    """A collated micro-batch. For pairs, rows ``[0, B)`` are prompt+chosen and ``[B, 2B)`` prompt+rejected.

    ``response_mask[i, t]`` is True where token ``t`` of row ``i`` belongs to the response.
    ``index``: [B] positions of the examples in their dataset (precomputed reference look-up).
    ``labels``: [B] bool, unpaired rows' labels (True: desirable), else ``None``.
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    index: Tensor
    paired: bool
    labels: Tensor | None = None

    @property
    def n_examples(self) -> int:
        return int(self.index.shape[0])

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.response_mask.to(device),
            self.index.to(device),
            self.paired,
            None if self.labels is None else self.labels.to(device),
        )


def collate(examples: Sequence, indices: Sequence[int], pad_id: int, padding_side: str = "right") -> Batch:
    """Concatenate prompt and response ids (chosen rows, then rejected rows) and pad to the longest row."""
    paired = examples[0].rejected_ids is not None
    rows: list[tuple[list[int], int]] = [(e.prompt_ids + e.chosen_ids, len(e.prompt_ids)) for e in examples]
    if paired:
        rows += [(e.prompt_ids + e.rejected_ids, len(e.prompt_ids)) for e in examples]
    width = max(len(ids) for ids, _ in rows)
    n = len(rows)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    response = torch.zeros((n, width), dtype=torch.bool)
    for i, (ids, n_prompt) in enumerate(rows):
        start = 0 if padding_side == "right" else width - len(ids)
        input_ids[i, start : start + len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[i, start : start + len(ids)] = 1
        response[i, start + n_prompt : start + len(ids)] = True
    labels = [getattr(e, "label", None) for e in examples]
    label_t = torch.tensor(labels, dtype=torch.bool) if labels and labels[0] is not None else None
    index = torch.tensor(list(indices), dtype=torch.long)
    return Batch(input_ids, attention, response, index, paired, label_t)


def _chunk_logps(hidden: Tensor, targets: Tensor, head: nn.Module, softcap: float | None) -> Tensor:
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)


#: A method's function of the policy's and the reference's logits at response positions (see
#: ``Method.reference_logits``): (z [n, V], z_ref [n, V], targets [n]) -> [n, k], summed per row.
ReferenceLogitsFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def _chunk_mixed(
    hidden: Tensor,
    ref_hidden: Tensor,
    targets: Tensor,
    head: nn.Module,
    ref_head: nn.Module,
    mix: ReferenceLogitsFn,
    softcap: float | None,
) -> Tensor:
    z = head(hidden).float()
    z_ref = ref_head(ref_hidden).float()
    if softcap:
        z, z_ref = torch.tanh(z / softcap) * softcap, torch.tanh(z_ref / softcap) * softcap
    return mix(z, z_ref, targets)


@dataclass
class RowLogps:
    """Engine output per row: summed log-probs, token counts, optional per-token values and, for a method
    with a reference-logits function, its per-row sums ``mixed`` ([rows, k])."""

    sum: Tensor
    n_tokens: Tensor
    tokens: Tensor | None = None
    mask: Tensor | None = None
    mixed: Tensor | None = None


def response_logps(
    hidden: Tensor,
    head: nn.Module,
    input_ids: Tensor,
    response_mask: Tensor,
    *,
    chunk: int = 1024,
    softcap: float | None = None,
    want_tokens: bool = False,
    ref_hidden: Tensor | None = None,
    ref_head: nn.Module | None = None,
    mix: ReferenceLogitsFn | None = None,
) -> RowLogps:
    """Summed log π(y_t | y_<t, x) over response tokens, row by row, in chunks of positions.

    ``hidden``: [N, T, H] last hidden states; position t predicts token t+1. With ``ref_hidden``,
    ``ref_head`` and ``mix`` (a method's reference-logits function), also Σ_t mix(z_t, z_ref_t, y_t)
    per row (fp32, no gradient), e.g. ε-DPO's perturbed log-probs.
    """
    target_mask = response_mask[:, 1:]
    rows, cols = target_mask.nonzero(as_tuple=True)
    h = hidden[:, :-1][rows, cols]
    y = input_ids[:, 1:][rows, cols]
    pieces = []
    for s in range(0, h.shape[0], chunk):
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(
                checkpoint(
                    _chunk_logps, h[s : s + chunk], y[s : s + chunk], head, softcap, use_reentrant=False
                )
            )
        else:
            pieces.append(_chunk_logps(h[s : s + chunk], y[s : s + chunk], head, softcap))
    tok = torch.cat(pieces) if pieces else h.new_zeros(0, dtype=torch.float32)
    n_rows = input_ids.shape[0]
    sums = tok.new_zeros(n_rows).index_add(0, rows, tok)
    out = RowLogps(sum=sums, n_tokens=target_mask.sum(1).to(tok.dtype))
    if want_tokens:
        tokens = tok.new_zeros(target_mask.shape)
        tokens = tokens.index_put((rows, cols), tok)
        out.tokens, out.mask = tokens, target_mask
    if ref_hidden is not None:
        if ref_head is None or mix is None:
            raise ValueError("reference logits need ref_hidden, ref_head and mix together")
        rh = ref_hidden[:, :-1][rows, cols]
        with torch.no_grad():
            parts = [
                _chunk_mixed(
                    h[s : s + chunk].detach(),
                    rh[s : s + chunk],
                    y[s : s + chunk],
                    head,
                    ref_head,
                    mix,
                    softcap,
                )
                for s in range(0, h.shape[0], chunk)
            ]
            if parts:
                values = torch.cat(parts).float()
                out.mixed = values.new_zeros(n_rows, values.shape[1]).index_add(0, rows, values)
            else:
                out.mixed = tok.new_zeros(n_rows, 0)
    return out


def _base(model: nn.Module) -> nn.Module:
    """The transformers model under a peft wrapper (LoRA layers stay injected in it)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module, float | None]:
    """The decoder stack (hidden states), the LM head and an optional final-logit soft-cap."""
    base = _base(model)
    decoder = base.get_decoder() if hasattr(base, "get_decoder") else None
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if decoder is None or decoder is base or head is None:
        raise TetherError(f"{type(base).__name__}: cannot find the decoder and LM head of this model")
    if getattr(base.config, "logit_scale", None) not in (None, 1.0):
        raise TetherError(f"{type(base).__name__}: models with a logit_scale are not supported yet")
    softcap = getattr(base.config, "final_logit_softcapping", None)
    return decoder, head, softcap


def position_ids_for(attention_mask: Tensor) -> Tensor:
    """Positions counted over real tokens only, so left and right padding give the same results."""
    return (attention_mask.cumsum(1) - 1).clamp(min=0)


class LogProbModel(nn.Module):
    """Wraps a causal LM so that ``forward`` returns response log-probs (the module DDP/FSDP wrap).

    ``forward(..., ref_hidden=..., ref_head=..., mix=...)`` adds a method's reference-logits sums.
    """

    def __init__(self, model: nn.Module, chunk: int = 1024):
        super().__init__()
        self.model = model
        self.chunk = chunk

    def hidden(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        decoder, _, _ = decoder_and_head(self.model)
        out = decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids_for(attention_mask),
            use_cache=False,
        )
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]

    @property
    def head(self) -> nn.Module:
        return decoder_and_head(self.model)[1]

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        response_mask: Tensor,
        want_tokens: bool = False,
        ref_hidden: Tensor | None = None,
        ref_head: nn.Module | None = None,
        mix: ReferenceLogitsFn | None = None,
    ) -> RowLogps:
        hidden = self.hidden(input_ids, attention_mask)
        return self.from_hidden(
            hidden,
            input_ids,
            response_mask,
            want_tokens=want_tokens,
            ref_hidden=ref_hidden,
            ref_head=ref_head,
            mix=mix,
        )

    def from_hidden(self, hidden: Tensor, input_ids: Tensor, response_mask: Tensor, **kw) -> RowLogps:
        """Response log-probs from already computed hidden states (see :func:`response_logps`)."""
        _, head, softcap = decoder_and_head(self.model)
        return response_logps(hidden, head, input_ids, response_mask, chunk=self.chunk, softcap=softcap, **kw)

    def adapter_disabled(self) -> contextlib.AbstractContextManager:
        """The base model without its LoRA adapter (the ``adapter`` reference mode)."""
        disable = getattr(self.model, "disable_adapter", None)
        if disable is None:
            raise TetherError("reference.mode 'adapter' needs a LoRA model")
        return disable()


def loss_inputs(
    rows: RowLogps,
    batch: Batch,
    ref_sum: Tensor | None = None,
) -> LossInputs:
    """Split engine rows into the loss contract (chosen rows first, then rejected for pairs)."""
    b = batch.n_examples

    def seq(sl: slice) -> SequenceLogps:
        return SequenceLogps(
            sum=rows.sum[sl],
            n_tokens=rows.n_tokens[sl],
            tokens=None if rows.tokens is None else rows.tokens[sl],
            mask=None if rows.mask is None else rows.mask[sl],
        )

    def pert(sl: slice) -> Perturbed | None:
        if rows.mixed is None or rows.mixed.shape[1] != 2:
            return None
        return Perturbed(plus=rows.mixed[sl, 0], minus=rows.mixed[sl, 1])

    chosen, rejected = slice(0, b), slice(b, 2 * b)
    return LossInputs(
        chosen=seq(chosen),
        rejected=seq(rejected) if batch.paired else None,
        ref_chosen=None if ref_sum is None else ref_sum[chosen],
        ref_rejected=None if ref_sum is None or not batch.paired else ref_sum[rejected],
        label=batch.labels,
        chosen_perturbed=pert(chosen),
        rejected_perturbed=pert(rejected) if batch.paired else None,
    )
