"""The data of ``tether eval``: the rows read and checked, the metric groups chosen for their kind (every
problem raised before a weight loads), and the rows as engine examples and distinct prompts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tether.data as data_mod
from tether.data import kinds
from tether.errors import DataError, Problem, TetherError
from tether.evaluation.context import Prompt
from tether.evaluation.groups import select_metrics


def read_data(
    data: str, metrics: str | Sequence[str], generate_text: bool, head: str = "lm"
) -> tuple[list[data_mod.Row], str, list[str]]:
    """The rows, their kind and the metric groups to compute for a model with ``head`` (every problem
    raised before a weight loads)."""
    if not str(data).startswith("hf:") and not Path(data).exists():
        raise DataError([Problem(str(data), None, None, "file not found")])
    rows = data_mod.read_rows(str(data))
    kind = kinds.detect_kind(rows)
    if kind == "mc":
        kinds.check_mc(rows)
    groups = select_metrics(metrics, kind, str(data), generate_text, head)
    if not groups and head == "score":
        raise TetherError(
            f"{data}: a reward model is evaluated on preference pairs, but the file holds {kinds.describe(kind)}"
        )
    if "generation" in groups and kind == "mc" and not any("answer" in r.data for r in rows):
        if metrics not in ("auto", "", None):
            raise TetherError(
                f"--metrics generation: {data} has no 'answer' field to check generations against"
            )
        groups.remove("generation")
    return rows, kind, groups


def examples_and_prompts(
    rows: list[data_mod.Row], kind: str, tokenize: Any
) -> tuple[list[data_mod.Example], list[Prompt]]:
    """Engine examples (one per MC option) and the distinct prompts with their reference answer text."""
    if kind == "mc":
        examples = tokenize(kinds.option_rows(rows), "sft")
        prompts, pos = [], 0
        for r in rows:
            ref_text = str(r.data.get("answer", r.data["options"][r.data["label"]]))
            prompts.append(Prompt(examples[pos].prompt_ids, r, ref_text))
            pos += len(r.data["options"])
        return examples, prompts
    examples = tokenize(rows, kind)
    by_line = {(r.file, r.line): r for r in rows}
    seen: set[tuple[int, ...]] = set()
    prompts = []
    for e in examples:
        if tuple(e.prompt_ids) in seen:
            continue
        seen.add(tuple(e.prompt_ids))
        row = by_line[(e.file, e.line)]
        answer = row.data.get(kinds.KINDS[kind].answer_field or "")
        if answer is None and "messages" in row.data:
            answer = row.data["messages"]
        prompts.append(
            Prompt(e.prompt_ids, row, kinds.answer_text(answer) or str(row.data.get("answer", "")))
        )
    return examples, prompts
