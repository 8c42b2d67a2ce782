"""Reference log-probs, three ways: a frozen copy, the policy with its LoRA adapter disabled, or summed
log-probs precomputed once and cached on disk. For a method that needs the reference's logits (ε-DPO) the
precomputed reference also holds the reference's final hidden states at every response token and a frozen
copy of its output head: ``head(state)`` are exactly the reference's logits, with no reference forward.

A method that needs no reference gets ``None`` here: no copy, no forward. A method with a live reference
(TR-DPO) gets a frozen copy that :meth:`Reference.mix_from` moves towards the policy, plus the original
reference's log-prob table (``tables``, for how far it has moved).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from tether.engine.logprobs import Batch, LogProbModel, scored
from tether.errors import TetherError

ReferenceOut = tuple[Tensor, Tensor | None, nn.Module | None]


class _AdapterDisabledHead(nn.Module):
    """The LM head evaluated with the adapter disabled (in case LoRA targets the head too)."""

    def __init__(self, owner: LogProbModel):
        super().__init__()
        self._owner = [owner]  # not a submodule: no parameters registered twice

    def forward(self, h: Tensor) -> Tensor:
        owner = self._owner[0]
        with owner.adapter_disabled():
            return owner.head(h)


class Reference:
    """Gives summed reference log-probs per batch row and, for ε-DPO, the reference's hidden states + head."""

    def __init__(
        self,
        mode: str,
        model: LogProbModel | None = None,
        tables: dict[str, Tensor] | None = None,
        cache_status: str | None = None,
        states: dict[str, ResponseStates] | None = None,
        head: nn.Module | None = None,
    ):
        self.mode = mode
        self.model = model
        self.tables = tables or {}
        self.cache_status = cache_status
        self.states = states or {}
        self.head = head

    def origin_chosen(self, batch: Batch, split: str) -> Tensor | None:
        """A live copy's original (step-0) summed log-probs of the batch's chosen rows, if tabled."""
        if self.mode != "copy" or split not in self.tables:
            return None
        if self.tables[split].device != batch.index.device:
            self.tables[split] = self.tables[split].to(batch.index.device)
        return self.tables[split][batch.index, 0]

    def mix_from(self, policy: nn.Module, alpha: float) -> None:
        """``ref ← (1 − α)·ref + α·θ`` with the policy's parameters (a live copy, e.g. TR-DPO); sharded
        (FSDP2) policy and copy are mixed shard by shard."""
        assert self.mode == "copy" and self.model is not None
        mix_parameters(self.model, policy, alpha)

    def supports_segments(self) -> bool:
        """Whether batches in the segment layout can be given to this reference."""
        return self.model is None or self.model.supports_segments()

    def _context(self) -> contextlib.AbstractContextManager:
        if self.mode == "adapter":
            assert self.model is not None
            return self.model.adapter_disabled()
        return contextlib.nullcontext()

    @torch.no_grad()
    def __call__(self, batch: Batch, split: str, want_hidden: bool = False) -> ReferenceOut:
        """(summed log-probs [rows], hidden states or None, head or None) for the batch's rows."""
        if self.mode == "precomputed":
            if self.tables[split].device != batch.index.device:  # move once, not every step
                self.tables[split] = self.tables[split].to(batch.index.device)
            table = self.tables[split][batch.index]  # [B, 2]: chosen, rejected
            sums = torch.cat([table[:, 0], table[:, 1]]) if batch.paired else table[:, 0]
            if not want_hidden:
                return sums, None, None
            if split not in self.states or self.head is None:
                raise TetherError("this precomputed reference holds no hidden states (reference logits)")
            return sums, self.states[split].gather(batch), self.head
        assert self.model is not None
        was_training = self.model.training
        self.model.eval()
        try:
            with self._context():
                hidden = self.model.hidden(batch)
                rows = self.model.from_hidden(hidden, batch)
        finally:
            self.model.train(was_training)
        if not want_hidden:
            return rows.sum, None, None
        head = _AdapterDisabledHead(self.model) if self.mode == "adapter" else self.model.head
        return rows.sum, hidden, head


@torch.no_grad()
def mix_parameters(target: nn.Module, source: nn.Module, alpha: float) -> None:
    """``target ← (1 − α)·target + α·source`` for every parameter (buffers untouched; a tied parameter
    once), computed in fp32 and cast back to the target's dtype. α = 1 copies, α = 0 changes nothing.

    TRL's ``SyncRefModelCallback._sync_target_model`` does ``target.mul_(1 − α).add_(source, alpha=α)`` in the
    parameters' own dtype (bf16 rounds twice there); on fp32 weights the two agree (tested to 1e-6). The
    modules must have the same parameter names and shapes (a frozen copy of the source's starting model).
    Modules sharded with FSDP2 the same way (``train.sharding: fsdp``) are mixed shard by shard: each process
    mixes its own shards, nothing is gathered.
    """
    from torch.distributed.tensor import DTensor

    fsdp = _fsdp_module()
    for module in (target, source):  # FSDP2 may hold gathered parameters after a forward: back to shards
        for m in module.modules():
            if isinstance(m, fsdp):
                m.reshard()
    src = dict(source.named_parameters())
    for name, t in target.named_parameters():
        s = src.get(name)
        if s is None or s.shape != t.shape or isinstance(s, DTensor) != isinstance(t, DTensor):
            raise TetherError(
                f"reference update: the policy has no parameter {name} of shape {tuple(t.shape)}"
                + (", sharded as the reference is" if s is not None and s.shape == t.shape else "")
            )
        if isinstance(t, DTensor):
            if s.placements != t.placements:
                raise TetherError(f"reference update: {name} is sharded differently in policy and reference")
            t, s = t.to_local(), s.to_local()
        mixed = t.float().mul_(1.0 - alpha).add_(s.detach().to(t.device, torch.float32), alpha=alpha)
        t.copy_(mixed.to(t.dtype))


def _fsdp_module() -> tuple[type, ...]:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # torch < 2.6: nothing is sharded with FSDP2
        return ()
    return (FSDPModule,)


def frozen_copy(model: nn.Module, chunk: int) -> LogProbModel:
    """A frozen, eval-mode deep copy (the ``copy`` mode)."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    ref.eval()
    return LogProbModel(ref, chunk=chunk)


@torch.no_grad()
def compute_table(
    model: LogProbModel,
    examples: Sequence,
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    indices: Sequence[int] | None = None,
    rank: int = 0,
    world: int = 1,
    reduce_sum: Callable[[Tensor], Tensor] | None = None,
    context: contextlib.AbstractContextManager | None = None,
    desc: str = "reference log-probs",
    progress: bool = True,
    share_prompt: bool = True,
    packing: bool = True,
) -> Tensor:
    """[n, 2] summed log-probs (chosen, rejected; rejected = 0 for SFT) of ``examples[indices]``
    (all by default); rows not asked for are NaN.

    The rows are split across processes (``i % world == rank``) and summed with ``reduce_sum``.
    """
    n = len(examples)
    wanted = list(range(n)) if indices is None else sorted(set(indices))
    table = torch.zeros(n, 2, dtype=torch.float32, device=device)
    for batch, rows, _ in _passes(
        model,
        examples,
        wanted,
        batch_size,
        pad_id,
        device,
        rank,
        world,
        context,
        desc,
        progress,
        share_prompt,
        packing,
    ):
        b = batch.n_examples
        table[batch.index, 0] = rows.sum[:b].float()
        if batch.paired:
            table[batch.index, 1] = rows.sum[b:].float()
    if reduce_sum is not None and world > 1:
        table = reduce_sum(table)
    missing = torch.ones(n, dtype=torch.bool)
    missing[wanted] = False
    table[missing.to(table.device)] = float("nan")
    return table


def _passes(
    model,
    examples,
    wanted,
    batch_size,
    pad_id,
    device,
    rank,
    world,
    context,
    desc,
    progress,
    share,
    pack,
    want_hidden: bool = False,
):
    """(batch, rows, hidden gathered at the response tokens or None) for this process's share of
    ``wanted``, in no-grad eval mode."""
    mine = wanted[rank::world]
    was_training = model.training
    model.eval()
    # Longest-first batching wastes the least padding; the values do not depend on the order.
    mine.sort(key=lambda i: -(len(examples[i].prompt_ids) + len(examples[i].chosen_ids)))
    try:
        with context or contextlib.nullcontext():
            for s in tqdm(
                range(0, len(mine), batch_size), desc=desc, disable=not progress or rank != 0, leave=False
            ):
                idx = mine[s : s + batch_size]
                batch = model.collate(
                    [examples[i] for i in idx], idx, pad_id, share_prompt=share, packing=pack, device=device
                )
                hidden = model.hidden(batch)
                rows = model.from_hidden(hidden, batch)
                t = batch.targets
                yield batch, rows, hidden[t.src_row, t.src_col] if want_hidden else None
    finally:
        model.train(was_training)


def response_counts(examples: Sequence) -> Tensor:
    """[n, 2] number of predicted response tokens per example (chosen, rejected)."""

    def count(e, ids, mask=None) -> int:
        if ids is None:
            return 0
        mask = mask if mask is not None else [True] * len(ids)
        return sum(mask) - (len(e.prompt_ids) == 0 and bool(mask[0]))

    return torch.tensor([[count(e, e.chosen_ids, scored(e)), count(e, e.rejected_ids)] for e in examples])


class ResponseStates:
    """The reference's final hidden states at every response token of a split: ``states`` [tokens, H],
    example ``j``'s chosen tokens then its rejected tokens from ``offsets[j]``; ``counts`` [n, 2]."""

    def __init__(self, states: Tensor, counts: Tensor):
        self.states = states
        self.counts = counts
        self.offsets = torch.cumsum(counts.sum(1), 0) - counts.sum(1)

    @staticmethod
    def nbytes(counts: Tensor, width: int, dtype: torch.dtype) -> int:
        return int(counts.sum()) * width * torch.finfo(dtype).bits // 8

    def rows(self, index: Tensor, paired: bool) -> Tensor:
        """Positions in ``states`` of the batch's response tokens in the engine's row order."""
        index = index.cpu()
        starts = [(self.offsets[j], self.counts[j, 0]) for j in index.tolist()]
        if paired:
            starts += [(self.offsets[j] + self.counts[j, 0], self.counts[j, 1]) for j in index.tolist()]
        parts = [torch.arange(int(o), int(o) + int(c)) for o, c in starts]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def gather(self, batch: Batch) -> Tensor:
        return self.states[self.rows(batch.index, batch.paired)].to(batch.input_ids.device)


@torch.no_grad()
def compute_states(
    model: LogProbModel,
    examples: Sequence,
    states: ResponseStates,
    indices: Sequence[int],
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    reduce_sum: Callable[[Tensor], Tensor] | None = None,
    progress: bool = True,
    share_prompt: bool = True,
    packing: bool = True,
) -> ResponseStates:
    """Fill ``states`` (zeros where not computed) for ``examples[indices]`` with ``model``'s final hidden
    states at their response tokens; split across processes and summed with ``reduce_sum``."""
    fresh = torch.zeros_like(states.states)
    for batch, _, hidden in _passes(
        model,
        examples,
        sorted(set(indices)),
        batch_size,
        pad_id,
        device,
        rank,
        world,
        None,
        "reference hidden states",
        progress,
        share_prompt,
        packing,
        want_hidden=True,
    ):
        fresh[states.rows(batch.index, batch.paired)] = hidden.to(fresh.dtype).cpu()
    if reduce_sum is not None and world > 1:
        fresh = reduce_sum(fresh.to(device)).cpu()
    out = states.states.clone()
    done = states.rows(torch.tensor(sorted(set(indices)), dtype=torch.long), paired=True)
    out[done] = fresh[done]
    return ResponseStates(out, states.counts)
