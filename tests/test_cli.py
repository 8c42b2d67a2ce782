"""The bad-input contract of DEVELOPERS.md, through the real ``tether`` CLI.

Every case must exit with code 2, print no traceback, and name the file, line and field (or the config key,
with the closest valid key) on its first line. ``train`` must fail before any model weights load: the bad
cases run against a model directory whose ``model.safetensors`` is garbage, so a load would crash, and
nothing may be written to the run directory.

Starting a Python that imports torch takes seconds, so the many bad-input cases run through
``tether.cli.main`` in ONE subprocess (a tiny driver that captures each call's stdout/stderr/exit code);
a handful of representative runs use ``python -m tether.cli`` itself.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from tether.methods.registry import METHODS

import tiny
from tiny import pair_rows, sft_rows, tiny_model_dir, write_jsonl

pytestmark = pytest.mark.slow  # launches processes

RUN_OUTPUTS = ("final", "metrics.jsonl", "checkpoints", "config.yaml", "summary.json")

DRIVER = r"""
import contextlib, io, json, sys, traceback
from tether.cli import main

results = []
for argv in json.load(open(sys.argv[1])):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            rc = 1
    results.append({"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()})
json.dump(results, open(sys.argv[2], "w"))
"""


@dataclass
class Env:
    root: Path
    model: Path  # a good tiny model
    garbage: Path  # same config and tokenizer, model.safetensors replaced by garbage bytes
    model2: Path  # a tiny model whose tokenizer has a different vocabulary
    files: dict[str, Path]

    def subprocess_env(self) -> dict[str, str]:
        return {**os.environ, "HF_HUB_OFFLINE": "1", "TETHER_CACHE": str(self.root / "cache")}

    def base(self, name: str) -> dict[str, Any]:
        return {
            "model": {"name": str(self.garbage)},
            "data": {"train": str(self.files["pairs"]), "max_length": 64},
            "method": {"name": "dpo"},
            "reference": {"cache_dir": str(self.root / "refcache")},
            "train": {
                "output_dir": str(self.out(name)),
                "batch_size": 2,
                "max_steps": 2,
                "progress": False,
            },
        }

    def out(self, name: str) -> Path:
        return self.root / "runs" / name

    def config(self, name: str, patch: dict[str, Any], base: dict[str, Any] | None = None) -> Path:
        raw = _merge(copy.deepcopy(base or self.base(name)), patch)
        path = self.root / "configs" / f"{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(yaml.safe_dump(raw, sort_keys=False))
        return path


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    for k, v in patch.items():
        if isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = v
    return into


def _lines(path: Path, lines: list[str | dict]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


GOOD = pair_rows(1)[0]
LONG_PROMPT = "what is " + "1+" * 40 + "1?"  # 90 characters: longer than max_length=64 in the char tokenizer


def _with_bad_row(bad: str | dict) -> list[str | dict]:
    """A good row, the bad one on line 2, more good rows."""
    return [GOOD, bad, *pair_rows(3, seed=1)]


BAD_ROWS: dict[str, tuple[str | dict, str, list[str]]] = {
    # name: (line 2 of the file, expected location after "FILE:2: ", words in the message)
    "malformed_json": ('{"prompt": "what is 1+1?", "chosen": "2",', "malformed JSON", []),
    "not_an_object": ("[1, 2, 3]", "not a JSON object", ["list"]),
    "missing_field": ({"prompt": "a", "chosen": "b"}, "field 'rejected'", ["missing"]),
    "empty_field": ({"prompt": "a", "chosen": "   ", "rejected": "c"}, "field 'chosen'", ["empty"]),
    "number_field": ({"prompt": 5, "chosen": "b", "rejected": "c"}, "field 'prompt'", ["number"]),
    "null_field": ({"prompt": "a", "chosen": "b", "rejected": None}, "field 'rejected'", ["null"]),
    "int_list_field": ({"prompt": "a", "chosen": [5, 6, 7], "rejected": "c"}, "field 'chosen'", ["list"]),
    "bad_message": (
        {"prompt": [{"role": "user", "content": "a"}], "chosen": [{"role": "robot", "content": "b"}]}
        | {"rejected": [{"role": "assistant", "content": "c"}]},
        "field 'chosen[0].role'",
        ["robot"],
    ),
    "identical": ({"prompt": "a", "chosen": "b", "rejected": "b"}, "field 'rejected'", ["identical"]),
    "long_prompt": (
        {"prompt": LONG_PROMPT, "chosen": "b", "rejected": "c"},
        "field 'prompt'",
        ["max_length=64", "drop_long_prompts"],
    ),
}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    return make_env(tmp_path_factory.mktemp("cli"))


def make_env(root: Path) -> Env:
    """Tiny models (a good one, one with garbage weights, one with another vocabulary) and data files."""
    model = tiny_model_dir(root / "model")
    garbage = tiny_model_dir(root / "garbage")
    (garbage / "model.safetensors").write_bytes(b"\x00not safetensors\xff" * 64)
    with pytest.MonkeyPatch.context() as mp:  # same architecture, a different vocabulary
        mp.setattr(tiny, "CHARS", tiny.CHARS[::-1])
        model2 = tiny_model_dir(root / "model2", seed=1)
    d = root / "data"
    d.mkdir()
    files = {
        "pairs": write_jsonl(d / "pairs.jsonl", pair_rows(8)),
        "sft": write_jsonl(d / "sft.jsonl", sft_rows(8)),
        "long": write_jsonl(d / "long.jsonl", [*pair_rows(7), {**GOOD, "prompt": LONG_PROMPT}]),
        "empty": d / "empty.jsonl",
        "csv": d / "pairs.csv",
        "txt": d / "pairs.txt",
        "missing": d / "missing.jsonl",
        "array": d / "array.json",
        "parquet": d / "pairs.parquet",
        "notgguf": root / "x.gguf",
        "noconfig": root / "noconfig",
        "multi": _lines(
            d / "multi.jsonl",
            [
                GOOD,
                {"prompt": "a", "chosen": "b"},  # 2: missing rejected
                {"prompt": "", "chosen": "b", "rejected": "c"},  # 3: empty prompt
                '{"prompt": "a", "chosen": "b", "rejected": }',  # 4: malformed JSON
                {"prompt": "a", "chosen": "b", "rejected": "b"},  # 5: identical
                {"prompt": "a", "chosen": 7, "rejected": [1, 2]},  # 6: two bad fields
            ],
        ),
    }
    for name, (bad, _, _) in BAD_ROWS.items():
        files[name] = _lines(d / f"{name}.jsonl", _with_bad_row(bad))
    files["empty"].write_text("")
    files["csv"].write_text("prompt,chosen,rejected\na,b,c\n")
    files["txt"].write_text(files["pairs"].read_text())
    files["array"].write_text(json.dumps([GOOD, {"prompt": "a", "chosen": "b"}], indent=1))
    rows = [*pair_rows(2), {"prompt": "a", "chosen": "b", "rejected": "b", "source": "easy"}]
    pq.write_table(pa.Table.from_pylist(rows), files["parquet"])
    files["notgguf"].write_text("this is not a GGUF file\n")
    files["noconfig"].mkdir()
    return Env(root, model, garbage, model2, files)


# ------------------------------------------------------------------------------------------------
# Bad-input cases: name -> (config patch, substrings of the first stderr line, one line only?)
# ------------------------------------------------------------------------------------------------

Case = Callable[[Env], tuple[dict[str, Any], list[str]]]


def _row_case(name: str) -> Case:
    def case(e: Env) -> tuple[dict[str, Any], list[str]]:
        _, where, words = BAD_ROWS[name]
        return {"data": {"train": str(e.files[name])}}, [f"{e.files[name]}:2: {where}", *words]

    return case


def _file_case(key: str, *words: str) -> Case:
    return lambda e: ({"data": {"train": str(e.files[key])}}, [str(e.files[key]), *words])


def _model_case(key: str, *words: str) -> Case:
    return lambda e: ({"model": {"name": str(e.files[key])}}, ["model.name", str(e.files[key]), *words])


def _config_case(patch: dict[str, Any], *words: str) -> Case:
    return lambda e: (patch, list(words))


RANDOM_STAGES = {"by": "random", "fractions": [0.5, 0.5]}
COLUMN_STAGES = {"by": "column", "column": "source", "order": ["easy", "hard"]}

CASES: dict[str, Case] = {
    **{name: _row_case(name) for name in BAD_ROWS},
    "json_array_record": lambda e: (
        {"data": {"train": str(e.files["array"])}},
        [f"{e.files['array']}:2: field 'rejected'", "missing"],
    ),
    "parquet_record": lambda e: (
        {"data": {"train": str(e.files["parquet"])}},
        [f"{e.files['parquet']}:3: field 'rejected'", "identical"],
    ),
    "pairs_method_sft_data": lambda e: (
        {"data": {"train": str(e.files["sft"])}},
        [str(e.files["sft"]), "method 'dpo' needs preference pairs", "SFT rows"],
    ),
    "sft_method_pair_data": lambda e: (
        {"method": {"name": "sft"}},
        [str(e.files["pairs"]), "method 'sft' needs SFT rows", "preference pairs"],
    ),
    "eval_file_wrong_kind": lambda e: (
        {"data": {"eval": str(e.files["sft"])}},
        [str(e.files["sft"]), "method 'dpo' needs preference pairs"],
    ),
    "data_file_missing": _file_case("missing", "not found"),
    "data_file_empty": _file_case("empty", "no rows"),
    "data_extension_csv": _file_case("csv", "unknown data file extension '.csv'"),
    "data_extension_txt": _file_case("txt", "unknown data file extension '.txt'"),
    "model_missing": lambda e: (
        {"model": {"name": str(e.root / "nope")}},
        ["model.name", str(e.root / "nope"), "not found"],
    ),
    "model_not_gguf": _model_case("notgguf", "not a GGUF"),
    "model_dir_without_config": _model_case("noconfig", "config.json"),
    "reference_missing": lambda e: (
        {"reference": {"model": str(e.root / "nope")}},
        ["reference.model", str(e.root / "nope"), "not found"],
    ),
    "reference_other_tokenizer": lambda e: (
        {"reference": {"model": str(e.model2), "mode": "copy"}},
        ["reference.model", str(e.model2), "different tokenizer"],
    ),
    # unknown keys at every level, with the closest valid key
    "unknown_top_key": _config_case({"modle": {"name": "x"}}, "modle: unknown key", "did you mean 'model'?"),
    "unknown_model_key": _config_case(
        {"model": {"nmae": "x"}}, "model.nmae: unknown key", "did you mean 'name'?"
    ),
    "unknown_lora_key": _config_case(
        {"model": {"lora": {"alpah": 8}}}, "model.lora.alpah: unknown key", "did you mean 'alpha'?"
    ),
    "unknown_data_key": _config_case(
        {"data": {"max_lenght": 64}}, "data.max_lenght: unknown key", "did you mean 'max_length'?"
    ),
    "unknown_reference_key": _config_case(
        {"reference": {"mdoe": "copy"}}, "reference.mdoe: unknown key", "did you mean 'mode'?"
    ),
    "unknown_train_key": _config_case(
        {"train": {"lerning_rate": 1e-3}}, "train.lerning_rate: unknown key", "did you mean 'lr'?"
    ),
    "unknown_stages_key": _config_case(
        {"stages": {"colum": "source"}}, "stages.colum: unknown key", "did you mean 'column'?"
    ),
    "unknown_method": _config_case(
        {"method": {"name": "dpoo"}}, "method.name", "unknown method 'dpoo'", "did you mean 'dpo'?"
    ),
    "unknown_hyperparameter": _config_case(
        {"method": {"betta": 0.1}}, "method.betta", "did you mean 'beta'?"
    ),
    # wrong types and ranges
    "wrong_type_number": _config_case({"train": {"lr": "fast"}}, "train.lr", "expected a number", "'fast'"),
    "wrong_type_integer": _config_case(
        {"data": {"max_length": "long"}}, "data.max_length", "expected an integer"
    ),
    "wrong_choice": _config_case(
        {"train": {"scheduler": "cosin"}}, "train.scheduler", "did you mean 'cosine'?"
    ),
    "out_of_range": _config_case({"train": {"batch_size": 0}}, "train.batch_size", "≥ 1", "got 0"),
    "beta_zero": _config_case({"method": {"beta": 0}}, "method.beta", "outside"),
    "beta_negative": _config_case({"method": {"beta": -0.1}}, "method.beta", "outside"),
    "epsilon_one": _config_case(
        {"method": {"name": "epsilon_dpo", "epsilon": 1.0}}, "method.epsilon", "outside (0, 1)"
    ),
    "epsilon_zero": _config_case(
        {"method": {"name": "epsilon_dpo", "epsilon": 0.0}}, "method.epsilon", "outside (0, 1)"
    ),
    "r_dpo_alpha_negative": _config_case(
        {"method": {"name": "r_dpo", "alpha": -0.1}}, "method.alpha", "outside [0, inf)"
    ),
    "slic_hf_delta_zero": _config_case(
        {"method": {"name": "slic_hf", "delta": 0}}, "method.delta", "outside (0, inf)"
    ),
    "cpo_lambda_negative": _config_case(
        {"method": {"name": "cpo", "lambda_nll": -1.0}}, "method.lambda_nll", "outside [0, inf)"
    ),
    "rrhf_both_nll_forms": _config_case(
        {"method": {"name": "rrhf", "lambda_nll": 1.0, "lambda_nll_avg": 1.0}},
        "method: lambda_nll and lambda_nll_avg",
        "two forms of one term",
    ),
    # sDPO stages
    "stages_fractions_sum": _config_case(
        {"stages": {**RANDOM_STAGES, "fractions": [0.5, 0.4]}}, "stages.fractions", "sum to 1"
    ),
    "stages_empty_stage": _config_case(
        {"stages": {**RANDOM_STAGES, "fractions": [0.95, 0.05]}}, "stage 2", "no examples"
    ),
    "stages_order_value_missing": _config_case(
        {"stages": {**COLUMN_STAGES, "order": ["easy", "medium"]}}, "stages.order", "'medium'", "easy, hard"
    ),
    "stages_column_missing": _config_case(
        {"stages": {**COLUMN_STAGES, "column": "difficulty"}}, "stages.column", "'difficulty'"
    ),
}


def _run_driver(e: Env, calls: list[list[str]]) -> list[dict[str, Any]]:
    argv_file, out_file = e.root / "calls.json", e.root / "results.json"
    argv_file.write_text(json.dumps(calls))
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(argv_file), str(out_file)],
        cwd=e.root,
        env=e.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out_file.read_text())


@pytest.fixture(scope="module")
def batch(env: Env) -> dict[tuple[str, str], dict[str, Any]]:
    """Every case through ``validate`` and ``train`` plus the good commands, in one process."""
    calls, keys = [], []
    for name, case in CASES.items():
        patch, _ = case(env)
        cfg = env.config(name, patch)
        for command in ("validate", "train"):
            calls.append([command, str(cfg)])
            keys.append((name, command))
    good = env.config("good", {})
    long = env.config("drop_long", {"data": {"train": str(env.files["long"]), "drop_long_prompts": True}})
    for key, argv in {
        ("good", "validate"): ["validate", str(good)],
        ("drop_long", "validate"): ["validate", str(long)],
        ("long_override", "validate"): ["validate", str(long), "data.drop_long_prompts=false"],
        ("override_typo", "validate"): ["validate", str(good), "train.learning_rate=1e-5"],
        ("losses", ""): ["losses"],
        ("losses", "-v"): ["losses", "-v"],
        ("help", ""): ["--help"],
        ("help", "train"): ["train", "--help"],
        ("help", "validate"): ["validate", "--help"],
        ("validate", "several"): [
            "validate",
            str(good),
            str(env.root / "configs" / "unknown_train_key.yaml"),
            str(long),
            "data.limit=8",
        ],
        ("validate", "several_ok"): ["validate", str(good), str(long)],
        ("config", ""): ["config"],
        ("config", "--markdown"): ["config", "--markdown"],
        ("config", "train"): ["config", "train", "method.beta"],
        ("config", "typo"): ["config", "trian"],
        ("version", ""): ["--version"],
        **{
            ("help", sub): [sub, "--help"]
            for sub in ("eval", "sweep", "generate", "report", "losses", "config")
        },
    }.items():
        calls.append(argv)
        keys.append(key)
    return dict(zip(keys, _run_driver(env, calls), strict=True))


def _check_bad(result: dict[str, Any], expect: list[str]) -> str:
    err = result["stderr"]
    assert "Traceback" not in err, err
    assert result["rc"] == 2, err
    lines = err.splitlines()
    assert lines and lines[0].startswith("error: "), err
    for word in expect:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


@pytest.mark.parametrize("command", ["validate", "train"])
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(env, batch, name, command):
    _, expect = CASES[name](env)
    result = batch[(name, command)]
    _check_bad(result, expect)
    errors = [x for x in result["stderr"].splitlines() if x.startswith("error: ")]
    assert len(errors) == 1, result["stderr"]  # one line for the whole problem, whatever the row count
    if command == "validate":
        assert result["stderr"].splitlines()[1:] in ([], ["1 problem(s) found"]), result["stderr"]
    else:
        # nothing written: the error came before the run directory and before any weight loaded
        # (and the model's weights are garbage, so a load would not have failed cleanly)
        out = env.out(name)
        assert not [n for n in RUN_OUTPUTS if (out / n).exists()]
        assert result["stderr"].count("\n") == 1, result["stderr"]


def test_good_config_validates_without_loading_weights(batch):
    r = batch[("good", "validate")]
    assert r["rc"] == 0, r["stderr"]
    assert "Traceback" not in r["stderr"]
    assert "OK" in r["stdout"] and "method dpo" in r["stdout"] and "train_examples=8" in r["stdout"]


def test_drop_long_prompts_counts_dropped_rows(env, batch):
    r = batch[("drop_long", "validate")]
    assert r["rc"] == 0, r["stderr"]
    assert "dropped=1" in r["stdout"] and "train_examples=7" in r["stdout"]
    # without the flag the same row is reported by file:line
    _check_bad(batch[("long_override", "validate")], [f"{env.files['long']}:8: field 'prompt'", "max_length"])


def test_override_typo_suggests_key(batch):
    _check_bad(batch[("override_typo", "validate")], ["train.learning_rate: unknown key", "'lr'"])


def test_losses_lists_every_method(batch):
    for flag in ("", "-v"):
        r = batch[("losses", flag)]
        assert r["rc"] == 0, r["stderr"]
        listed = {line.split()[0].rstrip(":") for line in r["stdout"].splitlines() if line.strip()}
        assert set(METHODS) <= listed


def test_help_exits_zero(batch):
    for sub in ("", "train", "validate", "eval", "sweep", "generate", "report", "losses", "config"):
        r = batch[("help", sub)]
        assert r["rc"] == 0, r["stderr"]
        assert "usage: tether" in r["stdout"]
    assert "overrides" in batch[("help", "train")]["stdout"]
    top = " ".join(batch[("help", "")]["stdout"].split())
    assert "while keeping them tethered to their reference model." in top  # not cut mid-sentence
    assert "--version" in top and "config" in top


def test_every_argument_has_help():
    import argparse

    from tether.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        for action in parser._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, (name, action.dest)


def test_version(batch):
    from tether import __version__

    r = batch[("version", "")]
    assert r["rc"] == 0 and r["stdout"].strip() == f"tether {__version__}", r


def test_validate_takes_several_configs(env, batch):
    r = batch[("validate", "several")]
    assert r["rc"] == 2 and "Traceback" not in r["stderr"], r["stderr"]
    ok = [line for line in r["stdout"].splitlines() if ": OK" in line]
    assert [line.split(":")[0] for line in ok] == [
        str(env.root / "configs" / n) + ".yaml" for n in ("good", "drop_long")
    ]
    assert all("rows=8" in line for line in ok), ok  # the override applies to every config
    errors = [line for line in r["stderr"].splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "unknown_train_key.yaml" in errors[0] and "did you mean 'lr'?" in errors[0]
    assert "2 of 3 configs OK, 1 with problems" in r["stderr"]
    r = batch[("validate", "several_ok")]
    assert r["rc"] == 0 and r["stdout"].count(": OK") == 2 and "2 of 2 configs OK" in r["stdout"], r


def test_config_lists_every_key(batch):
    from tether.config import config_keys, config_markdown, hyperparameter_keys

    r = batch[("config", "")]
    assert r["rc"] == 0, r["stderr"]
    listed = {line.split(":")[0] for line in r["stdout"].splitlines() if not line.startswith(" ")}
    keys = {k.key for k in [*config_keys(), *hyperparameter_keys()]}
    assert keys == listed
    assert {"model.name", "train.lr", "model.lora.r", "stages.by", "method.beta", "method.epsilon"} <= keys
    assert "train.lr: float = 5e-06, > 0\n    Peak learning rate" in r["stdout"]
    assert batch[("config", "--markdown")]["stdout"].strip() == config_markdown()
    part = {
        line.split(":")[0] for line in batch[("config", "train")]["stdout"].splitlines() if line[:1] != " "
    }
    assert part == {k for k in keys if k.startswith("train.")} | {"method.beta"}
    _check_bad(batch[("config", "typo")], ["trian", "did you mean 'train'?"])


def test_python_dash_m_tether_runs():
    r = subprocess.run(
        [sys.executable, "-m", "tether", "--version"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and r.stdout.startswith("tether "), r.stderr


# ------------------------------------------------------------------------------------------------
# The real entry point, ``python -m tether.cli``
# ------------------------------------------------------------------------------------------------


def tether(e: Env, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tether.cli", *map(str, args)],
        cwd=e.root,
        env=e.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_validate_lists_every_problem(env):
    data = env.files["multi"]
    proc = tether(env, "validate", env.config("multi", {"data": {"train": str(data)}}))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert lines[-1] == "6 problem(s) found"  # the malformed line and the good lines' problems, in order
    assert lines[:-1] == [
        f"error: {data}:2: field 'rejected': missing (preference rows need prompt/chosen/rejected)",
        f"error: {data}:3: field 'prompt': is empty",
        f"error: {data}:4: malformed JSON (Expecting value at column 44)",
        f"error: {data}:5: field 'rejected': chosen and rejected are identical",
        f"error: {data}:6: field 'chosen': must be a non-empty string or a list of {{role, content}} "
        "messages, got number",
        f"error: {data}:6: field 'rejected': must be a non-empty string or a list of {{role, content}} "
        "messages, got a list of number",
    ]


@pytest.mark.parametrize(
    "good, words",
    [
        ({"prompt": "x", "completion": "y"}, "needs preference pairs"),
        ({"foo": 1}, "cannot tell the data format"),
    ],
    ids=["wrong_kind", "no_format"],
)
def test_malformed_lines_still_listed_when_the_rest_has_the_wrong_kind(env, tmp_path, good, words):
    from tether.config import load_config
    from tether.errors import DataError
    from tether.training.job import validate

    data = _lines(tmp_path / "d.jsonl", ['{"prompt": "a", "chosen": "b", "rejected": "c",}', good])
    with pytest.raises(DataError) as err:
        validate(load_config(env.config(f"kind_{len(words)}", {"data": {"train": str(data)}})))
    found = [str(q) for q in err.value.problems]
    assert len(found) == 2 and found[0].startswith(f"{data}: ") and words in found[0], found
    assert found[1].startswith(f"{data}:1: malformed JSON"), found


def test_train_data_error_comes_before_the_model_loads(env):
    # garbage weights: had train loaded them it would fail with a load error, not the data error
    data = env.files["identical"]
    cfg = env.config("real_identical", {"data": {"train": str(data)}})
    proc = tether(env, "train", cfg)
    line = _check_bad({"rc": proc.returncode, "stderr": proc.stderr}, [f"{data}:2: field 'rejected'"])
    assert proc.stderr == line + "\n"
    assert not env.out("real_identical").exists()


def test_train_runs_and_reports_dropped_rows(env):
    patch = {
        "model": {"name": str(env.model)},
        "data": {"train": str(env.files["long"]), "drop_long_prompts": True},
    }
    proc = tether(env, "train", env.config("real_good", patch))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = env.out("real_good")
    assert "run summary" in proc.stdout and str(out) in proc.stdout
    assert (out / "final" / "model.safetensors").is_file() and (out / "metrics.jsonl").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["data"]["dropped"] == 1 and summary["data"]["train_examples"] == 7
    assert summary["steps"] == 2


def test_nonfinite_loss_stops_with_exit_3_and_keeps_checkpoint(env):
    # lr=1e30: Adam moves every weight by ~1e30 at step 1, so the step-2 forward pass overflows. The
    # step-1 checkpoint is kept but not called good: its weights already grew ~1e30 times.
    patch = {"model": {"name": str(env.model)}, "train": {"lr": 1e30, "save_every": 1, "max_steps": 5}}
    proc = tether(env, "train", env.config("real_nan", patch))
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    m = re.fullmatch(
        r"error: step (\d+): loss is NaN or infinite; .*no good checkpoint \((\S+): (.*)\)", lines[0]
    )
    assert m, lines[0]
    step, checkpoint = int(m.group(1)), m.group(2)
    assert step >= 2 and "weights grew" in m.group(3)
    out = env.out("real_nan")
    assert checkpoint == f"step-{step - 1:07d}"
    assert any((out / "checkpoints" / checkpoint).glob("*.safetensors"))
    assert not (out / "final").exists()
