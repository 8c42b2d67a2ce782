"""Command-line arguments of ``tether eval`` (kept apart so ``tether --help`` imports no torch)."""

from __future__ import annotations

import argparse


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a run directory (its final model) or a model (smollm2, hub id, dir, .gguf)")
    p.add_argument("--data", required=True, help="held-out data file (pairs, SFT rows or multiple-choice rows)")
