"""The kinds of data rows tether reads, in one place: their fields, and how a file's kind is told.

=============  ==============================================  ===========================================
kind           fields                                          used by
=============  ==============================================  ===========================================
``sft``        prompt/completion, or messages                  SFT-family methods; eval (deviation, ...)
``pairs``      prompt/chosen/rejected (or implicit prompt)     pairwise methods; eval (pairwise, ...)
``unpaired``   prompt/completion + boolean label               unpaired methods (TRL's unpaired format)
``mc``         prompt/options/label (an option index)          eval only (multiple-choice accuracy)
=============  ==============================================  ===========================================

:func:`detect_kind` tells a file's kind from its rows. The fields of the training kinds are checked by
:mod:`tether.data.check` (multiple-choice rows here, :func:`check_mc`) and tokenized by
:mod:`tether.data.tokenize`; a multiple-choice row is scored as one SFT row per option
(:func:`option_rows`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tether.data.read import Row
from tether.errors import DataError, Problem

Kind = Literal["sft", "pairs", "unpaired"]
"""The kinds a method trains on (``Method.data``); ``mc`` is read by evaluation only."""

TEXT_FIELDS = frozenset({"prompt", "completion", "messages", "chosen", "rejected"})
"""The fields holding a row's texts; the other scalar columns are kept as ``Example.meta``."""


@dataclass(frozen=True)
class KindInfo:
    """A kind of data row: its name, how messages describe it, and the text field of its answer."""

    name: str
    description: str
    answer_field: str | None
    """The field holding the reference answer of a row (for BLEU/ROUGE), if any."""


KINDS: dict[str, KindInfo] = {
    k.name: k
    for k in (
        KindInfo("sft", "SFT rows (prompt/completion or messages)", "completion"),
        KindInfo("pairs", "preference pairs (prompt/chosen/rejected)", "chosen"),
        KindInfo("unpaired", "unpaired rows (prompt/completion/label)", "completion"),
        KindInfo("mc", "multiple-choice rows (prompt/options/label)", None),
    )
}


def describe(kind: str) -> str:
    return KINDS[kind].description


# --------------------------------------------------------------------------------------------------
# Telling the kind of a row and of a file
# --------------------------------------------------------------------------------------------------


def looks_pairs(data: dict[str, Any]) -> bool:
    return "chosen" in data or "rejected" in data


def looks_sft(data: dict[str, Any]) -> bool:
    return "completion" in data or "messages" in data


def looks_unpaired(data: dict[str, Any]) -> bool:
    return "label" in data and "completion" in data and not looks_pairs(data)


def is_mc(row: Row) -> bool:
    d = row.data
    return "options" in d and not ({"chosen", "rejected", "completion", "messages"} & set(d))


def describe_fields(data: dict[str, Any]) -> str:
    """A short name for a row's format, for wrong-kind messages."""
    if looks_pairs(data):
        return "/".join(k for k in ("prompt", "chosen", "rejected") if k in data)
    if "messages" in data:
        return "messages"
    if "completion" in data:
        return "/".join(k for k in ("prompt", "completion") if k in data)
    keys = ", ".join(sorted(map(str, data)))
    return f"only {keys}" if keys else "no fields"


def detect_kind(rows: Sequence[Row]) -> str:
    """``'mc'`` when every row has ``options`` and no response field; else ``'pairs'`` if the rows have
    chosen/rejected, ``'unpaired'`` if they have a completion and a label, ``'sft'`` if they have
    prompt/completion or messages.

    A mixed file goes with the majority (ties go to the format of the first recognisable row); the rows
    of the other format are then reported by :func:`tether.data.tokenize.tokenize_rows`. Raises
    :class:`DataError` when no row has a recognisable format.
    """
    if rows and all(is_mc(r) for r in rows):
        return "mc"
    n_pairs = n_sft = n_unpaired = 0
    first: Kind | None = None
    for row in rows:
        if looks_unpaired(row.data):
            n_unpaired += 1
            first = first or "unpaired"
        elif looks_pairs(row.data):
            n_pairs += 1
            first = first or "pairs"
        elif looks_sft(row.data):
            n_sft += 1
            first = first or "sft"
    if first is None:
        file = rows[0].file if rows else "<data>"
        keys = sorted({str(k) for row in rows for k in row.data})
        found = f"found fields: {', '.join(keys)}" if keys else "no rows"
        raise DataError(
            [
                Problem(
                    file,
                    None,
                    None,
                    "cannot tell the data format: rows need prompt/completion, messages, or "
                    f"prompt/chosen/rejected ({found})",
                )
            ]
        )
    counts: dict[Kind, int] = {"pairs": n_pairs, "sft": n_sft, "unpaired": n_unpaired}
    top = max(counts.values())
    leaders = [k for k, n in counts.items() if n == top]
    return first if first in leaders else leaders[0]


# --------------------------------------------------------------------------------------------------
# Multiple-choice rows (evaluation only)
# --------------------------------------------------------------------------------------------------


def check_mc(rows: Sequence[Row]) -> None:
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


def option_rows(rows: Sequence[Row]) -> list[Row]:
    """One SFT row per option of each multiple-choice row (the option rendered as the whole response)."""
    return [
        Row(r.file, r.line, {"prompt": r.data["prompt"], "completion": o})
        for r in rows
        for o in r.data["options"]
    ]


def answer_text(value: Any) -> str:
    """A response field as plain text (the last message's content for a message list)."""
    if isinstance(value, list) and value and isinstance(value[-1], dict):
        return str(value[-1].get("content", ""))
    return value if isinstance(value, str) else ""
