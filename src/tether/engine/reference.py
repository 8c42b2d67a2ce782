"""Reference log-probs, three ways: a frozen copy, the policy with its LoRA adapter disabled, or summed
log-probs precomputed once and cached on disk.

A method that needs no reference gets ``None`` here: no copy, no forward.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from tether.engine.logprobs import Batch, LogProbModel, collate

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
    ):
        self.mode = mode
        self.model = model
        self.tables = tables or {}
        self.cache_status = cache_status

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
            return sums, None, None
        assert self.model is not None
        was_training = self.model.training
        self.model.eval()
        try:
            with self._context():
                hidden = self.model.hidden(batch.input_ids, batch.attention_mask)
                rows = self.model.from_hidden(hidden, batch.input_ids, batch.response_mask)
        finally:
            self.model.train(was_training)
        if not want_hidden:
            return rows.sum, None, None
        head = _AdapterDisabledHead(self.model) if self.mode == "adapter" else self.model.head
        return rows.sum, hidden, head


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
) -> Tensor:
    """[n, 2] summed log-probs (chosen, rejected; rejected = 0 for SFT) of ``examples[indices]``
    (all by default); rows not asked for are NaN.

    The rows are split across processes (``i % world == rank``) and summed with ``reduce_sum``.
    """
    n = len(examples)
    wanted = list(range(n)) if indices is None else sorted(set(indices))
    table = torch.zeros(n, 2, dtype=torch.float32, device=device)
    mine = wanted[rank::world]
    was_training = model.training
    model.eval()
    # Longest-first batching wastes the least padding; the values do not depend on the order.
    mine.sort(key=lambda i: -(len(examples[i].prompt_ids) + len(examples[i].chosen_ids)))
    with context or contextlib.nullcontext():
        for s in tqdm(
            range(0, len(mine), batch_size), desc=desc, disable=not progress or rank != 0, leave=False
        ):
            idx = mine[s : s + batch_size]
            batch = collate([examples[i] for i in idx], idx, pad_id).to(device)
            rows = model(batch.input_ids, batch.attention_mask, batch.response_mask)
            b = len(idx)
            table[batch.index, 0] = rows.sum[:b].float()
            if batch.paired:
                table[batch.index, 1] = rows.sum[b:].float()
    model.train(was_training)
    if reduce_sum is not None and world > 1:
        table = reduce_sum(table)
    missing = torch.ones(n, dtype=torch.bool)
    missing[wanted] = False
    table[missing.to(table.device)] = float("nan")
    return table
