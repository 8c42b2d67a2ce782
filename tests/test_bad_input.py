"""Issue 12, "every bad input one clear line, before weights load", through the real CLI.

Each case runs ``tether validate`` and ``tether train`` (in one driver process, as in ``test_cli.py``) against
the garbage-weights model of ``test_cli.env``: both must exit with code 2, print one error line and no
traceback, and ``train`` must write nothing. ``validate`` and ``train`` must say the same thing.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import struct
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_cli import Env, _check_bad, _run_driver, make_env

from tether import config as config_mod

# name -> function of (test environment, case name) giving (arguments after the command, words of the line)
BadCase = Callable[[Env, str], tuple[list[str], list[str]]]


def _config(e: Env, name: str, patch: dict[str, Any], *overrides: str) -> list[str]:
    return [str(e.config(name, patch)), *overrides]


def _yaml_text(e: Env, name: str, text: str | bytes) -> tuple[list[str], int]:
    """A config file whose own part is ``text`` (its data and output in the test environment), and the line
    number where ``text`` starts."""
    path = e.root / "configs" / f"{name}.yaml"
    path.parent.mkdir(exist_ok=True)
    head = yaml.safe_dump(
        {
            "model": {"name": str(e.garbage)},
            "data": {"train": str(e.files["pairs"]), "max_length": 64},
            "reference": {"cache_dir": str(e.root / "refcache")},
            "train": {"output_dir": str(e.out(name)), "max_steps": 2, "progress": False},
        },
        width=10_000,
    )
    body = text.encode() if isinstance(text, str) else text
    path.write_bytes(head.encode() + body)
    return [str(path)], head.count("\n") + 1


def _range_case(key: str, value: Any, *words: str) -> BadCase:
    section, name = key.split(".")
    return lambda e, case: (_config(e, case, {section: {name: value}}), [key, *words])


def _tr_dpo_case(patch: dict[str, Any], *words: str) -> BadCase:
    """TR-DPO with ``patch`` (its live reference refuses a precomputed table and LoRA; α in [0, 1]; τ ≥ 1 whole)."""
    method = {"name": "tr_dpo", **patch.get("method", {})}
    return lambda e, case: (_config(e, case, {**patch, "method": method}), list(words))


def _duplicate(text: str, key: str, first: int, second: int) -> BadCase:
    def case(e: Env, name: str) -> tuple[list[str], list[str]]:
        args, at = _yaml_text(e, name, text)
        return args, [f"{args[0]}:{at + second}: key '{key}' appears twice (first at line {at + first})"]

    return case


def _not_utf8(e: Env, name: str) -> tuple[list[str], list[str]]:
    args, at = _yaml_text(e, name, b"# caf\xe9 au lait\n")
    return args, [f"{args[0]}:{at}: not UTF-8 text", "0xe9"]


#: A "billion laughs" flow list: ten levels of nine aliases, 9**10 values once expanded, in 300 bytes.
BOMB = "[" + ", ".join(f"&l{i} [{', '.join([f'*l{i - 1}' if i else '0'] * 9)}]" for i in range(10)) + "]"


def _gguf(e: Env, name: str, *, tensors: int = 0, key_length: int = 4) -> Path:
    """A GGUF (version 3) whose header declares ``tensors`` tensors and one metadata key of ``key_length``
    bytes, followed by 64 bytes: what a crafted or truncated model file looks like to a reader."""
    path = e.root / f"{name}.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQQ", 3, tensors, 1, key_length) + b"name" + b"\0" * 64)
    return path


CONFIG_CASES: dict[str, BadCase] = {
    "adam_beta1": _range_case("train.adam_beta1", 1.5, "in [0, 1)", "got 1.5"),
    "adam_eps_negative": _range_case("train.adam_eps", -1e-8, "> 0"),
    "weight_decay_negative": _range_case("train.weight_decay", -0.1, "≥ 0"),
    "max_grad_norm_negative": _range_case("train.max_grad_norm", -1, "> 0"),
    "warmup_steps_negative": _range_case("train.warmup_steps", -5, "≥ 0", "got -5"),
    "seed_negative": _range_case("train.seed", -1, "got -1"),
    "lora_dropout": _range_case("model.lora", {"dropout": 1.0}, "model.lora.dropout", "in [0, 1)"),
    "lr_nan": _range_case("train.lr", float("nan"), "finite"),
    "epochs_inf": _range_case("train.epochs", float("inf"), "finite"),
    "max_length_one": _range_case("data.max_length", 1, "≥ 2"),
    "not_utf8": _not_utf8,
    "duplicate_section": _duplicate("train:\n  lr: 1.0e-5\n", "train", -4, 0),
    "duplicate_key": _duplicate("method:\n  beta: 0.1\n  beta: 0.2\n", "beta", 1, 2),
    "deeply_nested_yaml": lambda e, name: (
        _yaml_text(e, name, "extra: " + "[" * 5000 + "]" * 5000 + "\n")[0],
        ["nested too deeply"],
    ),
    "huge_integer_yaml": lambda e, name: (
        (t := _yaml_text(e, name, "seed_extra: " + "9" * 5000 + "\n"))[0],
        [f"{t[0][0]}:{t[1]}: exceeds the limit (4300 digits)"],
    ),
    "output_dir_is_a_file": lambda e, name: (
        _config(e, name, {"train": {"output_dir": str(e.files["pairs"])}}),
        ["train.output_dir", str(e.files["pairs"]), "is a file"],
    ),
    "output_dir_under_a_file": lambda e, name: (
        _config(e, name, {"train": {"output_dir": str(e.files["pairs"] / "run")}}),
        ["train.output_dir", f"{e.files['pairs']} is a file"],
    ),
    "key_with_a_line_break": lambda e, name: (
        _config(e, name, {"train": {"lr\nx": 1}}),
        ["train.lr\\nx: unknown key", "did you mean 'lr'?"],
    ),
    "cache_dir_is_a_file": lambda e, name: (
        _config(e, name, {"reference": {"cache_dir": str(e.files["pairs"])}}),
        ["reference.cache_dir", "is a file"],
    ),
    "output_dir_empty": _range_case("train.output_dir", " ", "must not be empty"),
    "override_typo": lambda e, name: (
        _config(e, name, {}, "train.lrr=1"),
        ["error: override 'train.lrr=1': train.lrr: unknown key", "did you mean 'lr'?"],
    ),
    "override_bad_value": lambda e, name: (
        _config(e, name, {}, "train.warmup_steps=-5"),
        ["error: override 'train.warmup_steps=-5': train.warmup_steps: must be ≥ 0"],
    ),
    "override_bad_hyperparameter": lambda e, name: (
        _config(e, name, {}, "method.beta=0"),
        ["error: override 'method.beta=0': method.beta", "outside"],
    ),
    "hyperparameter_beyond_a_float": lambda e, name: (
        _config(e, name, {}, "method.beta=" + "9" * 400),
        ["method.beta", "is too large"],
    ),
    "several_unknown_keys": lambda e, name: (
        _config(
            e, name, {"modle": {}, "train": {"lrr": 1.0}, "data": {"max_lenght": 4}, "method": {"betta": 1}}
        ),
        [
            "unknown keys",
            "modle (did you mean 'model'?)",
            "train.lrr (did you mean 'lr'?)",
            "data.max_lenght (did you mean 'max_length'?)",
            "method.betta (did you mean 'beta'?)",
        ],
    ),
    "unknown_keys_in_file_and_override": lambda e, name: (
        _config(e, name, {"train": {"lrr": 1.0}}, "data.max_lenght=4"),
        ["train.lrr (did you mean 'lr'?)", "override 'data.max_lenght=4': unknown key data.max_lenght"],
    ),
    "beta_dpo_one_pair_per_step": lambda e, name: (
        _config(e, name, {"method": {"name": "beta_dpo"}, "train": {"batch_size": 1, "grad_accum": 1}}),
        ["train.batch_size", "at least 2 pairs per optimizer step", "global batch has 1", "× 1 process)"],
    ),
    "beta_dpo_per_micro_batch_of_one_pair": lambda e, name: (
        _config(
            e,
            name,
            {
                "method": {"name": "beta_dpo", "per_micro_batch": 1},
                "train": {"batch_size": 1, "grad_accum": 4},
            },
        ),
        ["train.batch_size", "per_micro_batch=1", "a micro-batch has 1", "grad_accum 4"],
    ),
    "tr_dpo_precomputed": _tr_dpo_case(
        {"reference": {"mode": "precomputed"}}, "reference.mode", "cannot follow"
    ),
    "tr_dpo_lora": _tr_dpo_case({"model": {"lora": {"r": 4}}}, "model.lora", "use full fine-tuning"),
    "tr_dpo_alpha_above_one": _tr_dpo_case({"method": {"alpha": 1.5}}, "method.alpha", "outside [0, 1]"),
    "tr_dpo_tau_zero": _tr_dpo_case({"method": {"tau": 0}}, "method.tau", "outside the integers in [1"),
    "tr_dpo_tau_fraction": _tr_dpo_case({"method": {"tau": 2.5}}, "method.tau", "must be a whole number"),
    # issue 30: bounded input (an alias bomb, a huge file, a crafted model file) refused in one short line
    "alias_bomb_yaml": lambda e, name: (
        _yaml_text(e, name, f"extra: {BOMB}\n")[0],
        ["more than 100000 values once its aliases are expanded"],
    ),
    "alias_bomb_in_a_known_key": lambda e, name: (
        _yaml_text(e, name, f"stages: {{by: {BOMB}}}\n")[0],
        ["more than 100000 values"],
    ),
    "alias_bomb_override": lambda e, name: (
        _config(e, name, {}, f"data.train={BOMB}"),
        ["override 'data.train=", "more than 100000 values"],
    ),
    "huge_config_file": lambda e, name: (
        _yaml_text(e, name, "#" + "x" * (2 << 20) + "\n")[0],
        ["bytes; a config is at most 1048576 (1 MiB)"],
    ),
    "alias_cycle_yaml": lambda e, name: (
        _yaml_text(e, name, "extra: &a [*a]\n")[0],
        ["nested more than 64 levels deep (or an alias refers to itself)"],
    ),
    "crafted_gguf_tensor_count": lambda e, name: (
        _config(e, name, {"model": {"name": str(_gguf(e, name, tensors=2**62))}}),
        ["cannot load GGUF", "declares 4611686018427387904 tensors", "more than the file can hold"],
    ),
    "crafted_gguf_string_length": lambda e, name: (
        _config(e, name, {"model": {"name": str(_gguf(e, name, key_length=2**60))}}),
        ["cannot load GGUF", "declares 1152921504606846976 bytes", "past the end of the file"],
    ),
}

GOOD_ROW = '{"prompt": "what is 1+1?", "chosen": "2", "rejected": "3"}'
ROW = '{{"prompt": "a", "chosen": "b", "rejected": "c"{}}}'  # .format(", more fields")


def _data_case(suffix: str, text: str | bytes, *words: str) -> BadCase:
    """A data file ``text``; the line must start with ``FILE`` and hold ``words`` (``{f}``: the file)."""

    def case(e: Env, name: str) -> tuple[list[str], list[str]]:
        path = e.root / "data" / f"{name}{suffix}"
        path.write_bytes(text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text)
        return _config(e, name, {"data": {"train": str(path)}}), [w.format(f=path) for w in words]

    return case


def _line2(row: str, where: str, *words: str) -> BadCase:
    """A JSON-lines file whose line 2 is ``row`` among good rows; the line reads ``FILE:2: where...``."""
    return _data_case(
        ".jsonl", "\n".join([GOOD_ROW, row, GOOD_ROW, GOOD_ROW]) + "\n", f"{{f}}:2: {where}", *words
    )


DEEP = "[" * 100_000 + "]" * 100_000
PRETTY_ROW = json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}, indent=2)

DATA_CASES: dict[str, BadCase] = {
    "deeply_nested_line": _line2(ROW.format(f', "extra": {DEEP}'), "JSON nested too deeply"),
    "nested_field": _line2(ROW.format(', "extra": ' + "[" * 40 + "]" * 40), "field 'extra'", "levels deep"),
    "huge_integer": _line2(ROW.format(', "score": ' + "9" * 5000), "cannot read a number", "4300 digits"),
    "nan_literal": _line2('{"prompt": "a", "chosen": NaN, "rejected": "c"}', "field 'chosen'", "NaN"),
    "infinity_literal": _line2(ROW.format(', "score": -Infinity'), "field 'score'", "-Infinity"),
    "overflowing_number": _line2(ROW.format(', "score": 1e999'), "field 'score'", "Infinity"),
    "lone_surrogate": _line2(
        '{"prompt": "a\\ud800", "chosen": "b", "rejected": "c"}', "field 'prompt'", "surrogate"
    ),
    "content_not_a_string": _line2(
        '{"prompt": [{"role": "user", "content": "a"}], "chosen": [{"role": "assistant", "content": {"x": 1}}], '
        '"rejected": [{"role": "assistant", "content": "c"}]}',
        "field 'chosen[0].content'",
        "must be a string",
    ),
    "duplicate_json_key": _line2(ROW.format(', "prompt": "again"'), "field 'prompt'", "twice"),
    "duplicate_key_with_a_line_break": _line2(
        ROW.format(', "x\\ny": 1, "x\\ny": 2'), "field 'x\\ny'", "twice"
    ),
    "duplicate_message_key": _line2(
        '{"prompt": "a", "chosen": [{"role": "assistant", "content": "b", "content": "x"}], "rejected": "c"}',
        "field 'chosen[0].content'",
        "twice",
    ),
    "not_utf8_data": _data_case(
        ".jsonl", f"{GOOD_ROW}\n".encode() + b'{"prompt": "caf\xe9"}\n', "{f}:2: not UTF-8", "0xe9"
    ),
    # a U+2028 inside a string is no line break: the bad row is still line 2
    "line_separator_in_string": _data_case(
        ".jsonl",
        '{"prompt": "a\u2028b", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"}\n',
        "{f}:2: field 'rejected'",
        "missing",
    ),
    "json_object_document": _data_case(".json", PRETTY_ROW, "{f}: holds one JSON object, not rows", "array"),
    "json_object_with_rows": _data_case(
        ".json",
        json.dumps({"data": [json.loads(GOOD_ROW)] * 3}, indent=2),
        "{f}: holds one JSON object",
        "'data'",
    ),
    "json_object_malformed": _data_case(".json", PRETTY_ROW[:-2] + ",\n}", "{f}:5: malformed JSON"),
    "huge_line": _line2(  # 20 MB: cut before tokenizing (bounded work), reported without its full count
        json.dumps({"prompt": "what is 1+1? " * 1_600_000, "chosen": "2", "rejected": "3"}),
        "field 'prompt'",
        "prompt is at least",
        "max_length=64",
    ),
    "model_path_typo": lambda e, name: (
        (e.root / "runs").mkdir(exist_ok=True) or _config(e, name, {"model": {"name": "runs/typo"}}),
        ["model.name: runs/typo: not found", "local directory"],
    ),
}

UNPAIRED_ROW = '{"prompt": "what is 1+1?", "completion": "2", "label": true}'


def _kto_case(rows: list[str], *words: str, method: dict[str, Any] | None = None) -> BadCase:
    """KTO (an unpaired method that also takes pairs) on a JSON-lines file of ``rows``."""

    def case(e: Env, name: str) -> tuple[list[str], list[str]]:
        path = e.root / "data" / f"{name}.jsonl"
        path.write_text("\n".join(rows) + "\n")
        patch = {"data": {"train": str(path)}, "method": method or {"name": "kto"}}
        return _config(e, name, patch), [w.format(f=path) for w in words]

    return case


KTO_CASES: dict[str, BadCase] = {
    "kto_row_without_label": _kto_case(
        [UNPAIRED_ROW, '{"prompt": "a", "completion": "b"}', UNPAIRED_ROW],
        "{f}:2: field 'label'",
        "missing",
        "true/false label",
    ),
    "kto_label_not_boolean": _kto_case(
        [UNPAIRED_ROW, '{"prompt": "a", "completion": "b", "label": 1}', UNPAIRED_ROW],
        "{f}:2: field 'label'",
        "must be true or false, got number",
    ),
    "kto_label_a_string": _kto_case(
        [UNPAIRED_ROW, '{"prompt": "a", "completion": "b", "label": "false"}', UNPAIRED_ROW],
        "{f}:2: field 'label'",
        "must be true or false, got string",
    ),
    "kto_on_sft_rows": _kto_case(
        ['{"prompt": "a", "completion": "b"}'] * 3,
        "{f}: method 'kto' needs unpaired rows",
        "or preference pairs",
        "holds SFT rows",
    ),
    "unpaired_rows_to_dpo": _kto_case(
        [UNPAIRED_ROW] * 3,
        "{f}: method 'dpo' needs preference pairs",
        "holds unpaired rows",
        method={"name": "dpo"},
    ),
    "kto_lambda_d_negative": _kto_case(
        [UNPAIRED_ROW] * 3, "method.lambda_d", "outside (0, inf)", method={"name": "kto", "lambda_d": -1}
    ),
    "kto_lambda_u_zero": _kto_case(
        [UNPAIRED_ROW] * 3, "method.lambda_u", "outside (0, inf)", method={"name": "kto", "lambda_u": 0}
    ),
}

if importlib.util.find_spec("wandb") is None:
    CONFIG_CASES["report_to_not_installed"] = lambda e, name: (
        _config(e, name, {"train": {"report_to": ["wandb"]}}),
        ["train.report_to[0]: wandb needs `pip install wandb`"],
    )

CASES: dict[str, BadCase] = {**CONFIG_CASES, **DATA_CASES, **KTO_CASES}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    return make_env(tmp_path_factory.mktemp("bad"))


@pytest.fixture(scope="module")
def results(env: Env) -> dict[tuple[str, str], dict[str, Any]]:
    """Every case through ``validate`` and ``train``, in one process."""
    calls, keys = [], []
    for name, case in CASES.items():
        args, _ = case(env, name)
        for command in ("validate", "train"):
            calls.append([command, *args])
            keys.append((name, command))
    (env.root / "runs").mkdir(exist_ok=True)  # so that 'runs/typo' is a path, not a hub id
    calls.append(["eval", "runs/typo", "--data", str(env.files["pairs"])])
    keys.append(("eval_typo", "eval"))
    return dict(zip(keys, _run_driver(env, calls), strict=True))


@pytest.mark.slow
@pytest.mark.parametrize("command", ["validate", "train"])
@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line(env, results, name, command):
    _, expect = CASES[name](env, name)
    result = results[(name, command)]
    line = _check_bad(result, expect)
    assert result["stderr"].splitlines()[1:] in ([], ["1 problem(s) found"]), result["stderr"]
    assert not env.out(name).exists()  # nothing written
    assert env.files["pairs"].is_file()  # (the output_dir cases point at it)
    other = results[(name, "train" if command == "validate" else "validate")]
    assert other["stderr"].splitlines()[0] == line  # validate and train agree


@pytest.mark.slow
def test_eval_of_a_mistyped_run_directory_says_it_does_not_exist(results):
    result = results[("eval_typo", "eval")]
    line = _check_bad(result, ["runs/typo: not found", "'runs' is a local directory"])
    assert result["stderr"] == line + "\n" and "hub" not in line.replace("hub id", "")


ENV_DRIVER = r"""
import contextlib, io, json, os, sys, traceback
from tether.cli import main

results = []
for call in json.load(open(sys.argv[1])):
    os.environ.update(call["env"])
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(call["argv"])
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        except BaseException:
            traceback.print_exc()
            rc = 1
    for k in call["env"]:
        del os.environ[k]
    results.append({"rc": rc, "stdout": out.getvalue(), "stderr": err.getvalue()})
json.dump(results, open(sys.argv[2], "w"))
"""


@pytest.mark.slow
def test_fsdp_on_a_machine_without_gpu_is_one_line_from_one_rank(env):
    import subprocess
    import sys

    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: FSDP may run")
    cfg = str(env.config("fsdp", {}))
    fsdp = {"ACCELERATE_USE_FSDP": "true"}
    calls = [
        {"argv": ["validate", cfg], "env": fsdp},
        {"argv": ["train", cfg], "env": {**fsdp, "RANK": "0"}},
        {"argv": ["train", cfg], "env": {**fsdp, "RANK": "1"}},  # every other rank: the same exit, silently
    ]
    (env.root / "fsdp_calls.json").write_text(json.dumps(calls))
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            ENV_DRIVER,
            str(env.root / "fsdp_calls.json"),
            str(env.root / "fsdp_out.json"),
        ],
        cwd=env.root,
        env=env.subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    validate, rank0, rank1 = json.loads((env.root / "fsdp_out.json").read_text())
    for result in (validate, rank0):
        line = _check_bad(result, ["accelerate: FSDP was requested", "no CUDA GPU"])
        assert result["stderr"] == line + "\n"
    assert rank1["rc"] == 2 and rank1["stderr"] == ""
    assert not env.out("fsdp").exists()


def _numbers(cls: Any, where: str) -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        key = f"{where}.{f.name}" if where else f.name
        sub = config_mod.schema.section_class(tp)
        if sub is not None:
            out += _numbers(sub, key)
        elif {int, float} & {tp, *typing.get_args(tp), *(typing.get_args(a) for a in typing.get_args(tp))}:
            out.append(key)
    return out


def test_every_number_in_the_config_has_a_range():
    numbers = _numbers(config_mod.Config, "")
    assert "train.adam_beta1" in numbers and "stages.fractions" in numbers and "model.lora.r" in numbers
    assert sorted(set(numbers) - set(config_mod.RANGES)) == [
        "method.params"
    ]  # bounded in tether.methods.registry


def test_nonfinite_and_huge_numbers_are_refused():
    base = {"data": {"train": "x.jsonl"}}
    for value in (math.nan, math.inf, -math.inf, 10**400):
        with pytest.raises(config_mod.ConfigError, match=r"train\.lr: must be a finite number"):
            config_mod.from_dict({**base, "train": {"lr": value}})


# ------------------------------------------------------------------------------------------------
# Bounded work per row: a huge line is cut before it is tokenized, with the same result
# ------------------------------------------------------------------------------------------------


def _bpe_tokenizer():
    """A byte-level BPE tokenizer trained on a little English (the kind SmolLM2 and GPT-2 use)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    words = "the quick brown fox jumps over the lazy dog and then some more words follow " * 50
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<s>", "</s>"], show_progress=False
    )
    backend.train_from_iterator([words, "aaaa bbbb ----- " * 30], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def _tokenize(rows, tok, **kw):
    from tether.data import tokenize_rows

    return tokenize_rows(rows, tok, kind="pairs", max_length=64, chat_template="never", **kw)


@pytest.mark.parametrize("which", ["bpe", "char", "word"])
def test_long_rows_are_cut_before_tokenizing_with_the_same_result(monkeypatch, which):
    import random

    import test_data

    import tether.data.tokenize as data_mod
    from tether.data import Row

    import tiny

    tok = {"bpe": _bpe_tokenizer, "char": tiny.tiny_tokenizer, "word": test_data.make_tokenizer}[which]()
    rng = random.Random(0)
    words = ["the", "quick", "fox", "aaaa", "-----", "lazy", "zebra", "ünïcode", "x" * 40]

    def text(n_words: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n_words))

    rows = [
        Row("d.jsonl", i, {"prompt": text(p), "chosen": text(c), "rejected": text(c) + " dog"})
        for i, (p, c) in enumerate([(3, 2000), (2000, 5), (5, 5), (3000, 3000)], start=1)
    ]
    longest: list[int] = []
    real_encode = data_mod._encode
    monkeypatch.setattr(
        data_mod,
        "_encode",
        lambda t, texts: longest.append(max(map(len, texts), default=0)) or real_encode(t, texts),
    )
    bounded = _tokenize(rows, tok, max_prompt_length=16)
    cut, cap = max(longest), 2 * 64 * data_mod._max_token_chars(tok)
    monkeypatch.setattr(data_mod, "_max_token_chars", lambda t: 10**9)  # no cut: the reference result
    assert _tokenize(rows, tok, max_prompt_length=16) == bounded
    if which != "word":  # whole unknown words are one token there: the full text is tokenized after all
        assert cut <= cap < 5000 < max(len(r.data["chosen"]) for r in rows)
    assert bounded.n_truncated >= 2 and bounded.n_prompt_truncated >= 2  # the long rows were cut


def test_a_prompt_cut_before_tokenizing_is_reported_as_at_least_n_tokens():
    from tether.data import Row
    from tether.errors import DataError

    import tiny

    row = Row("d.jsonl", 2, {"prompt": "what is 1+1? " * 2_000_000, "chosen": "2", "rejected": "3"})  # 26 MB
    with pytest.raises(DataError) as err:
        _tokenize([row], tiny.tiny_tokenizer())
    (problem,) = err.value.problems
    assert str(problem).startswith(
        "d.jsonl:2: field 'prompt': prompt is at least "
    ) and "max_length=64" in str(problem)
    assert _tokenize([row], tiny.tiny_tokenizer(), drop_long_prompts=True).n_dropped == 1


# ----------------------------------------------------------------------------------------- tether pairs

TASK_ROW = {"prompt": "what is 1+1?", "chosen": "2", "rejected": "3", "source": "arithmetic", "answer": "2"}


def _pairs_args(
    e: Env, name: str, *extra: str, prompts: Path | None = None, judge: str = "tasks"
) -> list[str]:
    """``tether pairs`` on the garbage-weights model (a weight load would not fail cleanly)."""
    tasks_file = e.root / "data" / "tasks.jsonl"
    if not tasks_file.exists():
        tasks_file.write_text(json.dumps(TASK_ROW) + "\n")
    out = e.root / "pairs_out" / f"{name}.jsonl"
    out.parent.mkdir(exist_ok=True)
    args = [
        "pairs",
        str(e.garbage),
        "--prompts",
        str(prompts or tasks_file),
        "--judge",
        judge,
        "--out",
        str(out),
    ]
    return [*args, "--no-progress", *extra]


def _pairs_rows(e: Env, name: str, rows: list[str]) -> Path:
    path = e.root / "data" / f"pairs_{name}.jsonl"
    path.write_text("".join(r + "\n" for r in rows))
    return path


def _stale_partial(e: Env, name: str) -> tuple[list[str], list[str]]:
    args = _pairs_args(e, name)
    partial = Path(args[args.index("--out") + 1] + ".partial")
    partial.write_text(json.dumps({"tether_pairs": 1, "settings": {"samples": 9}}) + "\n")
    return args, [str(partial), "other settings", "samples", "delete the file"]


PAIRS_CASES: dict[str, BadCase] = {
    "missing_prompts": lambda e, n: (
        _pairs_args(e, n, prompts=e.files["missing"]),
        [str(e.files["missing"]), "file not found"],
    ),
    "row_without_prompt": lambda e, n: (
        _pairs_args(e, n, prompts=(p := _pairs_rows(e, n, [json.dumps(TASK_ROW), '{"text": "hi"}']))),
        [f"{p}:2", "'prompt'", "missing"],
    ),
    "prompt_not_text": lambda e, n: (
        _pairs_args(e, n, prompts=(p := _pairs_rows(e, n, [json.dumps({**TASK_ROW, "prompt": 7})]))),
        [f"{p}:1", "'prompt'", "non-empty string"],
    ),
    "tasks_row_without_answer": lambda e, n: (
        _pairs_args(e, n, prompts=e.files["pairs"]),
        [f"{e.files['pairs']}:1", "'answer'", "tasks judge"],
    ),
    "judge_not_found": lambda e, n: (
        _pairs_args(e, n, judge=str(e.root / "no_judge")),
        ["--judge", "no_judge"],
    ),
    "judge_is_a_causal_lm": lambda e, n: (
        _pairs_args(e, n, judge=str(e.model)),
        ["--judge", "not a sequence-classification reward model"],
    ),
    "one_sample": lambda e, n: (_pairs_args(e, n, "--samples", "1"), ["--samples", "at least 2", "got 1"]),
    "greedy": lambda e, n: (_pairs_args(e, n, "--temperature", "0"), ["--temperature", "> 0"]),
    "temperature_nan": lambda e, n: (_pairs_args(e, n, "--temperature", "nan"), ["--temperature", "nan"]),
    "top_p_above_one": lambda e, n: (_pairs_args(e, n, "--top-p", "1.5"), ["--top-p", "(0, 1]"]),
    "min_gap_negative": lambda e, n: (_pairs_args(e, n, "--min-gap", "-1"), ["--min-gap", "≥ 0"]),
    "out_exists": lambda e, n: (
        [*_pairs_args(e, n), "--out", str(e.files["sft"])],
        ["--out", str(e.files["sft"]), "exists"],
    ),
    "out_under_a_file": lambda e, n: (
        [*_pairs_args(e, n), "--out", str(e.files["sft"] / "pairs.jsonl")],
        ["--out", "a parent of it is a file"],
    ),
    "partial_with_other_settings": _stale_partial,
}


@pytest.mark.slow
def test_pairs_bad_input_is_one_line_and_writes_nothing(env):
    made = {name: case(env, name) for name, case in PAIRS_CASES.items()}
    before = {p: p.read_bytes() for p in (env.root / "pairs_out").iterdir()}
    sft = env.files["sft"].read_bytes()
    results = _run_driver(env, [args for args, _ in made.values()])
    for (name, (_, expect)), result in zip(made.items(), results, strict=True):
        line = _check_bad(result, expect)
        assert result["stderr"] == line + "\n", name
    assert {p: p.read_bytes() for p in (env.root / "pairs_out").iterdir()} == before  # nothing written
    assert env.files["sft"].read_bytes() == sft
