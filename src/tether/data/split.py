"""Reshaping tokenized examples: pairs split into unpaired rows, a seeded shuffle, mismatched completions
(KTO's KL estimate), and the train/eval split with no prompt in both. Deterministic: a seed or the given
order decides everything."""

from __future__ import annotations

import random
from collections.abc import Sequence

from tether.data.tokenize import Example
from tether.errors import ConfigError

__all__ = ["shuffled", "split_pairs", "split_train_eval", "with_mismatched_completions"]


def split_pairs(examples: Sequence[Example]) -> list[Example]:
    """Each pair as two unpaired examples with its prompt: the chosen answer desirable (``label`` True),
    the rejected one undesirable (False), in that order. Both keep the pair's file, line and meta."""
    out = []
    for e in examples:
        if e.rejected_ids is None:
            raise ValueError("split_pairs: an example without a rejected answer")
        for ids, label in ((e.chosen_ids, True), (e.rejected_ids, False)):
            out.append(Example(list(e.prompt_ids), list(ids), None, e.file, e.line, dict(e.meta), label))
    return out


def shuffled(examples: Sequence[Example], seed: int) -> list[Example]:
    """``examples`` in the order of ``random.Random(seed).shuffle`` (the same order for the same seed)."""
    out = list(examples)
    random.Random(seed).shuffle(out)
    return out


def with_mismatched_completions(examples: Sequence[Example], max_length: int) -> list[Example]:
    """Each unpaired example with a mismatched completion in ``rejected_ids`` (KTO's KL estimate).

    Example ``i``'s is the completion of the next example in the given order (cyclically) whose prompt
    differs from ``i``'s; when every example has the same prompt, simply the next one's (a single example:
    its own). It is cut at its end to fit ``max_length`` after ``i``'s prompt (``i``'s prompt always
    leaves room for one response token), so it never cuts the prompt. Deterministic: the order is the
    caller's (the run's seeded shuffle), nothing is random here.
    """
    n = len(examples)
    keys = [tuple(e.prompt_ids) for e in examples]
    partner: list[int | None] = [None] * n  # the next example with another prompt, found backwards in O(n)
    for t in range(2 * n - 1, -1, -1):
        i, j = t % n, (t + 1) % n
        partner[i] = j if keys[j] != keys[i] else partner[j]
    out = []
    for i, e in enumerate(examples):
        j = partner[i]
        kl = list(examples[(i + 1) % n if j is None else j].chosen_ids)[: max_length - len(e.prompt_ids)]
        out.append(Example(list(e.prompt_ids), list(e.chosen_ids), kl, e.file, e.line, dict(e.meta), e.label))
    return out


def split_train_eval(
    examples: list[Example], eval_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Split ``examples`` into (train, eval) so that no prompt appears in both.

    Examples are grouped by ``prompt_ids``; the groups are shuffled with ``random.Random(seed)`` and
    taken into eval greedily while that brings the eval size closer to ``round(eval_fraction * n)``
    (at least 1 when ``eval_fraction > 0``), never taking the last group (train is never empty). Both
    splits keep the input order. Eval may come back empty, e.g. when every example shares one prompt;
    ``eval_fraction == 0`` always gives ``(examples, [])``.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise ConfigError(f"eval_fraction must be in [0, 1), got {eval_fraction!r}")
    if eval_fraction == 0.0 or not examples:
        return list(examples), []
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, example in enumerate(examples):
        groups.setdefault(tuple(example.prompt_ids), []).append(index)
    order = list(groups.values())
    random.Random(seed).shuffle(order)
    target = max(1, round(eval_fraction * len(examples)))
    eval_indices: set[int] = set()
    n_eval = 0
    for group in order:
        if n_eval >= target:
            break
        new = n_eval + len(group)
        if new < len(examples) and abs(target - new) < abs(target - n_eval):
            eval_indices.update(group)
            n_eval = new
    train = [ex for i, ex in enumerate(examples) if i not in eval_indices]
    evals = [ex for i, ex in enumerate(examples) if i in eval_indices]
    return train, evals
