"""The arguments ``tether`` commands share (evaluation options, report options, argument types) and the
top-level help texts; :mod:`tether.cli` builds its parser from them."""

from __future__ import annotations

import argparse

from tether.evaluation.groups import METRIC_GROUPS


def positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
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
        "--out", default=None, help="JSON output path (default: <run>/eval.json for a run, else eval.json)"
    )
    p.add_argument(
        "--checkpoints",
        default=None,
        metavar="all|N",
        help="evaluate every saved checkpoint of a run (or those at multiples of N steps) and its final "
        "model, one row each (written to <run>/eval_checkpoints.json)",
    )
    add_eval_options(p)


def add_eval_options(p: argparse.ArgumentParser) -> None:
    """The evaluation settings shared by ``tether eval`` and ``tether sweep``."""
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
        type=positive_float,
        default=None,
        help="β of the implicit reward β·(log π − log π_ref) (default: the run's method β, else 0.1)",
    )
    p.add_argument(
        "--max-samples",
        type=positive,
        default=None,
        help="cap on the prompts used for generation metrics and KL (default: all)",
    )
    p.add_argument("--max-new-tokens", type=positive, default=32, help="generation length cap (default 32)")
    p.add_argument(
        "--batch-size", type=positive, default=8, help="rows per forward/generate batch (default 8)"
    )
    p.add_argument(
        "--kl-samples", type=positive, default=1, help="completions sampled per prompt for KL (default 1)"
    )
    p.add_argument(
        "--judge",
        default=None,
        metavar="MODEL",
        help="a reward model (sequence classification, one output; or a run of method reward) scoring the "
        "generations with its own chat template: mean reward and win rates against chosen answers and the reference "
        "(default: the task checker)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=0.0,
        help="0: greedy generations (default); else sampled at this temperature (ε-DPO: 1.0)",
    )
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1: none)")
    p.add_argument(
        "--samples-per-prompt",
        type=positive,
        default=1,
        help="generations per prompt judged (default 1; > 1 needs --temperature > 0)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling and the bootstrap (default 0)")
    p.add_argument(
        "--max-length",
        type=positive,
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


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "runs", nargs="+", help="run directories written by `tether train` (an sDPO run: its root directory)"
    )
    p.add_argument("--out", default="report", help="output directory for the PNG plots and report.md")
    p.add_argument("--title", default=None, help="title of report.md (default: 'tether report')")
    p.add_argument(
        "--smooth",
        type=float,
        default=None,
        metavar="W",
        help="EMA weight in [0, 1) for train curves, drawn over the faint raw ones; 0 draws raw curves only "
        "(default: none up to 30 points, stronger for longer runs)",
    )


DESCRIPTION = (
    "Fine-tune and preference-align causal LMs while keeping them tethered to their reference model."
)
EPILOG = """\
examples:
  tether validate examples/dpo.yaml            check a config and every data row, no weights loaded
  tether train examples/dpo.yaml train.max_steps=10 method.beta=0.2
  tether eval runs/dpo --data data/tasks/pairs.heldout.jsonl
  tether config train                          every train.* key: type, default, range, help
  tether losses -v                             every method with its paper (arXiv id) and defaults

A user's mistake prints one line (file, line and field, or the config key) and exits with code 2; a
diverged run exits with code 3. `tether COMMAND -h` describes a command."""


def add_generation_arguments(p: argparse.ArgumentParser) -> None:
    """What ``tether generate`` and ``tether pairs`` share: the model, the sampling and rendering settings."""
    p.add_argument("model", help="a run directory (its final model) or a model (smollm2, hub id, dir, .gguf)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1: none)")
    p.add_argument("--max-new-tokens", type=positive, default=128, help="generation length cap (default 128)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    p.add_argument("--batch-size", type=positive, default=8, help="prompts per generation batch (default 8)")
    p.add_argument(
        "--chat-template",
        choices=("auto", "always", "never"),
        default=None,
        help="how prompts are rendered (default: the run's data.chat_template, else auto)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
