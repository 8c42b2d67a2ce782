"""``mc``: multiple-choice accuracy, the argmax over each row's options of log π(option | prompt), the
option rendered as the whole response."""

from __future__ import annotations

from typing import Any

from tether.evaluation.context import GroupInputs, GroupResult


def compute(inp: GroupInputs) -> GroupResult:
    table, rtable = inp.loaded.both(inp.examples, "options")
    out: list[dict[str, Any]] = []
    for t in (table[:, 0], rtable[:, 0]):
        pos, correct = 0, 0
        for r in inp.rows:
            k = len(r.data["options"])
            correct += int(int(t[pos : pos + k].argmax()) == r.data["label"])
            pos += k
        out.append({"mc/accuracy": correct / len(inp.rows)})
    return GroupResult({**out[0], "mc/n": len(inp.rows)}, out[1])
