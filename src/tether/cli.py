"""``tether`` command line: parse, validate, call one library function. Input errors print one line and
exit with code 2; a diverged run exits with code 3. Never a traceback for the user's mistakes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .errors import DataError, TetherError
from .evaluate_args import add_eval_arguments
from .methods import METHODS, methods_markdown, methods_table
from .report_args import add_report_arguments


def _table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def cmd_losses(args: argparse.Namespace) -> int:
    rows = methods_table()
    if args.markdown:
        print(methods_markdown())
        return 0
    if args.verbose:
        for r in rows:
            print(
                f"{r['method']}: {r['summary']}\n  paper: {r['paper']}, {r['equation']}\n"
                f"  data: {r['data']}  reference: {r['reference']}  defaults: {r['defaults']}"
            )
        return 0
    print(
        _table(
            [
                [
                    r["method"],
                    r["data"],
                    r["reference"],
                    r["defaults"],
                    f"{r['paper'].split(',')[0]}, {r['equation']}",
                ]
                for r in rows
            ],
            ["method", "data", "reference", "defaults", "paper, equation"],
        )
    )
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .config import load_config
    from .run import validate

    cfg = load_config(args.config, args.overrides)
    try:
        report = validate(cfg)
    except DataError as e:
        for problem in e.problems:
            _error(problem)
        if _is_main():
            print(f"{len(e.problems)} problem(s) found", file=sys.stderr)
        return 2
    print(
        f"{args.config}: OK — method {cfg.method.name}, " + ", ".join(f"{k}={v}" for k, v in report.items())
    )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .run import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg)
    if result.run_dir is not None and _is_main():
        print()
        print(_table(result.summary_rows(), ["run summary", str(result.run_dir)]))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """Owned by tether.evaluate (``tether eval``)."""
    from .evaluate import main as eval_main

    return eval_main(args)


def cmd_report(args: argparse.Namespace) -> int:
    """Owned by tether.report (``tether report``)."""
    from .report import main as report_main

    return report_main(args)


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _error(problem: object) -> None:
    """``error: <problem>`` as one line (a key or field from the input may hold a line break), printed by one
    process only under ``accelerate launch``."""
    if _is_main():
        print(f"error: {problem}".replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="fine-tune a model as the config says and write a run directory")
    p.add_argument("config", help="YAML config file")
    p.add_argument(
        "overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-5 method.beta=0.2"
    )
    p.set_defaults(func=cmd_train)
    p = sub.add_parser("validate", help="check the config and every data row without loading model weights")
    p.add_argument("config")
    p.add_argument("overrides", nargs="*")
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("eval", help="evaluate a model or run directory against its reference on a data file")
    add_eval_arguments(p)
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("report", help="plots and a Markdown summary of one or more run directories")
    add_report_arguments(p)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser(
        "losses", help=f"list the methods ({', '.join(METHODS)}) with paper, equation and defaults"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="one block per method with its summary")
    p.add_argument("--markdown", action="store_true", help="the Markdown table used in the README and docs")
    p.set_defaults(func=cmd_losses)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except DataError as e:
        for problem in e.problems:
            _error(problem)
        return 2
    except TetherError as e:
        from .trainer import TrainingDiverged

        _error(e)
        return 3 if isinstance(e, TrainingDiverged) else 2
    except KeyboardInterrupt:
        print("interrupted; resume with train.resume=true", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
