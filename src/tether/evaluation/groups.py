"""The metric groups of ``tether eval`` and which data kinds support them (imports no torch, so the CLI
can list them cheaply)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tether.data.kinds import describe
from tether.errors import TetherError, closest

METRIC_GROUPS = ("pairwise", "deviation", "generation", "kl", "mc")
"""What ``--metrics`` may name; ``auto`` (the default) is every group the data kind supports."""

SUPPORTED: dict[str, tuple[str, ...]] = {
    "pairs": ("pairwise", "deviation", "generation", "kl"),
    "sft": ("deviation", "generation", "kl"),
    "unpaired": ("deviation", "generation", "kl"),
    "mc": ("mc", "generation", "kl"),
}
NEEDS = {
    "pairwise": "preference pairs (prompt/chosen/rejected)",
    "deviation": "pairs or SFT rows (a chosen or completion answer)",
    "mc": "multiple-choice rows (prompt, options and label)",
    "generation": "rows with a reference answer (chosen, completion or answer)",
}


def select_metrics(requested: str | Sequence[str], kind: str, data: str, generate: bool) -> list[str]:
    names = [m.strip() for m in requested.split(",")] if isinstance(requested, str) else list(requested)
    names = [m for m in names if m]
    if not names or names == ["auto"]:
        chosen = [m for m in SUPPORTED[kind] if generate or m not in ("generation", "kl")]
        return chosen
    for m in names:
        if m not in METRIC_GROUPS:
            raise TetherError(
                f"--metrics: unknown metric group '{m}'{closest(m, METRIC_GROUPS)}; "
                f"valid: auto, {', '.join(METRIC_GROUPS)}"
            )
        if m not in SUPPORTED[kind]:
            raise TetherError(f"--metrics {m}: needs {NEEDS[m]}, but {data} holds {describe(kind)}")
        if not generate and m in ("generation", "kl"):
            raise TetherError(f"--metrics {m}: it generates text, which --no-generate turns off")
    return list(dict.fromkeys(names))


PERFORMANCE = ("win_rate/chosen", "generation/success", "win_rate", "pairwise/accuracy", "mc/accuracy")
"""What a sweep's frontier and a run's trajectory call performance, in order of preference: the judge's (or
the task checker's) win rate against the held-out chosen answers (the ε-DPO paper's protocol), task
success, the win rate against the reference, held-out pairwise accuracy, multiple-choice accuracy."""


def performance(metrics: dict[str, Any]) -> tuple[str, float] | None:
    """(key, value) of the first :data:`PERFORMANCE` metric present in ``metrics``."""
    for k in PERFORMANCE:
        v = metrics.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return k, float(v)
    return None
