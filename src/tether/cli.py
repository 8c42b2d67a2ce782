"""``tether`` command line: parse, validate, call one library function. Input errors print one line and
exit with code 2; a diverged run exits with code 3. Never a traceback for the user's mistakes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tether.cli_options import (
    DESCRIPTION,
    EPILOG,
    add_eval_arguments,
    add_eval_options,
    add_generation_arguments,
    add_report_arguments,
    positive,
)
from tether.errors import ENVIRONMENT_ERRNOS, DataError, TetherError, environment_fault
from tether.methods.registry import METHODS, methods_markdown, methods_table
from tether.rundir import EVAL

if TYPE_CHECKING:
    from tether.eval_result import EvalResult


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """The one aligned text table of the CLI (header, dashes, rows)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool) or isinstance(v, str):
        return str(v)
    if isinstance(v, int):
        return str(v)
    return f"{v:.4f}" if abs(v) < 1000 else f"{v:.1f}"


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


def cmd_config(args: argparse.Namespace) -> int:
    """``tether config [KEY ...] [--markdown]``: every config key with type, default, range and help."""
    from tether.config import config_keys, config_markdown, config_text, hyperparameter_keys

    if args.markdown:
        print(config_markdown())
        return 0
    known = [k.key for k in [*config_keys(), *hyperparameter_keys()]]
    sections = {key.rsplit(".", 1)[0] for key in known}
    for prefix in args.keys:
        p = prefix.rstrip(".")
        if p not in known and p not in sections:
            from tether.errors import closest

            raise TetherError(f"{prefix}: no such config key or section{closest(p, [*sections, *known])}")
    print(config_text(args.keys))
    return 0


def _is_path(text: str) -> bool:
    """Whether ``text`` names an existing file (a name longer than the file system takes does not)."""
    from pathlib import Path

    try:
        return Path(text).exists()
    except OSError:
        return False


def _split_validate_args(items: Sequence[str]) -> tuple[list[str], list[str]]:
    """``CONFIG [CONFIG ...] [KEY=VALUE ...]``: an item with ``=`` that is not an existing file is an
    override (applied to every config)."""

    overrides = [i for i in items if "=" in i and not _is_path(i)]
    return [i for i in items if i not in overrides], overrides


def cmd_validate(args: argparse.Namespace) -> int:
    """``tether validate CONFIG [CONFIG ...] [KEY=VALUE ...]``: each config checked and reported; exit 2
    if any has a problem."""
    configs, overrides = _split_validate_args(args.inputs)
    if not configs:
        raise TetherError("validate: name at least one config file (KEY=VALUE items are overrides)")
    bad = sum(_validate_one(path, overrides, several=len(configs) > 1) for path in configs)
    if len(configs) > 1 and _is_main():
        print(
            f"{len(configs) - bad} of {len(configs)} configs OK" + (f", {bad} with problems" if bad else ""),
            file=sys.stderr if bad else sys.stdout,
        )
    return 2 if bad else 0


def _validate_one(path: str, overrides: list[str], several: bool) -> bool:
    """Validate one config and print its report; True when it has a problem. With ``several`` configs, a
    problem that does not name the config file is prefixed with it."""
    from tether.config import load_config
    from tether.training.job import validate

    def named(problem: object) -> str:
        text = str(problem)
        return text if not several or text.startswith(path) else f"{path}: {text}"

    try:
        cfg = load_config(path, overrides)
        report = validate(cfg)
    except DataError as e:
        for problem in e.problems:
            _error(named(problem))
        if _is_main():
            print(f"{len(e.problems)} problem(s) found", file=sys.stderr)
        return True
    except TetherError as e:
        if not several:
            raise
        _error(named(e))
        return True
    notes = report.pop("notes", [])
    print(f"{path}: OK — method {cfg.method.name}, " + ", ".join(f"{k}={v}" for k, v in report.items()))
    for note in notes:
        print(f"  note: {note}")
    return False


def cmd_train(args: argparse.Namespace) -> int:
    from tether.config import load_config
    from tether.training.job import train

    cfg = load_config(args.config, args.overrides)
    result = train(cfg)
    if result.run_dir is not None and _is_main():
        print()
        print(_table(result.summary_rows(), ["run summary", str(result.run_dir)]))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    """``tether eval``: evaluate, print the table, write the JSON."""
    from pathlib import Path

    from tether.evaluation.evaluate import run_eval
    from tether.evaluation.target import resolve_target
    from tether.rundir import RunDir

    if args.checkpoints is not None:
        return _eval_checkpoints(args)
    target_dir = resolve_target(args.model).run_dir
    out = args.out or (str(target_dir / EVAL) if target_dir is not None else EVAL)
    options = _eval_options(args)
    result = run_eval(args.model, args.data, options)
    RunDir(Path(out).parent).write_eval(result, Path(out))
    _print_eval(result)
    print(f"\nwrote {out}")
    sys.stdout.flush()
    return 0


def _eval_checkpoints(args: argparse.Namespace) -> int:
    """``tether eval RUN --checkpoints all|N``: one column per checkpoint, one row per metric."""
    from tether.evaluation.evaluate import evaluate_checkpoints

    text = args.checkpoints
    every = None
    if text != "all":
        try:
            every = int(text)
        except ValueError:
            every = 0
        if every < 1:
            raise TetherError(f"--checkpoints: expected 'all' or a positive number of steps, got {text!r}")
    result = evaluate_checkpoints(args.model, args.data, _eval_options(args), every=every, out=args.out)
    rows = result["rows"]
    header = ["metric", *(f"step {r['step']}" + (" (final)" if not r["checkpoint"] else "") for r in rows)]
    keys = list(dict.fromkeys(k for r in rows for k in r["metrics"]))
    print(f"run: {args.model}  data: {args.data}  judge: {rows[-1]['judge']}")
    print()
    print(_table([[k, *(_fmt(r["metrics"].get(k)) for r in rows)] for k in keys], header))
    from tether.rundir import RunDir

    print(f"\nwrote {args.out or RunDir(args.model).eval_checkpoints}")
    return 0


def _eval_options(args: argparse.Namespace) -> Any:
    from tether.evaluation.evaluate import EvalOptions

    return EvalOptions(
        reference=args.reference,
        metrics=args.metrics,
        beta=args.beta,
        max_samples=args.max_samples,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        kl_samples=args.kl_samples,
        judge=args.judge,
        temperature=args.temperature,
        top_p=args.top_p,
        samples_per_prompt=args.samples_per_prompt,
        seed=args.seed,
        max_length=args.max_length,
        chat_template=args.chat_template,
        lm_eval_tasks=args.lm_eval_tasks,
        generate_text=not args.no_generate,
        cache=not args.no_cache,
        progress=not args.no_progress,
    )


def _print_eval(result: EvalResult) -> None:
    judged = f"  judge: {result.judge}" if result.n_generation_prompts else ""  # nothing generated: none
    print(
        f"model: {result.model}  reference: {result.reference}"
        f"{' (the model itself)' if result.reference_is_model else ''}{judged}"
    )
    print(
        f"data: {result.data} ({result.kind}, {result.n_rows} rows, "
        f"{result.n_generation_prompts} prompts generated)  time: {result.seconds:.1f} s"
    )
    print()
    m, rm = result.metrics, result.reference_metrics
    print(
        _table(
            [[k, _fmt(v), _fmt(rm[k]) if k in rm else ""] for k, v in m.items()],
            ["metric", "model", "reference"],
        )
    )
    for note in result.notes:
        print(f"note: {note}")


def cmd_sweep(args: argparse.Namespace) -> int:
    """``tether sweep CONFIG --grid key=v1,v2 ...``: train and evaluate every point, table and frontier."""
    from tether.training.sweep import run_sweep

    result = run_sweep(
        args.config,
        args.grid,
        out=args.out,
        overrides=args.overrides,
        data_eval=args.data_eval,
        options=_eval_options(args),
        baseline=args.baseline,
    )
    from tether.training.sweep import rows

    table = rows(result.points, result.performance_key, result.against)
    header = list(dict.fromkeys(k for r in table for k in r))
    print()
    print(_table([[_fmt(r.get(h)) for h in header] for r in table], header))
    print()
    print(f"sweep: {result.path} ({len(result.points)} runs, {result.seconds:.1f} s)")
    print(f"table: {result.table}")
    if result.frontier is not None:
        print(f"plot:  {result.frontier}")
    else:
        print("note: no frontier plot (no performance metric common to every run)")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """``tether compare RUN_A RUN_B ...``: each run against the first, paired on the shared prompts."""
    import json

    from tether.evaluation.compare import COLUMNS, as_rows, compare

    rows = as_rows(compare(args.runs, args.metric, seed=args.seed))
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(
        f"metric: {rows[0]['metric']}  first: {rows[0]['first']}  (95% paired bootstrap, seed {args.seed})\n"
    )
    print(_table([[_fmt(r[k]) for k in COLUMNS] for r in rows], COLUMNS))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """``tether generate RUN_OR_MODEL --prompt TEXT | --file FILE``."""
    import json

    from tether.evaluation.sample import generate_texts, read_prompts

    prompts = list(args.prompt or []) + (read_prompts(args.file) if args.file else [])
    result = generate_texts(
        args.model,
        prompts,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        num_samples=args.num_samples,
        seed=args.seed,
        batch_size=args.batch_size,
        chat_template=args.chat_template,
        progress=not args.no_progress,
    )
    for i, o in enumerate(result["outputs"]):
        print(f"### prompt {i + 1}: {o['prompt']}")
        for k, g in enumerate(o["generations"]):
            print(f"--- {k + 1}: {g}" if len(o["generations"]) > 1 else g)
        print()
    if args.out:
        with open(args.out, "w") as f:
            for o in result["outputs"]:
                f.write(json.dumps(o, ensure_ascii=False) + "\n")
        print(f"wrote {args.out}")
    return 0


def cmd_pairs(args: argparse.Namespace) -> int:
    """``tether pairs MODEL_OR_RUN --prompts FILE --judge JUDGE --samples K --out FILE``."""
    from tether.evaluation.pairs import PairsOptions, build_pairs, meta_path

    options = PairsOptions(
        judge=args.judge,
        samples=args.samples,
        temperature=args.temperature,
        top_p=args.top_p,
        max_new_tokens=args.max_new_tokens,
        seed=args.seed,
        batch_size=args.batch_size,
        min_gap=args.min_gap,
        chat_template=args.chat_template,
        progress=not args.no_progress,
    )
    res = build_pairs(args.model, args.prompts, args.out, options)
    c = res.meta["counts"]
    share = c["dropped"] / c["prompts"] if c["prompts"] else 0.0
    print(
        f"wrote {c['pairs']} pairs to {res.out} and {meta_path(res.out)}; dropped {c['dropped']} of "
        f"{c['prompts']} prompts ({share:.1%}: {c['tied']} all tied, {c['gap']} gap < --min-gap, "
        f"{c['empty']} with fewer than 2 non-empty samples)"
        + (f"; resumed after {res.resumed_batches} finished batches" if res.resumed_batches else "")
    )
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``tether report RUN [RUN ...] --out DIR``."""
    from tether.evaluation.report import LAST_BATCH, summary_row, write_report_runs

    smooth = args.smooth
    if smooth is not None and not 0.0 <= smooth < 1.0:
        raise TetherError(f"--smooth: {smooth} is not in [0, 1)")
    report, runs, paths = write_report_runs(args.runs, args.out, args.title or "tether report", smooth)
    for r in runs:
        for n in r.notes:
            print(f"warning: {r.name}: {n}", file=sys.stderr)
    header = ["run", "method", "steps", "time", "eval loss", "eval accuracy", "success", "KL", "loss"]
    header += ["accuracy", "margin", "deviation"]
    shown = [LAST_BATCH.get(h, h) for h in header]  # held-out numbers first, then the last batch's
    print(_table([[summary_row(r)[h] for h in header] for r in runs], shown))
    print()
    print(f"report: {report}")
    for path in paths.values():
        print(f"plot:   {path}")
    return 0


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"


def _error(problem: object) -> None:
    """``error: <problem>`` as one line (a key or field from the input may hold a line break), printed by one
    process only under ``accelerate launch``."""
    if _is_main():
        print(f"error: {problem}".replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tether",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from tether.training.card import tether_version

    parser.add_argument("--version", action="version", version=f"tether {tether_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("train", help="fine-tune a model as the config says and write a run directory")
    p.add_argument("config", help="YAML config file")
    p.add_argument(
        "overrides", nargs="*", help="dotted key=value overrides, e.g. train.lr=1e-5 method.beta=0.2"
    )
    p.set_defaults(func=cmd_train)
    p = sub.add_parser(
        "validate",
        help="check configs and every data row without loading model weights",
        description="Check each config (keys, types, ranges) and every data row it names (file, line, "
        "field), tokenized with the model's tokenizer, without loading model weights or writing anything. "
        "Exits with code 2 if any config has a problem.",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="CONFIG_OR_OVERRIDE",
        help="one or more YAML config files, then dotted key=value overrides applied to each "
        "(e.g. data.limit=100)",
    )
    p.set_defaults(func=cmd_validate)
    p = sub.add_parser("eval", help="evaluate a model or run directory against its reference on a data file")
    add_eval_arguments(p)
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser(
        "sweep",
        help="train and evaluate the product of a grid of config values; a table and the KL frontier",
    )
    p.add_argument("config", help="the base YAML config")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of the base config")
    p.add_argument(
        "--grid",
        action="append",
        required=True,
        metavar="KEY=V1,V2",
        help="a config key and its values, e.g. method.beta=0.01,0.1; repeat for a product",
    )
    p.add_argument(
        "--data-eval", default=None, help="held-out data every run is evaluated on (default: data.eval)"
    )
    p.add_argument("--out", default=None, help="the sweep directory (default: the config's train.output_dir)")
    p.add_argument("--baseline", default=None, metavar="POINT", help="a grid point (e.g. dpo_beta=0.1) every "
                   "other is compared with prompt by prompt, as tether compare does")  # fmt: skip
    add_eval_options(p)
    p.set_defaults(func=cmd_sweep)
    p = sub.add_parser("generate", help="sample from a run or a model on prompts (chat template applied)")
    p.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    p.add_argument(
        "--file", default=None, help=".txt (one prompt a line) or .jsonl/.json with a prompt field"
    )
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); else sampled")
    p.add_argument("--num-samples", type=positive, default=1, help="generations per prompt (default 1)")
    p.add_argument("--out", default=None, help="also write the generations as JSON lines here")
    add_generation_arguments(p)
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("compare", help="runs evaluated on the same prompts, each against the first, paired")
    p.add_argument(
        "runs", nargs="+", metavar="RUN", help="run directories (or eval.json files) evaluated alike"
    )
    p.add_argument("--metric", default=None, help="success, win_rate/chosen, win_rate/chosen/lc, win_rate, "
                   "judge/reward or kl (default: success when measured, else win_rate/chosen)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="the rows as JSON instead of a table")
    p.add_argument("--seed", type=int, default=0, help="seed of the paired bootstrap (default 0)")
    p.set_defaults(func=cmd_compare)
    p = sub.add_parser(
        "pairs", help="on-policy preference pairs: K samples per prompt, judged, best vs worst"
    )
    p.add_argument("--prompts", required=True, help='a data file (pairs/SFT rows or {"prompt": ...} rows)')
    p.add_argument(
        "--judge",
        required=True,
        help="'tasks' (the bundled checker; rows with source + answer) or a sequence-classification reward model",
    )
    p.add_argument("--samples", type=int, default=4, help="completions sampled per prompt, K ≥ 2 (default 4)")
    p.add_argument(
        "--out", required=True, help="the pairs file (JSON lines); a .meta.json is written beside it"
    )
    p.add_argument("--temperature", type=float, default=0.8, help="sampling temperature (default 0.8)")
    p.add_argument(
        "--min-gap", type=float, default=0.0, help="drop a prompt whose best-worst score gap is below this"
    )
    add_generation_arguments(p)
    p.set_defaults(func=cmd_pairs)
    p = sub.add_parser("report", help="plots and a Markdown summary of one or more run directories")
    add_report_arguments(p)
    p.set_defaults(func=cmd_report)
    p = sub.add_parser(
        "losses", help=f"list the methods ({', '.join(METHODS)}) with paper, equation and defaults"
    )
    p.add_argument("-v", "--verbose", action="store_true", help="one block per method with its summary")
    p.add_argument("--markdown", action="store_true", help="the Markdown table used in the README and docs")
    p.set_defaults(func=cmd_losses)
    p = sub.add_parser(
        "config",
        help="list every config key with its type, default, allowed range and help",
        description="Every config key with its type, default, allowed range and help, generated from the "
        "config's dataclasses and the method registry (docs/config.md is this with --markdown).",
    )
    p.add_argument(
        "keys", nargs="*", metavar="KEY", help="only these keys or sections (e.g. train, method.beta)"
    )
    p.add_argument("--markdown", action="store_true", help="the Markdown tables of docs/config.md")
    p.set_defaults(func=cmd_config)
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
        _error(e)
        return e.exit_code
    except OSError as e:  # a fault of the machine no layer turned into its own line: still one line
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        fault = environment_fault(e, f"tether {args.command}")
        _error(fault)
        return fault.exit_code
    except KeyboardInterrupt:
        print("interrupted; resume with train.resume=true", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
