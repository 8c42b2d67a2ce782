"""The one registry of ``tether eval``'s metric groups: what each measures, the data kinds it supports
and where it is computed (imports no torch, so the CLI can list them cheaply).

A metric group is its compute module (a function ``compute(inputs) -> GroupResult``, see
:mod:`tether.evaluation.context`) and its entry in :data:`METRIC_GROUPS`; ``--metrics``, the error
messages, ``auto``'s choice per data kind and the evaluation itself read the registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tether.data.kinds import describe
from tether.errors import TetherError, closest


@dataclass(frozen=True)
class MetricGroup:
    """One metric group of ``tether eval``.

    ``kinds``: the data kinds it supports; ``needs``: what data it needs, for the error message;
    ``generates``: it generates text (off under ``--no-generate``, and run on the ``--max-samples``
    prompts only when there are some); ``compute``: ``"module:function"`` (imported when it runs) or the
    function itself; ``slot``: where its numbers go in ``eval.json``'s ``metrics`` (lower first; the
    groups are computed in this order); ``head``: the model it evaluates, ``lm`` (a causal LM) or
    ``score`` (a reward model's one-output head)."""

    name: str
    kinds: tuple[str, ...]
    needs: str
    compute: str | Callable[..., Any]
    slot: int
    generates: bool = False
    head: str = "lm"

    def function(self) -> Callable[..., Any]:
        if callable(self.compute):
            return self.compute
        module, _, name = self.compute.partition(":")
        return getattr(importlib.import_module(module), name)


_C = "tether.evaluation.compute"

METRIC_GROUPS: dict[str, MetricGroup] = {
    g.name: g
    for g in (
        MetricGroup(
            "pairwise", ("pairs",), "preference pairs (prompt/chosen/rejected)", f"{_C}.pairwise:compute", 20
        ),
        MetricGroup(
            "deviation",
            ("pairs", "sft", "unpaired"),
            "pairs or SFT rows (a chosen or completion answer)",
            f"{_C}.deviation:compute",
            10,
        ),
        MetricGroup(
            "generation",
            ("pairs", "sft", "unpaired", "mc"),
            "rows with a reference answer (chosen, completion or answer)",
            f"{_C}.generation:compute",
            40,
            generates=True,
        ),
        MetricGroup("kl", ("pairs", "sft", "unpaired", "mc"), "", f"{_C}.kl:compute", 50, generates=True),
        MetricGroup(
            "mc", ("mc",), "multiple-choice rows (prompt, options and label)", f"{_C}.mc:compute", 30
        ),
        MetricGroup(
            "reward",
            ("pairs",),
            "preference pairs (prompt/chosen/rejected)",
            f"{_C}.reward:compute",
            25,
            head="score",
        ),
    )
}
"""What ``--metrics`` may name, in the order they are listed; ``auto`` (the default) is every group the
data kind supports: those that score the data first, then those that generate, each in this order."""


def supported(kind: str, head: str = "lm") -> list[str]:
    """The groups ``auto`` picks for a data kind and a model head (with generation on)."""
    mine = [g for g in METRIC_GROUPS.values() if kind in g.kinds and g.head == head]
    return [g.name for g in mine if not g.generates] + [g.name for g in mine if g.generates]


def compute_order(groups: Sequence[str]) -> list[MetricGroup]:
    """The groups to compute, in the order their numbers go in ``eval.json``."""
    return sorted((METRIC_GROUPS[g] for g in groups), key=lambda g: g.slot)


def select_metrics(
    requested: str | Sequence[str], kind: str, data: str, generate: bool, head: str = "lm"
) -> list[str]:
    names = [m.strip() for m in requested.split(",")] if isinstance(requested, str) else list(requested)
    names = [m for m in names if m]
    if not names or names == ["auto"]:
        return [m for m in supported(kind, head) if generate or not METRIC_GROUPS[m].generates]
    for m in names:
        if m not in METRIC_GROUPS:
            raise TetherError(
                f"--metrics: unknown metric group '{m}'{closest(m, METRIC_GROUPS)}; "
                f"valid: auto, {', '.join(METRIC_GROUPS)}"
            )
        if kind not in METRIC_GROUPS[m].kinds:
            raise TetherError(
                f"--metrics {m}: needs {METRIC_GROUPS[m].needs}, but {data} holds {describe(kind)}"
            )
        if METRIC_GROUPS[m].head != head:
            what = {"lm": "a causal LM", "score": "a reward model (score head)"}
            raise TetherError(
                f"--metrics {m}: evaluates {what[METRIC_GROUPS[m].head]}, but the model is {what[head]}"
            )
        if not generate and METRIC_GROUPS[m].generates:
            raise TetherError(f"--metrics {m}: it generates text, which --no-generate turns off")
    return list(dict.fromkeys(names))


PERFORMANCE = (
    "win_rate/chosen",
    "generation/success",
    "win_rate",
    "pairwise/accuracy",
    "mc/accuracy",
    "reward/accuracy",
)
"""What a sweep's frontier and a run's trajectory call performance, in order of preference: the judge's (or
the task checker's) win rate against the held-out chosen answers (the ε-DPO paper's protocol), task
success, the win rate against the reference, held-out pairwise accuracy, multiple-choice accuracy, a
reward model's held-out pairwise accuracy."""


def performance(metrics: dict[str, Any]) -> tuple[str, float] | None:
    """(key, value) of the first :data:`PERFORMANCE` metric present in ``metrics``."""
    for k in PERFORMANCE:
        v = metrics.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return k, float(v)
    return None
