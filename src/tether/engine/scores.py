"""The score head: one scalar per row from a one-output sequence-classification model (a reward model).

The model side of a method whose declared ``head`` is ``score`` (``method: reward``). Rows are collated
as the log-prob engine's plain layout collates them (:func:`tether.engine.logprobs.collate` with no
segments: prompt+chosen rows, then prompt+rejected rows, right-padded), exactly TRL's
``DataCollatorForPreference`` layout, and each row's score is the model's own output: transformers'
classification head pools the rightmost token that is not the pad token, so the score a run trains is the
score the saved model gives in plain transformers (and as ``tether eval --judge``).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from tether.contract import LossInputs, Scores
from tether.engine.logprobs import Batch, collate


@dataclass
class RowScores:
    """Engine output per row: the head's score ([rows])."""

    score: Tensor


def init_score_head(model: nn.Module, seed: int) -> None:
    """The new score head drawn from ``seed`` alone: N(0, initializer_range²) as transformers initialises
    it, but from a generator of its own, so a run's head depends on its seed and nothing else."""
    head = model.score
    std = float(getattr(model.config.get_text_config(), "initializer_range", 0.02))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        weight = torch.empty(head.weight.shape, dtype=torch.float32).normal_(0.0, std, generator=gen)
        head.weight.copy_(weight.to(head.weight))
        if getattr(head, "bias", None) is not None:
            head.bias.zero_()


@contextlib.contextmanager
def quiet_head_swap(on: bool) -> Iterator[None]:
    """transformers' load report silenced while a causal LM loads as a classifier (its LM head unused, its
    score head new: expected); :func:`say_head_swap` says the rest in one line."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    if on:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def say_head_swap(info: dict[str, Any], progress: bool) -> None:
    """One line for a classifier loaded from a causal LM: which head is new, and any other key the
    checkpoint lacked or had in excess (those are not expected)."""
    missing = [k for k in info.get("missing_keys", []) if not k.startswith("score.")]
    unexpected = [k for k in info.get("unexpected_keys", []) if not k.startswith("lm_head.")]
    if any(k.startswith("score.") for k in info.get("missing_keys", [])):
        _say("a new score head (the causal LM head is not used)", progress)
    if missing or unexpected:
        _say(f"warning: weights missing {missing[:3]}, unexpected {unexpected[:3]}", True)


def _say(line: str, enabled: bool) -> None:
    if enabled and os.environ.get("RANK", "0") == "0":  # one process under accelerate launch
        print(line, file=sys.stderr, flush=True)


class ScoreModel(nn.Module):
    """Wraps a sequence-classification model so that ``forward(batch)`` returns each row's score (the
    module DDP wraps). The model's pad token is set to ``pad_id``, the one rows are padded with, so that its
    head finds each row's last token (and the saved config says so)."""

    def __init__(self, model: nn.Module, pad_id: int):
        super().__init__()
        self.model = model
        model.config.get_text_config().pad_token_id = pad_id
        model.config.pad_token_id = pad_id

    def forward(self, batch: Batch, **_: object) -> RowScores:
        """Scores of the batch's rows (reference-logits arguments of the log-prob engine are ignored: a score
        head has no reference)."""
        if batch.layout is not None:
            raise ValueError("a score head scores padded rows; collate with share_prompt/packing off")
        out = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
        score = out.logits[:, 0]  # the loss in at least fp32 (a bf16 model's scores are cast up)
        return RowScores(score.to(torch.promote_types(score.dtype, torch.float32)))

    def supports_segments(self) -> bool:
        """Never: each row is scored at its own last token, so rows are padded, not packed."""
        return False


def score_inputs(rows: RowScores, batch: Batch, row_values: dict[str, Tensor] | None = None) -> LossInputs:
    """Engine rows into the loss contract: chosen rows first, then rejected."""
    b = batch.n_examples
    return LossInputs(scores=Scores(rows.score[:b], rows.score[b : 2 * b]), row_values=row_values)


def row_values(examples: Sequence, indices: Sequence[int], names: Sequence[str]) -> dict[str, Tensor] | None:
    """The examples' numeric row fields ``names`` (``Example.meta``), [B] each, NaN where a row has none;
    None when there are no names."""
    if not names:
        return None
    return {
        n: torch.tensor([float(examples[i].meta.get(n, math.nan)) for i in indices], dtype=torch.float32)
        for n in names
    }


@torch.no_grad()
def score_table(
    model: nn.Module,
    examples: Sequence,
    *,
    batch_size: int,
    pad_id: int,
    device: torch.device,
    desc: str = "scores",
    progress: bool = True,
) -> Tensor:
    """``[n, 2]``: the scores of each pair's chosen and rejected rows (fp32, on the CPU)."""
    scorer = ScoreModel(model, pad_id)
    out = torch.zeros(len(examples), 2, dtype=torch.float32)
    starts = range(0, len(examples), batch_size)
    for s in tqdm(starts, desc=desc, disable=not progress, dynamic_ncols=True):
        idx = list(range(s, min(s + batch_size, len(examples))))
        rows = scorer(collate([examples[i] for i in idx], idx, pad_id).to(device)).score.float().cpu()
        out[idx, 0], out[idx, 1] = rows[: len(idx)], rows[len(idx) :]
    return out
