"""Command-line arguments of ``tether report`` (kept apart so ``tether --help`` imports no matplotlib)."""

from __future__ import annotations

import argparse


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
