"""The key reference (``tether config``, docs/config.md), generated from the dataclasses of
:mod:`tether.config.schema` (types, defaults, help), :data:`~tether.config.schema.RANGES` and the method
registry (hyper-parameters)."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from tether.config.schema import RANGES, Config, MethodConfig, range_text, section_class, type_name
from tether.methods.registry import ANY, HYPERPARAMETERS, METHODS, Method


@functools.cache
def field_help(cls: type) -> dict[str, str]:
    """Each field's help text: the string literal right below it in the class body (an attribute
    docstring), on one line. The dataclasses are the one place a key is explained."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = next(n for n in tree.body if isinstance(n, ast.ClassDef)).body
    found = {}
    for node, after in zip(body, [*body[1:], None], strict=True):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            text = ""
            if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                text = " ".join(str(after.value.value).split())
            found[node.target.id] = text
    return found


@dataclass(frozen=True)
class KeyDoc:
    """One config key as ``tether config`` lists it."""

    key: str
    type: str
    default: str
    range: str
    help: str


def _yaml_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_yaml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_yaml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, str):
        return v if v else "''"
    return repr(v)


def _type_text(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_text(a) for a in args)
    if origin is Literal:
        return " | ".join(map(str, args))
    if origin is list:
        return f"list[{_type_text(args[0])}]"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "section"
    return type_name(tp)


def _range_of(key: str, tp: Any) -> str:
    bound = RANGES.get(key)
    if bound is not None:
        text = range_text(bound)
        return f"each {text}" if typing.get_origin(tp) is list else text
    return ""


def config_keys() -> list[KeyDoc]:
    """Every config key with its type, default, range and help, in config order. A section that may be
    null (``model.lora``, ``stages``) is listed too, then its keys with the defaults they take when it is
    given. ``method.params`` is not a key of its own: the method's hyper-parameters are
    :func:`hyperparameter_keys`."""
    out: list[KeyDoc] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        helps = field_help(cls)
        default = cls()
        for f in dataclasses.fields(cls):
            key, tp = f"{prefix}{f.name}", hints[f.name]
            if cls is MethodConfig and f.name == "params":
                continue
            section = section_class(tp)
            if section is not None:
                if type(None) in typing.get_args(tp):
                    out.append(KeyDoc(key, "section | null", "null", "", helps[f.name]))
                walk(section, f"{key}.")
                continue
            value = getattr(default, f.name)
            out.append(KeyDoc(key, _type_text(tp), _yaml_value(value), _range_of(key, tp), helps[f.name]))

    walk(Config, "")
    return out


def hyperparameter_keys() -> list[KeyDoc]:
    """The methods' hyper-parameters (``method.<name>``) from the registry, one entry per name: the
    methods that take it with their defaults (``dpo=0.1, ipo=0.1``) and its range (per method where
    they differ)."""
    by_name: dict[str, list[Method]] = {}
    for m in METHODS.values():
        for name in m.defaults:
            by_name.setdefault(name, []).append(m)
    out = []
    for name, methods in by_name.items():
        ranges = {m.name: range_text(m.bounds.get(name, ANY)) for m in methods}
        rng = (
            next(iter(ranges.values()))
            if len(set(ranges.values())) == 1
            else ", ".join(f"{k}: {v}" for k, v in ranges.items())
        )
        defaults = ", ".join(f"{m.name}={_yaml_value(m.defaults[name])}" for m in methods)
        out.append(KeyDoc(f"method.{name}", "float", defaults, rng, HYPERPARAMETERS.get(name, "")))
    return out


def _cell(text: str) -> str:
    return text.replace("``", "`").replace("|", "\\|") if text else "-"


def config_markdown() -> str:
    """The key reference as Markdown tables (docs/config.md; a test keeps it in sync)."""
    lines = ["| key | type | default | range | what it does |", "|---|---|---|---|---|"]
    for k in config_keys():
        lines.append(f"| `{k.key}` | {_cell(k.type)} | `{k.default}` | {_cell(k.range)} | {_cell(k.help)} |")
    lines += [
        "",
        "The methods' hyper-parameters, written beside the method's name (`method: {name: dpo, beta: 0.1}`, "
        "`method.beta=0.2`); `tether losses` lists each method's paper and equation:",
        "",
        "| key | methods: default | range | what it does |",
        "|---|---|---|---|",
    ]
    for k in hyperparameter_keys():
        lines.append(f"| `{k.key}` | {k.default} | {_cell(k.range)} | {_cell(k.help)} |")
    return "\n".join(lines)


def config_text(prefixes: Sequence[str] = ()) -> str:
    """The key reference for a terminal: one block per key (those starting with one of ``prefixes``)."""

    def shown(key: str) -> bool:
        return not prefixes or any(key == p or key.startswith(f"{p.rstrip('.')}.") for p in prefixes)

    blocks = []
    for k in config_keys():
        if shown(k.key):
            rng = f", {k.range}" if k.range else ""
            blocks.append(f"{k.key}: {k.type} = {k.default}{rng}\n    {k.help.replace('``', '`')}")
    for k in hyperparameter_keys():
        if shown(k.key):
            blocks.append(f"{k.key}: {k.type}, {k.range}; default {k.default}\n    {k.help}")
    return "\n".join(blocks)
