"""Building the reference a run trains against, from plain values (:class:`ReferenceSpec`; the training
run fills one from its config): none, the adapter-disabled policy, a frozen copy, or precomputed log-prob
tables (and, for reference logits, hidden states at the response tokens) read from and added to the
on-disk cache (:mod:`tether.engine.cache`, which owns the keys, so that ``tether eval`` finds the tables
training computed).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import tether.engine.models as models
from tether.engine.cache import (
    default_cache_dir,
    load_or_fill,
    load_or_fill_states,
    reference_states_path,
    reference_table_path,
)
from tether.engine.logprobs import LogProbModel
from tether.engine.reference import (
    Reference,
    ResponseStates,
    compute_states,
    compute_table,
    frozen_copy,
    response_counts,
)
from tether.errors import TetherError

if TYPE_CHECKING:
    from accelerate import Accelerator


@dataclass(frozen=True)
class ReferenceSpec:
    """How to build a reference, in plain values."""

    mode: str
    """``none``, ``adapter``, ``copy`` or ``precomputed``."""
    policy_dir: Path | str
    """The policy's starting model: the reference unless ``other`` names another one."""
    other: str | None
    """Another reference model (a hub id, directory or GGUF), loaded separately; None: the policy's start."""
    dtype: str
    logprob_chunk: int
    live: bool
    """The reference moves during training (TR-DPO): a frozen copy, plus the original's table."""
    needs_logits: bool
    """The method needs the reference's logits (ε-DPO): precomputed, hidden states at response tokens."""
    cache_dir: Path | None
    """None: :func:`tether.engine.cache.default_cache_dir`."""
    max_cache_gb: float
    batch_size: int
    """Examples per reference pass."""
    pad_id: int
    share_prompt: bool = True
    packing: bool = True
    progress: bool = True

    @property
    def cache_root(self) -> Path:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()


class CacheTooLarge(TetherError):
    """A precomputed reference cache would exceed ``reference.max_cache_gb``."""


def reference_table(
    spec: ReferenceSpec, model: LogProbModel, examples: list, acc: Accelerator, **kw
) -> torch.Tensor:
    """Reference log-prob table of ``examples`` under ``model``, split across the processes."""
    return compute_table(model, examples, **_engine_kw(spec, acc), **kw)


def _engine_kw(spec: ReferenceSpec, acc: Accelerator) -> dict[str, Any]:
    """How the engine runs a reference pass here: batches, layout, and this process's share."""
    return {
        "batch_size": spec.batch_size,
        "pad_id": spec.pad_id,
        "device": acc.device,
        "rank": acc.process_index,
        "world": acc.num_processes,
        "reduce_sum": lambda t: acc.reduce(t, "sum"),
        "progress": spec.progress,
        "share_prompt": spec.share_prompt,
        "packing": spec.packing,
    }


def _states(
    spec: ReferenceSpec,
    model: LogProbModel,
    split: str,
    examples: list,
    needed: Sequence[int] | None,
    fingerprint: str,
    acc: Accelerator,
) -> ResponseStates:
    """The reference's hidden states at the response tokens of ``examples`` (ε-DPO's reference logits),
    cached on disk; the size is printed first and refused above ``reference.max_cache_gb``."""
    counts = response_counts(examples)
    width = model.head.in_features if hasattr(model.head, "in_features") else model.head.weight.shape[1]
    dtype = next(model.parameters()).dtype
    size = ResponseStates.nbytes(counts, width, dtype)
    limit = spec.max_cache_gb
    line = (
        f"reference hidden states ({split}): {int(counts.sum())} response tokens × {width} × "
        f"{torch.finfo(dtype).bits // 8} B = {size / 1e9:.3g} GB (reference.max_cache_gb {limit:g})"
    )
    if acc.is_main_process:
        print(line)
    if size > limit * 1e9:
        raise CacheTooLarge(f"{line}: too large; raise reference.max_cache_gb or use reference.mode copy")

    def compute(states: torch.Tensor, rows: list[int]) -> torch.Tensor:
        return compute_states(
            model,
            examples,
            ResponseStates(states, counts),
            rows,
            **_engine_kw(spec, acc),
        ).states

    path = reference_states_path(
        spec.cache_root, fingerprint, examples, dtype=spec.dtype, device=acc.device.type
    )
    states, _ = load_or_fill_states(
        path,
        needed if needed is not None else range(len(examples)),
        compute,
        n=len(examples),
        shape=(int(counts.sum()), width),
        dtype=dtype,
        is_main=acc.is_main_process,
        barrier=acc.wait_for_everyone,
    )
    return ResponseStates(states, counts)


def build_reference(
    spec: ReferenceSpec,
    policy: LogProbModel,
    train: list,
    eval: list,
    acc: Accelerator,
    needed_train: list[int] | None = None,
) -> Reference | None:
    """The reference for ``spec.mode``, built from the *starting* weights (before any resume).

    ``precomputed`` computes only the training rows the run will use (``needed_train``; all by default)
    and every eval row, and adds them to the on-disk cache, which later runs (and ``tether eval``) reuse.
    """
    mode = spec.mode
    if mode == "none":
        return None
    if mode == "adapter":
        return Reference("adapter", policy)
    ref_model = None
    ref_dir = models.resolve_model_dir(spec.other, progress=spec.progress) if spec.other else spec.policy_dir
    if spec.other is not None:
        ref_model = models.load_model(ref_dir, dtype=spec.dtype, progress=spec.progress)
        ref_model = ref_model.to(acc.device)
    if mode == "copy":
        base = ref_model if ref_model is not None else models.merge_lora(policy.model)
        live = frozen_copy(base, spec.logprob_chunk)
        if not spec.live:
            return Reference("copy", live)
        # a live reference (TR-DPO) also gets the starting reference's table: how far it moves from it
        fingerprint = models.model_fingerprint(ref_dir)
        tables, status = _tables(spec, policy, fingerprint, train, eval, acc, needed_train)
        return Reference("copy", live, tables=tables, cache_status=f"original {status}")
    # precomputed: the policy at step 0 *is* the reference unless another model was named
    source = LogProbModel(ref_model, spec.logprob_chunk) if ref_model is not None else policy
    fingerprint = models.model_fingerprint(ref_dir)
    states: dict[str, ResponseStates] = {}
    head = None
    if spec.needs_logits:  # ε-DPO: hidden states at response tokens + a frozen head
        for split, examples, needed in (("train", train, needed_train), ("eval", eval, None)):
            if examples:
                states[split] = _states(spec, source, split, examples, needed, fingerprint, acc)
        head = copy.deepcopy(source.head).requires_grad_(False)
    tables, status = _tables(spec, source, fingerprint, train, eval, acc, needed_train)
    del ref_model
    return Reference("precomputed", tables=tables, cache_status=status, states=states, head=head)


def _tables(
    spec: ReferenceSpec,
    source: LogProbModel,
    fingerprint: str,
    train: list,
    eval: list,
    acc: Accelerator,
    needed_train: list[int] | None,
) -> tuple[dict[str, torch.Tensor], str]:
    """The reference log-prob table of each split (the training rows in ``needed_train``, all eval rows),
    from the on-disk cache where it has them; and the cache status."""
    tables, statuses = {}, []
    for split, examples, needed in (("train", train, needed_train), ("eval", eval, None)):
        if not examples:
            continue

        def compute(rows: list[int], ex=examples, s=split) -> torch.Tensor:
            return reference_table(spec, source, ex, acc, indices=rows, desc=f"reference log-probs ({s})")

        table, status = load_or_fill(
            reference_table_path(
                spec.cache_root, fingerprint, examples, dtype=spec.dtype, device=acc.device.type
            ),
            needed if needed is not None else range(len(examples)),
            compute,
            n=len(examples),
            is_main=acc.is_main_process,
            barrier=acc.wait_for_everyone,
        )
        tables[split] = table
        statuses.append(f"{split}:{status}")
    return tables, ",".join(statuses)


def gamma_ref(
    spec: ReferenceSpec, reference: Reference | None, policy: LogProbModel, train: list, acc: Accelerator
) -> float | None:
    """sDPO's γ_ref of preference pairs: mean over the training pairs of log π_ref(y_w) − log π_ref(y_l)."""
    if reference is None:
        return None
    table = reference.tables.get("train")
    if table is None:
        ctx = policy.adapter_disabled() if reference.mode == "adapter" else None
        model = reference.model if reference.mode == "copy" else policy
        table = reference_table(spec, model, train, acc, context=ctx, desc="gamma_ref")
    return float((table[:, 0] - table[:, 1]).nanmean())  # over the rows the run computed
