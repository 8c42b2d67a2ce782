"""The kinds of data rows tether reads, in one place.

=============  ==============================================  ===========================================
kind           fields                                          used by
=============  ==============================================  ===========================================
``sft``        prompt/completion, or messages                  SFT-family methods; eval (deviation, ...)
``pairs``      prompt/chosen/rejected (or implicit prompt)     pairwise methods; eval (pairwise, ...)
``unpaired``   prompt/completion + boolean label               unpaired methods (TRL's unpaired format)
``mc``         prompt/options/label (an option index)          eval only (multiple-choice accuracy)
=============  ==============================================  ===========================================

Training rows are parsed, checked and tokenized by :mod:`tether.data.rows`; multiple-choice rows are
checked here and scored as one SFT example per option.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tether.data import rows as rows_mod
from tether.errors import DataError, Problem


@dataclass(frozen=True)
class Kind:
    """A kind of data row: its name, how messages describe it, and the text field of its answer."""

    name: str
    description: str
    answer_field: str | None
    """The field holding the reference answer of a row (for BLEU/ROUGE), if any."""


KINDS: dict[str, Kind] = {
    k.name: k
    for k in (
        Kind("sft", "SFT rows (prompt/completion or messages)", "completion"),
        Kind("pairs", "preference pairs (prompt/chosen/rejected)", "chosen"),
        Kind("unpaired", "unpaired rows (prompt/completion/label)", "completion"),
        Kind("mc", "multiple-choice rows (prompt/options/label)", None),
    )
}


def describe(kind: str) -> str:
    return KINDS[kind].description


def is_mc(row: rows_mod.Row) -> bool:
    d = row.data
    return "options" in d and not ({"chosen", "rejected", "completion", "messages"} & set(d))


def detect_kind(rows: Sequence[rows_mod.Row]) -> str:
    """``'mc'`` when every row has ``options`` and no response field, else :func:`rows.detect_kind`."""
    if all(is_mc(r) for r in rows):
        return "mc"
    return rows_mod.detect_kind(rows)


def check_mc(rows: Sequence[rows_mod.Row]) -> None:
    """Every problem of multiple-choice rows at once, as a :class:`DataError`."""
    problems = []
    for r in rows:
        d = r.data
        if not isinstance(d.get("prompt"), str) or not d["prompt"].strip():
            problems.append(Problem(r.file, r.line, "prompt", "must be a non-empty string"))
        opts = d.get("options")
        if not isinstance(opts, list) or len(opts) < 2 or not all(isinstance(o, str) and o for o in opts):
            problems.append(
                Problem(r.file, r.line, "options", "must be a list of at least 2 non-empty strings")
            )
            continue
        label = d.get("label")
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(opts):
            problems.append(
                Problem(
                    r.file, r.line, "label", f"must be an option index in [0, {len(opts)}), got {label!r}"
                )
            )
    if problems:
        raise DataError(problems)


def option_rows(rows: Sequence[rows_mod.Row]) -> list[rows_mod.Row]:
    """One SFT row per option of each multiple-choice row (the option rendered as the whole response)."""
    return [
        rows_mod.Row(r.file, r.line, {"prompt": r.data["prompt"], "completion": o})
        for r in rows
        for o in r.data["options"]
    ]


def answer_text(value: Any) -> str:
    """A response field as plain text (the last message's content for a message list)."""
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return str(value[-1].get("content", ""))
    return value if isinstance(value, str) else ""
