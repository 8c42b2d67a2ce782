"""Reference log-probs, three ways: a frozen copy, the policy with its LoRA adapter disabled, or summed
log-probs precomputed once and cached on disk.

A method that needs no reference gets ``None`` here: no copy, no forward.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .logprobs import Batch, LogProbModel, collate

ReferenceOut = tuple[Tensor, Tensor | None, nn.Module | None]


def default_cache_dir() -> Path:
    return Path(os.environ.get("TETHER_CACHE", Path.home() / ".cache" / "tether"))


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


def cache_key(model_fingerprint: str, examples: Sequence, extra: dict) -> str:
    """Hash of everything that changes reference log-probs: weights, token ids (data, template, lengths)."""
    h = hashlib.sha256()
    h.update(model_fingerprint.encode())
    h.update(json.dumps(extra, sort_keys=True).encode())
    for e in examples:
        h.update(json.dumps([e.prompt_ids, e.chosen_ids, e.rejected_ids]).encode())
    return h.hexdigest()


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


def _read_table(path: Path, n: int, key: str) -> Tensor | None:
    """The cached table at ``path``; None when absent, unreadable (e.g. truncated by a kill), of the
    wrong shape or made for another key (the key is stored inside), so that it is recomputed and
    overwritten rather than failing the run or giving another model's log-probs."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # a torn or foreign file: torch raises RuntimeError, EOFError, UnpicklingError...
        return None
    if not isinstance(saved, dict) or saved.get("key") != key:
        return None
    table = saved.get("table")
    ok = isinstance(table, Tensor) and table.shape == (n, 2) and table.dtype.is_floating_point
    return table if ok else None


def load_or_fill(
    path: Path,
    needed: Sequence[int],
    compute: Callable[[list[int]], Tensor],
    *,
    n: int,
    is_main: bool,
    barrier: Callable[[], None],
    key: str | None = None,
) -> tuple[Tensor, str]:
    """The cached [n, 2] table at ``path`` with every ``needed`` row filled in.

    Rows missing from the cache (NaN) are computed with ``compute(rows)`` (all processes) and the merged
    table is written back by the main process, atomically. Status: ``hit`` (nothing computed), ``miss``
    (no cache) or ``partial`` (some rows added). ``key`` (default: the file name's stem) is stored in
    the file and must match on load.
    """
    key = key or path.stem
    table = _read_table(path, n, key)
    status = "miss" if table is None else "hit"
    if table is None:
        table = torch.full((n, 2), float("nan"))
    todo = [i for i in needed if torch.isnan(table[i, 0])]
    if not todo:
        return table, status
    fresh = compute(todo).cpu()
    table[todo] = fresh[todo]
    if is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"key": key, "table": table}, tmp)
        os.replace(tmp, path)
    barrier()
    return table, "miss" if status == "miss" else "partial"
