"""Typed run configuration, validated when loaded: unknown keys are rejected with the closest valid key,
values are type- and range-checked, cross-field constraints are checked, all before any model loads.

A config is YAML with the sections ``model``, ``data``, ``method``, ``reference``, ``train`` and, for sDPO,
``stages``. ``key=value`` overrides use dotted keys (``train.lr=1e-5``, ``method.beta=0.2``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tether.errors import ConfigError, closest
from tether.methods.registry import METHODS, Bound, Method, get_method


@dataclass
class LoraConfig:
    """LoRA through ``peft``."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] | str = "all-linear"


@dataclass
class ModelConfig:
    """Which model to train. ``name``: ``smollm2`` (embedded default), a hub id, a local directory or a
    ``.gguf`` file."""

    name: str = "smollm2"
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gradient_checkpointing: bool = False
    lora: LoraConfig | None = None


@dataclass
class DataConfig:
    """Training data. ``train``/``eval``: a .jsonl/.json/.parquet path or ``hf:<dataset>``; ``split`` is the
    split read from an ``hf:`` train source and ``eval_split`` the one read from an ``hf:`` eval source
    (default: ``split``; the same source and split for both is refused). ``assistant_turns``: an SFT
    ``messages`` conversation is trained on every assistant turn (``all``, as LLaMA-Factory; an assistant
    message with ``weight: 0`` is not trained) or on its final assistant turn only (``last``)."""

    train: str = ""
    eval: str | None = None
    eval_fraction: float = 0.0
    split: str = "train"
    eval_split: str | None = None
    max_length: int = 512
    max_prompt_length: int | None = None
    chat_template: Literal["auto", "always", "never"] = "auto"
    assistant_turns: Literal["all", "last"] = "all"
    drop_long_prompts: bool = False
    limit: int | None = None
    eval_limit: int | None = None


@dataclass
class MethodConfig:
    """The method (``tether losses`` lists them) and its hyper-parameters, e.g. ``{name: dpo, beta: 0.1}``."""

    name: str = "dpo"
    params: dict[str, float] = field(default_factory=dict)


@dataclass
class ReferenceConfig:
    """How reference log-probs are obtained.

    ``mode``: ``auto`` (``adapter`` with LoRA, else ``precomputed``), ``copy`` (frozen copy in memory),
    ``adapter`` (the policy with its LoRA adapter disabled), ``precomputed`` (computed once, cached on
    disk: summed log-probs, and for a method that needs the reference's logits (ε-DPO) its final hidden
    states at the response tokens plus its output head, refused above ``max_cache_gb``), ``none`` (no
    reference; only for methods that do not need one). ``model``: a different reference model (default:
    the starting model).
    """

    mode: Literal["auto", "copy", "adapter", "precomputed", "none"] = "auto"
    model: str | None = None
    cache_dir: str | None = None
    max_cache_gb: float = 8.0
    """Largest precomputed reference-logits cache (ε-DPO: hidden states at response tokens) to build."""


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping. ``batch_size`` is per process and micro-batch; the global batch is
    ``batch_size × grad_accum × processes``."""

    output_dir: str = "runs/tether"
    seed: int = 0
    lr: float = 5e-6
    batch_size: int = 4
    grad_accum: int = 1
    max_steps: int | None = None
    epochs: float = 1.0
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    max_grad_norm: float | None = 1.0
    log_every: int = 1
    eval_every: int | None = None
    eval_at_start: bool | None = None
    """Evaluate before the first step, so eval curves start at the reference (one eval pass; ``None``:
    on whenever there is eval data)."""
    save_every: int | None = None
    save_total_limit: int | None = 2
    save_optimizer: bool = True
    resume: bool = False
    resume_allowed_changes: list[str] = field(default_factory=list)
    overwrite: bool = False
    disable_dropout: bool = True
    report_to: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    logprob_chunk: int = 1024
    share_prompt: bool = True
    """A pair runs as one sequence ``prompt | chosen | rejected`` (the prompt once; exact)."""
    packing: bool = True
    """A micro-batch's rows run packed into one sequence, attention per row, no padding (exact)."""
    save_merged: bool = False
    progress: bool = True
    sharding: Literal["none", "fsdp"] = "none"
    """``fsdp``: parameters, gradients and optimizer state sharded across the processes with PyTorch's
    FSDP2 (``fully_shard`` per decoder layer, then the whole model); checkpoints hold the full state and
    resume on any process count. Works on CPU processes (gloo) and GPUs; a no-op on one process."""


@dataclass
class StagesConfig:
    """sDPO: the preference data split into ordered chunks, one DPO stage each.

    ``by``: ``column`` (rows grouped by ``column`` value, stages in ``order``), ``random`` (stratified random
    split by ``column`` if given, with ``fractions``), or ``files`` (one file per stage).
    """

    by: Literal["column", "random", "files"] = "column"
    column: str | None = None
    order: list[str] = field(default_factory=list)
    fractions: list[float] = field(default_factory=list)
    files: list[str] = field(default_factory=list)


@dataclass
class Config:
    """A whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stages: StagesConfig | None = None

    # Filled by validate(): the method object and its resolved hyper-parameters.
    def resolved_method(self) -> tuple[Method, dict[str, float]]:
        method = get_method(self.method.name)
        return method, method.hparams(self.method.params)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["method"] = {"name": self.method.name, **self.method.params}
        return d


def _at_least(low: float) -> Bound:
    return Bound(low, math.inf, low_open=False)


_POSITIVE = Bound(0.0)  # (0, inf)
_FRACTION = Bound(0.0, 1.0, low_open=False)  # [0, 1)

RANGES: dict[str, Bound] = {
    "model.lora.r": _at_least(1),
    "model.lora.alpha": _at_least(1),
    "model.lora.dropout": _FRACTION,
    "data.eval_fraction": _FRACTION,
    "data.max_length": _at_least(2),
    "data.max_prompt_length": _at_least(1),
    "data.limit": _at_least(1),
    "data.eval_limit": _at_least(1),
    "train.seed": Bound(0, 2**32 - 1, low_open=False, high_open=False),  # numpy's seed range
    "train.lr": _POSITIVE,
    "train.batch_size": _at_least(1),
    "train.grad_accum": _at_least(1),
    "train.max_steps": _at_least(1),
    "train.epochs": _POSITIVE,
    "train.warmup_ratio": _FRACTION,
    "train.warmup_steps": _at_least(0),
    "train.weight_decay": _at_least(0),
    "train.adam_beta1": _FRACTION,
    "train.adam_beta2": _FRACTION,
    "train.adam_eps": _POSITIVE,
    "train.max_grad_norm": _POSITIVE,  # null: no clipping
    "train.log_every": _at_least(1),
    "train.eval_every": _at_least(1),
    "train.save_every": _at_least(1),
    "train.save_total_limit": _at_least(1),
    "train.logprob_chunk": _at_least(1),
    "stages.fractions": _POSITIVE,
    "reference.max_cache_gb": _POSITIVE,
}
"""The allowed range of every number in the config (``null`` stays allowed where the type has it), checked
as each value is read; every float must also be finite. Method hyper-parameters are bounded in
:mod:`tether.methods.registry`."""


def _num(x: float) -> str:
    return str(int(x)) if x == int(x) else f"{x:g}"


def _check_range(where: str, value: float) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{where}: must be a finite number, got {value}", where)
    bound = RANGES.get(where.split("[")[0])
    if bound is None or bound.contains(value):
        return
    if bound.high == math.inf:
        want = f"{'>' if bound.low_open else '≥'} {_num(bound.low)}"
    else:
        lo, hi = "(" if bound.low_open else "[", ")" if bound.high_open else "]"
        want = f"in {lo}{_num(bound.low)}, {_num(bound.high)}{hi}"
    raise ConfigError(f"{where}: must be {want}, got {value}", where)


# ------------------------------------------------------------------------------------------------
# Building dataclasses from plain dicts, strictly
# ------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


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
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} has the wrong type", where)
    if origin is Literal:
        if value not in args:
            raise ConfigError(
                f"{where}: {value!r} is not one of {', '.join(map(str, args))}{closest(str(value), map(str, args))}",
                where,
            )
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}", where)
        return [_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}", where)
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}", where)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}", where)
        _check_range(where, value)
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-5 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}", where)
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
            raise ConfigError(f"{where}: expected a string, got {value!r}", where)
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}", where)


def _build(cls: Any, raw: Any, where: str) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {raw!r}")
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


def _section_class(tp: Any) -> Any:
    """The dataclass a field holds (``X`` or ``X | None``), or None."""
    if dataclasses.is_dataclass(tp):
        return tp
    return next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), None)


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
        section = _section_class(hints[key]) if key in names else None
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


def _raise_unknown(found: list[tuple[str, str, str, list[str]]], origin: Callable[[str | None], str]) -> None:
    """One line for all unknown keys, grouped by where each was given (the file or an override)."""
    if not found:
        return
    if len(found) == 1:
        key, what, hint, valid = found[0]
        raise ConfigError(_at(origin(key), f"{key}: {what}{hint}; valid: {', '.join(valid) or 'none'}"), key)
    groups: dict[str, list[str]] = {}
    for key, _, hint, _ in found:
        groups.setdefault(origin(key), []).append(f"{key}{hint}")
    parts = [
        _at(where, f"unknown key{'s' * (len(keys) > 1)} {', '.join(keys)}") for where, keys in groups.items()
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
        raise ConfigError(f"method: expected a mapping like {{name: dpo, beta: 0.1}}, got {method!r}")
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
        raise ConfigError(f"override '{item}': expected key=value, e.g. train.lr=1e-5")
    key, _, text = item.partition("=")
    try:
        value = yaml.safe_load(text) if text != "" else ""
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
                raise ConfigError(f"override '{item}': '{k}' is not a section")
            node[k] = child = dict(child)
            node = child
        node[keys[-1]] = value
    return raw


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first: dict[Any, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in first:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice (first at line {first[key]})", key_node.start_mark
                )
            first[key] = line
        return super().construct_mapping(node, deep=deep)


def _read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror or e})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text ({e.reason}: byte 0x{data[e.start]:02x})") from None
    try:
        raw = yaml.load(text, Loader=_StrictLoader)  # a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}{line}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply") from None
    except ValueError as e:  # e.g. an integer with more digits than Python converts (4300)
        digits = re.search(r"\d{4301}", text)
        line = f":{text.count(chr(10), 0, digits.start()) + 1}" if digits else ""
        raise ConfigError(f"{path}{line}: {str(e).split(':')[0].lower()}") from None
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
                return f"override '{item}'"
        return str(path)

    return _from_dict(raw, origin)


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
    if d.eval is not None and d.eval == d.train and (d.eval_split or d.split) == d.split:
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
    if cfg.stages is not None:
        _validate_stages(cfg, method)


def check_launch(sharding: str = "none") -> None:
    """The launch settings this machine cannot run, as one ConfigError (before anything loads): accelerate's
    FSDP (``--use_fsdp`` or ``distributed_type: FSDP`` in its config) and DeepSpeed need CUDA GPUs (on CPU
    processes, ``train.sharding: fsdp`` shards with PyTorch's FSDP2 instead), and ``train.sharding: fsdp``
    does not combine with either (the model would be wrapped twice)."""
    import os

    import torch

    def on(var: str) -> bool:
        return os.environ.get(var, "false").strip().lower() in ("1", "true", "yes", "on")

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
