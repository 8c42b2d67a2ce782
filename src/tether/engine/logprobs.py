"""Per-token log-probs of response tokens without materialising ``[batch, length, vocab]`` logits.

The model's decoder runs once to give hidden states. Only the positions that predict a response token are
gathered (prompt and padding positions never reach the LM head), and the LM head + log-softmax run over
those positions in chunks of ``chunk`` rows. Under autograd the head is :class:`HeadLogps` (a plain
``nn.Linear`` head, the usual case): the forward keeps only each position's log-sum-exp, the backward
recomputes a chunk's logits and turns them in place into the gradient (softmax − one-hot), as fused
linear-cross-entropy kernels do; other heads (a LoRA-wrapped or sharded one) run each chunk under
activation checkpointing instead. Either way the only tensors kept for backward are the gathered hidden
states, and peak logits memory is about one ``chunk × vocab`` fp32 tensor instead of ``batch × length ×
vocab``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from tether.contract import LossInputs, Perturbed, SequenceLogps
from tether.engine import segments
from tether.engine.segments import Layout
from tether.errors import TetherError


@dataclass
class Targets:
    """The response tokens of a batch, in row order (row 0's tokens first): which hidden state predicts
    each (``src_row``, ``src_col``), the token (``token``) and its output row (``owner``). ``n_rows``
    output rows."""

    src_row: Tensor
    src_col: Tensor
    token: Tensor
    owner: Tensor
    n_rows: int

    @staticmethod
    def from_mask(input_ids: Tensor, response_mask: Tensor) -> Targets:
        """Padded rows: position t predicts token t+1."""
        target_mask = response_mask[:, 1:]
        rows, cols = target_mask.nonzero(as_tuple=True)
        return Targets(rows, cols, input_ids[:, 1:][rows, cols], rows, int(input_ids.shape[0]))

    def to(self, device: torch.device | str) -> Targets:
        t = (self.src_row, self.src_col, self.token, self.owner)
        return Targets(*(x.to(device) for x in t), self.n_rows)


@dataclass
class Batch:
    """A collated micro-batch. Output rows: for pairs ``[0, B)`` prompt+chosen and ``[B, 2B)``
    prompt+rejected; for SFT/unpaired ``[0, B)``.

    Plain layout (``layout`` None): one padded row per output row; ``response_mask[i, t]`` is True where
    token ``t`` of row ``i`` belongs to the response. Segment layout (see :mod:`tether.engine.segments`):
    rows of segments (one per example, a pair's prompt once when shared), ``position_ids`` restarting per
    segment, ``response_mask`` None. ``targets`` says where each response token is in either layout.
    ``index``: [B] positions of the examples in their dataset (precomputed reference look-up).
    ``labels``: [B] bool, unpaired rows' labels (True: desirable), else ``None``. Unpaired rows that
    carry a mismatched completion (KTO, :attr:`mismatched`) are collated as pairs: rows ``[B, 2B)`` are
    each prompt followed by its mismatched completion.
    ``n_tokens``: tokens counted per output row (a pair's prompt twice, as TRL counts them).
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor | None
    index: Tensor
    paired: bool
    labels: Tensor | None = None
    targets: Targets | None = None
    position_ids: Tensor | None = None
    layout: Layout | None = None
    n_tokens: int = 0

    def __post_init__(self) -> None:
        if self.targets is None:
            assert self.response_mask is not None
            self.targets = Targets.from_mask(self.input_ids, self.response_mask)
        if not self.n_tokens:
            self.n_tokens = int(self.attention_mask.sum())

    @property
    def mismatched(self) -> bool:
        """Rows ``[B, 2B)`` are unpaired rows' mismatched completions (scored without gradient)."""
        return self.paired and self.labels is not None

    @property
    def n_examples(self) -> int:
        return int(self.index.shape[0])

    @property
    def n_positions(self) -> int:
        """Token positions the decoder computes (padding included)."""
        return int(self.input_ids.numel())

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            None if self.response_mask is None else self.response_mask.to(device),
            self.index.to(device),
            self.paired,
            None if self.labels is None else self.labels.to(device),
            None if self.targets is None else self.targets.to(device),
            None if self.position_ids is None else self.position_ids.to(device),
            None if self.layout is None else self.layout.to(device),
            self.n_tokens,
        )


def collate(
    examples: Sequence,
    indices: Sequence[int],
    pad_id: int,
    padding_side: str = "right",
    *,
    share_prompt: bool = False,
    packing: bool = False,
) -> Batch:
    """Collate examples (chosen rows, then rejected rows).

    Plain (both switches off): concatenate prompt and response ids and pad to the longest row.
    ``share_prompt`` (pairs): one segment ``prompt | chosen | rejected`` per pair. ``packing``: all
    segments in one row, no padding. Either gives a segment layout, whose forward needs a model routed
    through :mod:`tether.engine.segments` (:meth:`LogProbModel.collate` checks and falls back).
    """
    paired = examples[0].rejected_ids is not None
    labels = [getattr(e, "label", None) for e in examples]
    label_t = torch.tensor(labels, dtype=torch.bool) if labels and labels[0] is not None else None
    index = torch.tensor(list(indices), dtype=torch.long)
    share = share_prompt and paired
    if not share and not packing:
        return _collate_plain(examples, index, label_t, pad_id, padding_side, paired)
    b = len(examples)
    # one segment per example: (ids, positions, n_causal, n_branch, n_prefix, [(owner, predictions)])
    segs: list[tuple] = []
    for i, e in enumerate(examples):
        p, c = list(e.prompt_ids), list(e.chosen_ids)
        chosen = _predictions(range(len(p) - 1, len(p) + len(c) - 1), c, scored(e))
        if share:  # prompt | chosen | rejected; rejected's first token is predicted by the prompt's last
            r = list(e.rejected_ids)
            after = len(p) + len(c)
            rejected = _predictions([len(p) - 1, *range(after, after + len(r) - 1)][: len(r)], r)
            pos = [*range(after), *range(len(p), len(p) + len(r))]
            segs.append((p + c + r, pos, after, len(r), len(p), [(i, chosen), (b + i, rejected)]))
        else:
            segs.append((p + c, list(range(len(p) + len(c))), len(p) + len(c), 0, 0, [(i, chosen)]))
    if paired and not share:
        for i, e in enumerate(examples):
            p, r = list(e.prompt_ids), list(e.rejected_ids)
            rejected = _predictions(range(len(p) - 1, len(p) + len(r) - 1), r)
            segs.append((p + r, list(range(len(p) + len(r))), len(p) + len(r), 0, 0, [(b + i, rejected)]))
    # placement: all in row 0 (packing) or one row each
    placed, cursor = [], [0]
    for seg in segs:
        if packing:
            placed.append((0, cursor[0]))
            cursor[0] += len(seg[0])
        else:
            placed.append((len(placed), 0))
    n_rows = 1 if packing else len(segs)
    width = cursor[0] if packing else max(len(s[0]) for s in segs)
    input_ids = torch.full((n_rows, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n_rows, width), dtype=torch.long)
    positions = torch.zeros((n_rows, width), dtype=torch.long)
    by_owner: dict[int, list[tuple[int, int, int]]] = {}
    segments = []
    for (ids, pos, a, r, p, preds), (row, start) in zip(segs, placed, strict=True):
        input_ids[row, start : start + len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[row, start : start + len(ids)] = 1
        positions[row, start : start + len(ids)] = torch.tensor(pos, dtype=torch.long)
        segments.append((row, start, a, r, p))
        for owner, toks in preds:
            by_owner[owner] = [(row, start + o, tok) for o, tok in toks]
    out_rows = 2 * b if paired else b
    flat = [(row, col, tok, owner) for owner in range(out_rows) for row, col, tok in by_owner[owner]]
    cols = list(zip(*flat, strict=True)) if flat else [()] * 4
    t = [torch.tensor(c, dtype=torch.long) for c in cols]
    targets = Targets(t[0], t[1], t[2], t[3], out_rows)
    n_logical = sum(len(e.prompt_ids) + len(e.chosen_ids) for e in examples)
    if paired:
        n_logical += sum(len(e.prompt_ids) + len(e.rejected_ids) for e in examples)
    layout = Layout(segments, n_rows, width)
    return Batch(input_ids, attention, None, index, paired, label_t, targets, positions, layout, n_logical)


def _predictions(offsets, tokens: list[int], mask: Sequence[bool] | None = None) -> list[tuple[int, int]]:
    """(offset of the predicting position, token) pairs of the scored tokens (``mask``; all when None); a
    token with no position before it is skipped."""
    keep = mask if mask is not None else [True] * len(tokens)
    return [(o, t) for o, t, k in zip(offsets, tokens, keep, strict=True) if o >= 0 and k]


def scored(example) -> Sequence[bool] | None:
    """Which chosen tokens are scored: ``Example.chosen_mask`` (a conversation trained on several assistant
    turns), None when every one is."""
    return getattr(example, "chosen_mask", None)


def _collate_plain(examples, index, label_t, pad_id, padding_side, paired) -> Batch:
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
        mask = scored(examples[i]) if i < len(examples) else None
        response[i, start + n_prompt : start + len(ids)] = True if mask is None else torch.tensor(mask)
    return Batch(input_ids, attention, response, index, paired, label_t)


def _chunk_logps(
    hidden: Tensor,
    targets: Tensor,
    head: nn.Module,
    softcap: float | None,
    on_logits: Callable[[Tensor], None] | None = None,
) -> Tensor:
    logits = _softcapped(head(hidden).float(), softcap)
    if on_logits is not None:  # the reference-logits function reads the same logits (no gradient)
        with torch.no_grad():
            on_logits(logits.detach())
    return logits.log_softmax(-1).gather(-1, targets[:, None]).squeeze(-1)


def _softcapped(z: Tensor, softcap: float | None) -> Tensor:
    return torch.tanh(z / softcap) * softcap if softcap else z


class HeadLogps(torch.autograd.Function):
    """log softmax(softcap(h Wᵀ + b))[y] per row of ``h`` [n, H], chunk by chunk, never keeping a chunk's
    logits: forward saves ``h``, ``W``, ``b``, ``y`` and the [n] log-sum-exps; backward recomputes each
    chunk's logits z and forms ∂logp/∂z = g·(onehot(y) − softmax(z)) in the same buffer (times
    1 − tanh² under a soft-cap), then ∂h = d W and ∂W += dᵀ h (accumulated in fp32).
    ``on_logits(start, end, z)``: called once per chunk in the forward with its fp32 logits (no gradient),
    e.g. a method's reference-logits function."""

    @staticmethod
    def forward(ctx, h, weight, bias, y, softcap, chunk, on_logits):  # type: ignore[override]
        lse = h.new_empty(h.shape[0], dtype=torch.float32)
        out = h.new_empty(h.shape[0], dtype=torch.float32)
        for s in range(0, h.shape[0], chunk):
            e = min(s + chunk, h.shape[0])
            z = _softcapped(F.linear(h[s:e], weight, bias).float(), softcap)
            if on_logits is not None:
                on_logits(s, e, z)
            lse[s:e] = torch.logsumexp(z, -1)
            # log_softmax as in _chunk_logps: a no-grad pass (a reference) equals the policy's bit for bit
            out[s:e] = z.log_softmax(-1).gather(-1, y[s:e, None]).squeeze(-1)
        ctx.save_for_backward(h, weight, bias, y, lse)
        ctx.softcap, ctx.chunk = softcap, chunk
        device = h.device.type  # the backward recomputes the logits in the forward's autocast dtype
        ctx.amp = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return out

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        h, weight, bias, y, lse = ctx.saved_tensors
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.empty_like(h) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
        enabled, amp_dtype = ctx.amp
        # the matmuls in the forward's precision: the weights' dtype, or the autocast dtype
        dt = amp_dtype if enabled else weight.dtype
        w, b = weight.to(dt), None if bias is None else bias.to(dt)
        for s in range(0, h.shape[0], ctx.chunk):
            e = min(s + ctx.chunk, h.shape[0])
            hc = h[s:e].to(dt)
            u = F.linear(hc, w, b).float()
            t = torch.tanh(u / ctx.softcap) if ctx.softcap else None
            d = (t * ctx.softcap) if t is not None else u
            d.sub_(lse[s:e, None]).exp_().mul_(-g[s:e, None])  # −g·softmax
            d.scatter_add_(-1, y[s:e, None], g[s:e, None].to(d.dtype))  # + g·onehot
            if t is not None:
                d.mul_(1 - t * t)
            d = d.to(dt)
            if grad_h is not None:
                grad_h[s:e] = d @ w
            if grad_w is not None:
                if grad_w.dtype == dt:
                    grad_w.addmm_(d.t(), hc)
                else:
                    grad_w.add_(d.t() @ hc)
            if grad_b is not None:
                grad_b.add_(d.sum(0))
        to = weight.dtype
        return (
            grad_h,
            None if grad_w is None else grad_w.to(to),
            None if grad_b is None else grad_b.to(bias.dtype),
            None,
            None,
            None,
            None,
        )


def _fusable(head: nn.Module) -> bool:
    """A plain linear head with plain tensors (not a LoRA wrapper, not a sharded DTensor)."""
    w = getattr(head, "weight", None)
    return type(head) is nn.Linear and type(w) in (nn.Parameter, Tensor)


#: A method's function of the policy's and the reference's logits at response positions (see
#: ``Method.reference_logits``): (z [n, V], z_ref [n, V], targets [n]) -> [n, k], summed per row.
ReferenceLogitsFn = Callable[[Tensor, Tensor, Tensor], Tensor]


class _MixOnce:
    """A chunk's reference-logits values from the policy's logits, computed on the chunk's first pass only
    (a checkpointed chunk runs again in the backward pass; the values are kept from the first)."""

    def __init__(self, ref_hidden: Tensor, targets: Tensor, ref_head: nn.Module, mix: ReferenceLogitsFn,
                 softcap: float | None, into: list[Tensor]):  # fmt: skip
        self.args, self.into, self.done = (ref_hidden, targets, ref_head, mix, softcap), into, False

    def __call__(self, z: Tensor) -> None:
        if self.done:
            return
        self.into.append(_mixed(*self.args, z))
        self.done = True


@torch.no_grad()
def _mixed(ref_hidden: Tensor, targets: Tensor, ref_head: nn.Module, mix: ReferenceLogitsFn,
           softcap: float | None, z: Tensor) -> Tensor:  # fmt: skip
    """A method's reference-logits values of one chunk, from the policy's logits ``z``."""
    return mix(z, _softcapped(ref_head(ref_hidden).float(), softcap), targets)


@dataclass
class RowLogps:
    """Engine output per row: summed log-probs, token counts and, for a method with a reference-logits
    function, its per-row sums ``mixed`` ([rows, k])."""

    sum: Tensor
    n_tokens: Tensor
    mixed: Tensor | None = None


def response_logps(
    hidden: Tensor,
    head: nn.Module,
    input_ids: Tensor | None = None,
    response_mask: Tensor | None = None,
    *,
    targets: Targets | None = None,
    chunk: int = 1024,
    softcap: float | None = None,
    ref_hidden: Tensor | None = None,
    ref_head: nn.Module | None = None,
    mix: ReferenceLogitsFn | None = None,
    no_grad_from: int | None = None,
) -> RowLogps:
    """Summed log π(y_t | y_<t, x) over response tokens, row by row, in chunks of positions.

    Rows ``no_grad_from`` and after (KTO's mismatched completions, whose log-probs only enter a detached
    estimate) get no graph through the LM head: their chunks run once under ``no_grad`` instead of being
    checkpointed and recomputed in the backward pass. Their decoder positions still share the forward.

    ``hidden``: [N, T, H] last hidden states. The response tokens are ``targets`` (any layout), or for
    padded rows ``input_ids`` + ``response_mask`` (position t predicts token t+1). With ``ref_hidden``
    (the reference's [N, T, H] in the same layout, or its [n, H] states already gathered at the response
    positions in ``targets`` order), ``ref_head`` and ``mix`` (a method's reference-logits function),
    also Σ_t mix(z_t, z_ref_t, y_t) per row (fp32, no gradient), e.g. ε-DPO's perturbed log-probs.
    """
    if targets is None:
        assert input_ids is not None and response_mask is not None
        targets = Targets.from_mask(input_ids, response_mask)
    rows, y = targets.owner, targets.token
    h = hidden[targets.src_row, targets.src_col]
    # targets are in row order, so the rows without gradient are the tail of h
    cut = h.shape[0] if no_grad_from is None else int((rows < no_grad_from).sum())
    rh = None
    if ref_hidden is not None:
        if ref_head is None or mix is None:
            raise ValueError("reference logits need ref_hidden, ref_head and mix together")
        rh = ref_hidden if ref_hidden.dim() == 2 else ref_hidden[targets.src_row, targets.src_col]
    pieces: list[Tensor] = []
    mixed: list[Tensor] = []
    grad = torch.is_grad_enabled() and (h.requires_grad or any(p.requires_grad for p in head.parameters()))
    if grad and cut and _fusable(head):
        assert isinstance(head, nn.Linear)
        on = None
        if rh is not None:

            def on(s: int, e: int, z: Tensor) -> None:
                mixed.append(_mixed(rh[s:e], y[s:e], ref_head, mix, softcap, z))  # type: ignore[arg-type]

        pieces.append(HeadLogps.apply(h[:cut], head.weight, head.bias, y[:cut], softcap, chunk, on))
        starts = list(range(cut, h.shape[0], chunk))
    else:
        starts = [*range(0, cut, chunk), *range(cut, h.shape[0], chunk)]
    for s in starts:
        e = min(s + chunk, cut) if s < cut else s + chunk
        once = None if rh is None else _MixOnce(rh[s:e], y[s:e], ref_head, mix, softcap, mixed)  # type: ignore[arg-type]
        if s >= cut:
            with torch.no_grad():
                pieces.append(_chunk_logps(h[s:e].detach(), y[s:e], head, softcap, once))
        elif torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_chunk_logps, h[s:e], y[s:e], head, softcap, once, use_reentrant=False))
        else:
            pieces.append(_chunk_logps(h[s:e], y[s:e], head, softcap, once))
    tok = torch.cat(pieces) if pieces else h.new_zeros(0, dtype=torch.float32)
    n_rows = targets.n_rows
    sums = tok.new_zeros(n_rows).index_add(0, rows, tok)
    counts = torch.zeros(n_rows, dtype=tok.dtype, device=tok.device).index_add(
        0, rows, torch.ones_like(tok, dtype=tok.dtype)
    )
    out = RowLogps(sum=sums, n_tokens=counts.detach())
    if rh is not None:
        if mixed:
            values = torch.cat(mixed).float()
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


#: Per model class and attention implementation: does the segment layout reproduce the plain path?
_SEGMENTS_OK: dict[tuple, bool] = {}


class LogProbModel(nn.Module):
    """Wraps a causal LM so that ``forward`` returns response log-probs (the module DDP/FSDP wrap).

    ``forward(batch)`` takes a :class:`Batch` in either layout (``forward(input_ids, attention_mask,
    response_mask)`` the plain one); ``ref_hidden=..., ref_head=..., mix=...`` add a method's
    reference-logits sums.
    """

    def __init__(self, model: nn.Module, chunk: int = 1024):
        super().__init__()
        self.model = model
        self.chunk = chunk

    def hidden(self, input_ids: Tensor | Batch, attention_mask: Tensor | None = None) -> Tensor:
        decoder, _, _ = decoder_and_head(self.model)
        if isinstance(input_ids, Batch):
            batch = input_ids
            if batch.layout is not None:
                if not self.supports_segments():
                    raise TetherError(
                        "this model cannot run a segment layout; collate with LogProbModel.collate"
                    )
                out = decoder(
                    input_ids=batch.input_ids,
                    # a 4-D placeholder: the model builds no [L, L] mask; segment attention ignores it
                    attention_mask=batch.input_ids.new_ones(1, 1, 1, 1, dtype=torch.bool),
                    position_ids=batch.position_ids,
                    use_cache=False,
                    tether_layout=batch.layout,
                )
                return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
            input_ids, attention_mask = batch.input_ids, batch.attention_mask
        assert attention_mask is not None
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
        input_ids: Tensor | Batch,
        attention_mask: Tensor | None = None,
        response_mask: Tensor | None = None,
        ref_hidden: Tensor | None = None,
        ref_head: nn.Module | None = None,
        mix: ReferenceLogitsFn | None = None,
    ) -> RowLogps:
        if isinstance(input_ids, Batch):
            batch = input_ids
        else:
            assert attention_mask is not None and response_mask is not None
            batch = Batch(input_ids, attention_mask, response_mask, input_ids.new_zeros(0), False)
        hidden = self.hidden(batch)
        return self.from_hidden(hidden, batch, ref_hidden=ref_hidden, ref_head=ref_head, mix=mix)

    @staticmethod
    def _no_grad_from(batch: Batch) -> int | None:
        return batch.n_examples if batch.mismatched else None

    def from_hidden(self, hidden: Tensor, batch: Batch | Tensor, response_mask: Tensor | None = None, **kw):
        """Response log-probs from already computed hidden states (see :func:`response_logps`)."""
        _, head, softcap = decoder_and_head(self.model)
        if isinstance(batch, Batch):
            kw["targets"] = batch.targets
            kw.setdefault("no_grad_from", self._no_grad_from(batch))
        else:
            kw.update(input_ids=batch, response_mask=response_mask)
        return response_logps(hidden, head, chunk=self.chunk, softcap=softcap, **kw)

    def adapter_disabled(self) -> contextlib.AbstractContextManager:
        """The base model without its LoRA adapter (the ``adapter`` reference mode)."""
        disable = getattr(self.model, "disable_adapter", None)
        if disable is None:
            raise TetherError("reference.mode 'adapter' needs a LoRA model")
        return disable()

    def supports_segments(self) -> bool:
        """Whether this model runs the segment layout exactly (checked once per architecture and attention
        implementation on a small probe batch against the plain path); prints one line when it does not."""
        base = _base(self.model)
        routed = segments.install(base)
        key = (
            type(base).__name__,
            segments.inner_implementation(base),
            str(next(base.parameters()).dtype),
            routed,
        )
        if key not in _SEGMENTS_OK:
            _SEGMENTS_OK[key] = routed  # provisional, while the probe itself runs the layout
            _SEGMENTS_OK[key] = self._probe(base, routed)
        return _SEGMENTS_OK[key] and routed

    def _probe(self, base: nn.Module, routed: bool) -> bool:
        why = ""
        if not routed:
            why = "its attention implementation cannot be routed"
        else:
            try:
                err = self._probe_error()
                dtype = next(base.parameters()).dtype
                tol = 1e-5 if dtype == torch.float32 else 3e-2
                if not err <= tol:
                    why = f"the probe differs from the plain path by {err:.2g}"
            except Exception as e:  # any architecture-specific failure means: use the plain path
                why = f"{type(e).__name__}: {e}"
        if why:
            impl = segments.inner_implementation(base)
            print(
                f"note: {type(base).__name__} ({impl}): no shared prompts or packing, padded rows instead ({why})"
            )
        return not why

    @torch.no_grad()
    def _probe_error(self) -> float:
        from types import SimpleNamespace as Ex

        vocab = self.head.weight.shape[0] if hasattr(self.head, "weight") else 8
        ids = [(3 + 7 * i) % max(vocab - 3, 1) + 3 for i in range(40)]
        ex = [
            Ex(prompt_ids=ids[:3], chosen_ids=ids[3:5], rejected_ids=ids[5:9]),
            Ex(prompt_ids=ids[9:14], chosen_ids=ids[14:20], rejected_ids=ids[20:21]),
        ]
        device = next(self.model.parameters()).device
        was = self.model.training
        self.model.eval()
        try:
            plain = self(collate(ex, [0, 1], 0).to(device)).sum
            packed = self(collate(ex, [0, 1], 0, share_prompt=True, packing=True).to(device)).sum
        finally:
            self.model.train(was)
        return float((plain - packed).abs().max() / plain.abs().max().clamp(min=1.0))  # relative

    def collate(
        self,
        examples: Sequence,
        indices: Sequence[int],
        pad_id: int,
        *,
        share_prompt: bool = True,
        packing: bool = True,
        device: torch.device | str | None = None,
    ) -> Batch:
        """:func:`collate` in the segment layout when asked for and this model supports it, else plain."""
        if (share_prompt or packing) and not self.supports_segments():
            share_prompt = packing = False
        batch = collate(examples, indices, pad_id, share_prompt=share_prompt, packing=packing)
        return batch if device is None else batch.to(device)


def loss_inputs(
    rows: RowLogps,
    batch: Batch,
    ref_sum: Tensor | None = None,
    ref_origin: Tensor | None = None,
) -> LossInputs:
    """Split engine rows into the loss contract (chosen rows first, then rejected for pairs, or the
    mismatched completions of unpaired rows: ``kl``/``ref_kl``); ``ref_origin``: [B] the original
    reference's summed log-probs of the chosen rows (a live reference)."""
    b = batch.n_examples
    two = batch.paired and not batch.mismatched

    def seq(sl: slice) -> SequenceLogps:
        return SequenceLogps(sum=rows.sum[sl], n_tokens=rows.n_tokens[sl])

    def pert(sl: slice) -> Perturbed | None:
        if rows.mixed is None or rows.mixed.shape[1] != 2:
            return None
        return Perturbed(plus=rows.mixed[sl, 0], minus=rows.mixed[sl, 1])

    chosen, rejected = slice(0, b), slice(b, 2 * b)
    return LossInputs(
        chosen=seq(chosen),
        rejected=seq(rejected) if two else None,
        ref_chosen=None if ref_sum is None else ref_sum[chosen],
        ref_rejected=None if ref_sum is None or not two else ref_sum[rejected],
        label=batch.labels,
        chosen_perturbed=pert(chosen),
        rejected_perturbed=pert(rejected) if two else None,
        kl=seq(rejected) if batch.mismatched else None,
        ref_kl=None if ref_sum is None or not batch.mismatched else ref_sum[rejected],
        ref_origin_chosen=ref_origin,
    )
