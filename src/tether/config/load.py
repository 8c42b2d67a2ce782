"""Reading a config: YAML (strict), ``key=value`` overrides, every value built into the dataclasses of
:mod:`tether.config.schema` with its type and range checked, unknown keys named with the closest valid one,
then the cross-field checks (:func:`validate`) and the launch checks (:func:`check_launch`). Every problem is
one :class:`~tether.errors.ConfigError` line naming the key and where it was given.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml

from tether.config.schema import (
    RANGES,
    Config,
    MethodConfig,
    range_text,
    section_class,
    type_name,
)
from tether.errors import ConfigError, closest, shown, shown_text
from tether.methods.registry import METHODS, Method
from tether.safe_yaml import check_size, load_yaml

# ------------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, strictly
# ------------------------------------------------------------------------------------------------


def _check_range(where: str, value: float) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, got {value}", where)
    bound = RANGES.get(where.split("[")[0])
    if bound is None or bound.contains(value):
        return
    raise ConfigError(f"{where}: must be {range_text(bound)}, got {value}", where)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{where}: {shown(value)} has the wrong type", where
        )
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{where}: {shown(value)} is not one of {', '.join(map(str, args))}{closest(str(value), map(str, args))}",
                where,
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {shown(value)}", where)
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {shown(value)}", where)
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {shown(value)}", where)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {shown(value)}", where)
        _check_range(where, value)
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {shown(value)}", where)
        try:
            value = float(value)
        except OverflowError:  # an int too large for a float
            raise ConfigError(
                f"{where}: must be a finite number, got a {len(str(value))}-digit integer", where
            ) from None
        _check_range(where, value)
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {shown(value)}", where)
        return value
    raise ConfigError(f"{where}: unsupported type {type_name(tp)}", where)


def _build(cls: Any, raw: Any, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {shown(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in raw.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            raise ConfigError(
                f"{path}: unknown key{closest(str(key), names)}; valid: {', '.join(names)}", path
            )
        kwargs[key] = _coerce(value, hints[key], path)
    return cls(**kwargs)


def _unknown_keys(cls: Any, raw: Any, where: str) -> list[tuple[str, str, str, list[str]]]:
    """Every key in ``raw`` (all sections, recursively) that ``cls`` does not have: (dotted key, what is wrong,
    the closest valid name as ``closest`` words it, the valid names). Method hyper-parameters are checked
    against the method's, when the method is known."""
    if not isinstance(raw, dict):
        return []
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    found = []
    for key, value in raw.items():
        path = f"{where}.{key}" if where else str(key)
        section = section_class(hints[key]) if key in names else None
        if key not in names:
            found.append((path, "unknown key", closest(str(key), names), names))
        elif section is not None:
            found += _unknown_keys(section, value, path)
        elif cls is MethodConfig and key == "params" and isinstance(value, dict):
            method = METHODS.get(raw.get("name", "dpo"))
            valid = list(method.defaults) if method is not None else None
            for name in value if valid is not None else []:
                if name not in valid:
                    what = f"unknown hyper-parameter for method '{method.name}'"
                    found.append((f"{where}.{name}", what, closest(str(name), valid), valid))
    return found


def _listed(items: list[str], most: int = 10) -> str:
    more = f" and {len(items) - most} more" if len(items) > most else ""
    return ", ".join(items[:most]) + more


def _raise_unknown(found: list[tuple[str, str, str, list[str]]], origin: Callable[[str | None], str]) -> None:
    """One line for all unknown keys, grouped by where each was given (the file or an override)."""
    if not found:
        return
    if len(found) == 1:
        key, what, hint, valid = found[0]
        text = f"{shown_text(key)}: {what}{hint}; valid: {', '.join(valid) or 'none'}"
        raise ConfigError(_at(origin(key), text), key)
    groups: dict[str, list[str]] = {}
    for key, _, hint, _ in found:
        groups.setdefault(origin(key), []).append(f"{shown_text(key)}{hint}")
    parts = [
        _at(where, f"unknown key{'s' * (len(keys) > 1)} {_listed(keys)}") for where, keys in groups.items()
    ]
    raise ConfigError("; ".join(parts), found[0][0])


def _split_method(raw: dict[str, Any]) -> dict[str, Any]:
    """``method: {name: dpo, beta: 0.1}`` → MethodConfig(name='dpo', params={'beta': 0.1})."""
    method = raw.get("method")
    if isinstance(method, str):
        method = {"name": method}
    if method is None:
        return raw
    if not isinstance(method, dict):
        raise ConfigError(f"method: expected a mapping like {{name: dpo, beta: 0.1}}, got {shown(method)}")
    method = dict(method)
    if "params" in method and set(method) <= {"name", "params"}:
        return raw  # already split
    name = method.pop("name", "dpo")
    return {**raw, "method": {"name": name, "params": method}}


def from_dict(raw: dict[str, Any]) -> Config:
    """Build and validate a :class:`Config` from a plain mapping."""
    return _from_dict(raw, lambda key: "")


def _from_dict(raw: dict[str, Any], origin: Callable[[str | None], str]) -> Config:
    """:func:`from_dict`, each error prefixed with ``origin(key)`` (where the key at fault was given) if any."""
    if not isinstance(raw, dict):
        raise ConfigError(f"config: expected a mapping at the top level, got {type(raw).__name__}")
    try:
        raw = _split_method(raw)
    except ConfigError as e:
        raise ConfigError(_at(origin("method"), e), "method") from None
    _raise_unknown(_unknown_keys(Config, raw, ""), origin)
    try:
        cfg = _build(Config, raw, "")
        validate(cfg)
    except ConfigError as e:
        raise ConfigError(_at(origin(e.key), e), e.key) from None
    return cfg


def _at(where: str, problem: object) -> str:
    return f"{where}: {problem}" if where else str(problem)


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override '{shown_text(item)}': expected key=value, e.g. train.lr=1e-5")
    key, _, text = item.partition("=")
    try:
        value = load_yaml(text, f"override '{shown_text(item)}'") if text != "" else ""
    except yaml.YAMLError:
        value = text
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides to a raw (not yet validated) config mapping."""
    raw = _split_method(dict(raw))
    for item in overrides:
        keys, value = _parse_override(item)
        if keys[0] == "method" and len(keys) == 2 and keys[1] != "name":
            keys = ["method", "params", keys[1]]
        node = raw
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"override '{shown_text(item)}': '{k}' is not a section")
            node[k] = child = dict(child)
            node = child
        node[keys[-1]] = value
    return raw


def _read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        check_size(p.stat().st_size, str(path))
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text ({e.reason}: byte 0x{data[e.start]:02x})") from None
    try:
        raw = load_yaml(text, str(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}{line}: {problem}") from None
    if raw is None:
        raise ConfigError(f"{path}: config file is empty")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read, override and validate a YAML config. Raises :class:`ConfigError` naming the key at fault and
    where it was given: the file, or the ``key=value`` override that set it."""
    overrides = overrides or []
    raw = apply_overrides(_read_yaml(path), overrides)
    given = [(".".join(_parse_override(item)[0]), item) for item in overrides]

    def origin(key: str | None) -> str:
        for k, item in reversed(given):  # the last override of a key is the one that counts
            if key is not None and (key == k or key.startswith((f"{k}.", f"{k}["))):
                return f"override '{shown_text(item)}'"
        return str(path)

    return _from_dict(raw, origin)


# ------------------------------------------------------------------------------------------------
# Cross-field and launch checks
# ------------------------------------------------------------------------------------------------


def validate(cfg: Config) -> None:
    """Cross-field and range checks (everything that needs no model and no data)."""
    method, _ = cfg.resolved_method()
    t, d = cfg.train, cfg.data
    if not d.train and not (cfg.stages and cfg.stages.by == "files"):
        raise ConfigError("data.train: required (a .jsonl/.json/.parquet file or hf:<dataset>)", "data.train")
    if not t.output_dir.strip():
        raise ConfigError("train.output_dir: must not be empty", "train.output_dir")
    _check_dir("train.output_dir", t.output_dir)
    if cfg.reference.cache_dir is not None:
        _check_dir("reference.cache_dir", cfg.reference.cache_dir)
    for i, sink in enumerate(t.report_to):
        if importlib.util.find_spec(sink) is None:
            raise ConfigError(f"train.report_to[{i}]: {sink} needs `pip install {sink}`", "train.report_to")
    if d.max_prompt_length is not None and d.max_prompt_length >= d.max_length:
        raise ConfigError(
            f"data.max_prompt_length: {d.max_prompt_length} leaves no room for the response "
            f"(data.max_length={d.max_length})",
            "data.max_prompt_length",
        )
    hub = d.eval is not None and d.eval.startswith("hf:")
    if hub and d.eval == d.train and (d.eval_split or d.split) == d.split:
        raise ConfigError(
            f"data.eval_split: data.eval is the training source and would read its training split "
            f"'{d.split}'; set data.eval_split (e.g. test) or use data.eval_fraction",
            "data.eval_split",
        )
    mode = cfg.reference.mode
    if mode == "adapter" and cfg.model.lora is None:
        raise ConfigError("reference.mode: 'adapter' needs LoRA (model.lora); use 'copy' or 'precomputed'")
    if mode == "adapter" and cfg.reference.model is not None:
        raise ConfigError("reference.mode: 'adapter' uses the policy's own base; remove reference.model")
    if mode == "none" and method.needs_reference:
        raise ConfigError(
            f"reference.mode: method '{method.name}' needs a reference model; 'none' is not allowed"
        )
    if mode not in ("auto", "none") and not method.uses_reference:
        raise ConfigError(
            f"reference.mode: method '{method.name}' is reference-free; it loads no reference (use 'auto' or 'none')"
        )
    if method.live_reference:
        _validate_live_reference(cfg, method)
    if method.head == "score" and t.sharding != "none":
        raise ConfigError(
            f"train.sharding: method '{method.name}' trains a score head, which sharding does not support "
            "yet; use train.sharding: none",
            "train.sharding",
        )
    if cfg.stages is not None:
        _validate_stages(cfg, method)


def _validate_live_reference(cfg: Config, method: Method) -> None:
    """A reference updated during training (TR-DPO) is a frozen copy of the starting model."""
    name = method.name
    if cfg.reference.mode == "precomputed":
        raise ConfigError(
            f"reference.mode: method '{name}' updates its reference during training, which a precomputed "
            "table cannot follow; use 'copy' or 'auto'",
            "reference.mode",
        )
    if cfg.model.lora is not None:
        raise ConfigError(
            f"model.lora: method '{name}' mixes the policy into its reference (ref ← (1−α)·ref + α·θ), but "
            "with LoRA the reference is the adapter-disabled base, which such an update cannot represent; "
            "use full fine-tuning (remove model.lora)",
            "model.lora",
        )
    if cfg.reference.model is not None:
        raise ConfigError(
            f"reference.model: method '{name}' mixes the policy into its reference, so the reference starts "
            "as the policy's starting model; remove reference.model",
            "reference.model",
        )


def check_launch(cfg: Config | None = None) -> None:
    """The launch settings this machine or ``cfg`` cannot run, as one ConfigError (before anything loads):
    accelerate's FSDP (``--use_fsdp`` or ``distributed_type: FSDP`` in its config) and DeepSpeed need CUDA
    GPUs (on CPU processes, ``train.sharding: fsdp`` shards with PyTorch's FSDP2 instead), and
    ``train.sharding: fsdp`` does not combine with either (the model would be wrapped twice); a method with a
    batch plan (β-DPO) needs enough pairs per step for its batch statistics, counted with the launch's
    processes (``WORLD_SIZE``, 1 without a launcher)."""
    import os

    import torch

    def on(var: str) -> bool:
        return os.environ.get(var, "false").strip().lower() in ("1", "true", "yes", "on")

    sharding = cfg.train.sharding if cfg is not None else "none"
    cpu_command = "torchrun --nproc_per_node 2 -m tether train CONFIG train.sharding=fsdp"
    if sharding == "fsdp":
        try:
            from torch.distributed.fsdp import fully_shard  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"train.sharding: fsdp needs PyTorch's FSDP2 (torch ≥ 2.6); this is torch {torch.__version__}",
                "train.sharding",
            ) from None
    for var, name, how in (
        (
            "ACCELERATE_USE_FSDP",
            "FSDP",
            "accelerate launch --use_fsdp or distributed_type: FSDP in its config",
        ),
        (
            "ACCELERATE_USE_DEEPSPEED",
            "DeepSpeed",
            "accelerate launch --use_deepspeed or distributed_type: DEEPSPEED",
        ),
    ):
        if not on(var):
            continue
        if not torch.cuda.is_available():
            raise ConfigError(
                f"accelerate: {name} was requested ({var}=true: {how}) but this machine has no CUDA GPU; "
                f"to shard on CPU processes use train.sharding: fsdp, e.g. `{cpu_command}`"
            )
        if sharding != "none":
            raise ConfigError(
                f"train.sharding: {sharding} shards the model itself, but accelerate's {name} was requested too "
                f"({var}=true); use one of them (train.sharding: none under accelerate's {name})",
                "train.sharding",
            )

    if cfg is not None:
        method, hparams = cfg.resolved_method()
        t, world = cfg.train, int(os.environ.get("WORLD_SIZE", "1"))
        plan, micro = method.batch_plan, t.batch_size * world
        problem = plan.problem(hparams, micro, micro * t.grad_accum) if plan is not None else None
        if problem:
            raise ConfigError(
                f"train.batch_size: {problem} (batch_size {t.batch_size} × grad_accum {t.grad_accum} × "
                f"{world} process{'es' * (world > 1)})",
                "train.batch_size",
            )


def _check_dir(key: str, value: str) -> None:
    """A directory tether writes into must be one, or creatable as one (no file in the way)."""
    out = Path(value).expanduser()
    for p in (out, *out.parents):
        if p.is_dir():
            return
        if p.exists():
            what = "is a file, not a directory" if p == out else f"cannot be created: {p} is a file"
            raise ConfigError(f"{key}: {value} {what}", key)


def _validate_stages(cfg: Config, method: Method) -> None:
    s = cfg.stages
    assert s is not None
    if method.data != "pairs" or not method.needs_reference:
        raise ConfigError(
            f"stages: sDPO stages need a reference-based preference method, not '{method.name}'"
        )
    if s.by == "column":
        if not s.column:
            raise ConfigError("stages.column: required when stages.by is 'column'")
        if len(s.order) < 1:
            raise ConfigError("stages.order: list the column values, one per stage, in training order")
        if len(set(s.order)) != len(s.order):
            raise ConfigError("stages.order: a value appears twice")
    elif s.by == "random":
        if len(s.fractions) < 1:
            raise ConfigError("stages.fractions: give one fraction per stage, e.g. [0.5, 0.5]")
        if any(f <= 0 for f in s.fractions):
            raise ConfigError(f"stages.fractions: every fraction must be > 0, got {s.fractions}")
        if abs(sum(s.fractions) - 1.0) > 1e-6:
            raise ConfigError(f"stages.fractions: must sum to 1, got {sum(s.fractions):g}")
    elif s.by == "files":
        if len(s.files) < 1:
            raise ConfigError("stages.files: list one data file per stage")
    n = len({"column": s.order, "random": s.fractions, "files": s.files}[s.by])
    if s.stage is not None and s.stage > n:
        raise ConfigError(f"stages.stage: {s.stage}, but there are {n} stages", "stages.stage")
