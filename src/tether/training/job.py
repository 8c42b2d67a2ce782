"""A training job: one run, or sDPO's ordered stages of runs. The entry point of ``tether train`` and
``tether validate`` and of the Python API (``tether.train``, ``tether.validate``)."""

from __future__ import annotations

from typing import Any

from tether.config import Config
from tether.training import run, stages


def validate(cfg: Config) -> dict[str, Any]:
    """``tether validate``: the counts of a fully checked config and data set, and under ``notes`` how rows
    were read (public formats, already chat-formatted prompts) when anything is worth saying. Loads no
    weights and changes nothing on the machine (a GGUF is read for its tokenizer, not converted)."""
    if cfg.stages is not None:
        return stages.prepare_stages(cfg, convert=False)[0].report
    return run.prepare(cfg, convert=False).report


def train(cfg: Config) -> run.RunResult:
    """Train ``cfg``: its sDPO stages one after the other when it has ``stages``, else one run."""
    return stages.train_stages(cfg) if cfg.stages is not None else run.train(cfg)
