"""Command-line arguments of ``tether eval`` (kept apart so ``tether --help`` imports no torch)."""

from __future__ import annotations

import argparse

METRIC_GROUPS = ("pairwise", "deviation", "generation", "kl", "mc")
"""What ``--metrics`` may name; ``auto`` (the default) is every group the data kind supports."""


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a run directory (its final model) or a model (smollm2, hub id, dir, .gguf)")
    p.add_argument(
        "--data", required=True, help="held-out data file (pairs, SFT rows or multiple-choice rows)"
    )
    p.add_argument(
        "--reference",
        default=None,
        help="reference model spec (default: a run's starting model; for a plain model, the model itself, "
        "so every reference-relative number is 0 by construction)",
    )
    p.add_argument(
        "--metrics",
        default="auto",
        help=f"comma-separated subset of {','.join(METRIC_GROUPS)} (default auto: all the data supports)",
    )
    p.add_argument(
        "--beta",
        type=_positive_float,
        default=None,
        help="β of the implicit reward β·(log π − log π_ref) (default: the run's method β, else 0.1)",
    )
    p.add_argument(
        "--max-samples",
        type=_positive,
        default=None,
        help="cap on the prompts used for generation metrics and KL (default: all)",
    )
    p.add_argument("--max-new-tokens", type=_positive, default=32, help="generation length cap (default 32)")
    p.add_argument(
        "--batch-size", type=_positive, default=8, help="rows per forward/generate batch (default 8)"
    )
    p.add_argument(
        "--kl-samples", type=_positive, default=1, help="completions sampled per prompt for KL (default 1)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the KL sampling (default 0)")
    p.add_argument(
        "--max-length",
        type=_positive,
        default=None,
        help="token budget per row (default: the run's data.max_length, else 512)",
    )
    p.add_argument(
        "--chat-template",
        choices=("auto", "always", "never"),
        default=None,
        help="how string rows are rendered (default: the run's data.chat_template, else auto)",
    )
    p.add_argument(
        "--out", default=None, help="JSON output path (default: <run>/eval.json for a run, else eval.json)"
    )
    p.add_argument(
        "--lm-eval-tasks",
        default=None,
        help="comma-separated lm-evaluation-harness tasks (e.g. arc_easy); skipped with a note when lm-eval "
        "or its data are unavailable",
    )
    p.add_argument(
        "--no-generate",
        action="store_true",
        help="skip everything that generates (task success, win rate, BLEU/ROUGE, sampled KL): fast",
    )
    p.add_argument(
        "--no-cache",
        action="store_true",
        help="recompute the reference's log-probs and generations instead of reusing them from $TETHER_CACHE",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
