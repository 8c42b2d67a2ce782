"""Text generation for evaluation through the engine's decode loop (:mod:`tether.engine.sampling`):
batched by length, left-padded, greedy or sampled from π itself, each token's log-probability kept."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tether.engine.sampling as sampling
from tether.engine.sampling import Draw, eos_ids

__all__ = ["Draw", "decode", "eos_ids", "generate", "pad_id"]


def pad_id(model: Any, tokenizer: Any) -> int:
    """The tokenizer's pad id, else the first EOS id (left padding is masked, its value unused)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids(model, tokenizer)[0]


def generate(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 8,
    num_samples: int = 1,
    temperature: float = 0.0,
    top_p: float = 1.0,
    seed: int = 0,
    desc: str = "generating",
    progress: bool = True,
) -> list[list[Draw]]:
    """``num_samples`` draws per prompt, each cut after its first EOS (which is kept): greedy at
    ``temperature`` 0, else sampled at ``temperature`` with nucleus ``top_p`` and no top-k (1 and 1
    sample π itself), each prompt's generator seeded from ``seed`` and the prompt's index."""
    return sampling.generate(
        model,
        prompts,
        eos=eos_ids(model, tokenizer),
        pad=pad_id(model, tokenizer),
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        samples=num_samples,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        desc=desc,
        progress=progress,
    )


def decode(tokenizer: Any, ids: list[int], eos: list[int]) -> str:
    if ids and ids[-1] in eos:
        ids = ids[:-1]
    return tokenizer.decode(ids, skip_special_tokens=True).strip()
