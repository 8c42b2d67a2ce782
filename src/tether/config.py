"""Typed run configuration, validated when loaded: unknown keys are rejected with the closest valid key,
values are type- and range-checked, cross-field constraints are checked, all before any model loads.

A config is YAML with the sections ``model``, ``data``, ``method``, ``reference``, ``train`` and, for sDPO,
``stages``. ``key=value`` overrides use dotted keys (``train.lr=1e-5``, ``method.beta=0.2``).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib.util
import inspect
import math
import re
import textwrap
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tether.data.tokenize import Tokenization
from tether.errors import ConfigError, closest, shown, shown_text
from tether.methods.registry import ANY, HYPERPARAMETERS, METHODS, Bound, Method, get_method
from tether.safe_yaml import check_size, load_yaml


@dataclass
class LoraConfig:
    """LoRA through ``peft`` (``model.lora``; omit the section for full fine-tuning)."""

    r: int = 16
    """Rank of the LoRA update matrices."""
    alpha: int = 32
    """LoRA scaling numerator: updates are scaled by ``alpha / r``."""
    dropout: float = 0.05
    """Dropout on the LoRA input (set to 0 with every other dropout while ``train.disable_dropout`` is
    true, the default)."""
    target_modules: list[str] | str = "all-linear"
    """Module names to adapt (e.g. ``[q_proj, v_proj]``), or ``all-linear`` for every linear layer but the
    output head."""


@dataclass
class ModelConfig:
    """Which model to train."""

    name: str = "smollm2"
    """``smollm2`` (the embedded SmolLM2-135M-Instruct, converted once from its GGUF), a hub id, a local
    model directory or a ``.gguf`` file."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype the weights are loaded and trained in."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass (less memory, about a third more compute)."""
    lora: LoraConfig | None = None
    """Train a LoRA adapter instead of all weights (a mapping with the ``model.lora.*`` keys; null: full
    fine-tuning)."""


@dataclass
class DataConfig:
    """Training data."""

    train: str = ""
    """Training rows: a .jsonl/.json/.parquet path or ``hf:<dataset>`` (required, unless ``stages.by:
    files``)."""
    eval: str | None = None
    """Held-out rows, same formats (evaluated every ``train.eval_every`` steps and at the end)."""
    eval_fraction: float = 0.0
    """Without ``data.eval``: hold out this fraction of the training rows (no prompt shared with train)."""
    split: str = "train"
    """The split of an ``hf:`` training dataset to read (e.g. ``train_prefs``)."""
    eval_split: str | None = None
    """The split of an ``hf:`` eval dataset to read (null: ``split``); the training dataset and split as eval
    is refused."""
    max_length: int = 512
    """Token budget per row (prompt + response); longer responses are cut at their end and counted."""
    max_prompt_length: int | None = None
    """Keep only the last this-many prompt tokens (null: prompts are not cut)."""
    chat_template: Literal["auto", "always", "never"] = "auto"
    """How string rows are rendered: ``auto`` (the model's chat template when it has one), ``always``,
    ``never`` (raw text, EOS appended). Message lists always use the template; a string already holding
    the template's markers is used as written."""
    assistant_turns: Literal["all", "last"] = "all"
    """Which assistant turns of an SFT conversation get loss: ``all`` (every assistant message without
    ``weight: 0``; the turns between them are context) or ``last`` (the final one only)."""
    drop_long_prompts: bool = False
    """Drop (and count) rows whose prompt leaves no room for a response, instead of an error."""
    limit: int | None = None
    """Use only the first this-many training rows (null: all)."""
    eval_limit: int | None = None
    """Use only the first this-many eval rows (null: all)."""

    def tokenization(self) -> Tokenization:
        """How these rows become token ids: the one value training, evaluation and ``tether generate``
        tokenize with (a plain model, with no run config, gets ``DataConfig()``'s)."""
        return Tokenization(
            self.max_length,
            self.max_prompt_length,
            self.chat_template,
            self.drop_long_prompts,
            self.assistant_turns,
        )


@dataclass
class MethodConfig:
    """The method (``tether losses`` lists them) and its hyper-parameters, e.g. ``{name: dpo, beta: 0.1}``."""

    name: str = "dpo"
    """The training method (``tether losses`` lists them with their papers)."""
    params: dict[str, float] = field(default_factory=dict)
    """The method's hyper-parameters; written beside ``name`` (``method: {name: dpo, beta: 0.1}``)."""


@dataclass
class ReferenceConfig:
    """How reference log-probs are obtained."""

    mode: Literal["auto", "copy", "adapter", "precomputed", "none"] = "auto"
    """``auto`` (``adapter`` with LoRA, else ``precomputed``; ``copy`` for a method whose reference is
    updated during training, TR-DPO), ``copy`` (frozen copy in memory),
    ``adapter`` (the policy with its LoRA adapter disabled), ``precomputed`` (computed once, cached on
    disk: summed log-probs, and for a method that needs the reference's logits (ε-DPO) its final hidden
    states at the response tokens plus its output head, refused above ``max_cache_gb``), ``none`` (no
    reference; only for methods that do not need one)."""
    model: str | None = None
    """A different reference model, same tokenizer (null: the starting model)."""
    cache_dir: str | None = None
    """Where precomputed references are cached (null: ``$TETHER_CACHE`` or ``~/.cache/tether``)."""
    max_cache_gb: float = 8.0
    """Largest precomputed reference-logits cache (ε-DPO: hidden states at response tokens) to build."""


@dataclass
class TrainConfig:
    """Optimisation and bookkeeping."""

    output_dir: str = "runs/tether"
    """The run directory written (config, metrics, checkpoints, ``final/``)."""
    seed: int = 0
    """Seed of the data order, dropout and initialisation of new weights."""
    lr: float = 5e-6
    """Peak learning rate (AdamW)."""
    batch_size: int = 4
    """Rows per process and micro-batch; the global batch is ``batch_size × grad_accum × processes``."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    max_steps: int | None = None
    """Optimizer steps to run (null: ``epochs`` decides)."""
    epochs: float = 1.0
    """Passes over the training rows, when ``max_steps`` is null (fractions allowed)."""
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    """Learning-rate decay after the warm-up."""
    warmup_ratio: float = 0.0
    """Warm-up length as a fraction of the run (used when ``warmup_steps`` is 0)."""
    warmup_steps: int = 0
    """Warm-up length in steps (wins over ``warmup_ratio``)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW β1."""
    adam_beta2: float = 0.999
    """AdamW β2."""
    adam_eps: float = 1e-8
    """AdamW ε."""
    max_grad_norm: float | None = 1.0
    """Clip the gradient norm to this (null: no clipping)."""
    log_every: int = 1
    """Write a ``metrics.jsonl`` line every this-many steps (and at the last)."""
    eval_every: int | None = None
    """Evaluate on the eval rows every this-many steps (null: only at the start and the end)."""
    eval_at_start: bool | None = None
    """Evaluate before the first step, so eval curves start at the reference (one eval pass; null:
    on whenever there is eval data)."""
    save_every: int | None = None
    """Checkpoint every this-many steps (null: only the final step, which is always checkpointed)."""
    save_total_limit: int | None = 2
    """Keep the newest this-many checkpoints (null: all)."""
    save_optimizer: bool = True
    """Checkpoints hold optimizer and scheduler state (false: weights only, smaller; a resume restarts the
    optimizer moments)."""
    save_on_signal: bool = True
    """On SIGTERM (a cluster preempting the job), finish the current step, write a checkpoint and exit with
    code 143; a second SIGTERM stops at once (false: stop at once, losing the steps since the last save)."""
    resume: bool = False
    """Continue from the newest checkpoint in ``output_dir`` (the config must match)."""
    resume_allowed_changes: list[str] = field(default_factory=list)
    """Config keys a resume may change besides the bookkeeping ones (e.g. ``[train.lr]``)."""
    overwrite: bool = False
    """Replace a run already in ``output_dir`` instead of refusing."""
    disable_dropout: bool = True
    """Set the model's dropout to 0 (as preference trainers do: the policy and reference see the same
    network)."""
    report_to: list[Literal["tensorboard", "wandb"]] = field(default_factory=list)
    """Also log metrics to these sinks."""
    logprob_chunk: int = 256
    """Response positions per chunk through the output head: the peak memory of the logits is a few
    ``[logprob_chunk, vocab]`` fp32 tensors (256 × 49152 × 4 B = 50 MB each for SmolLM2)."""
    share_prompt: bool = True
    """A pair runs as one sequence ``prompt | chosen | rejected`` (the prompt once; exact)."""
    packing: bool = True
    """A micro-batch's rows run packed into one sequence, attention per row, no padding (exact)."""
    save_merged: bool = False
    """With LoRA, also save the merged full model in ``final/merged``."""
    progress: bool = True
    """Show progress bars and the model-loading lines on stderr."""
    sharding: Literal["none", "fsdp"] = "none"
    """``fsdp``: parameters, gradients and optimizer state sharded across the processes with PyTorch's
    FSDP2 (``fully_shard`` per decoder layer, then the whole model); checkpoints hold the full state and
    resume on any process count. Works on CPU processes (gloo) and GPUs; a no-op on one process."""


@dataclass
class StagesConfig:
    """sDPO: the preference data split into ordered chunks, one DPO stage each."""

    by: Literal["column", "random", "files"] = "column"
    """``column`` (rows grouped by ``column`` value, stages in ``order``), ``random`` (stratified random
    split by ``column`` if given, with ``fractions``), or ``files`` (one file per stage)."""
    column: str | None = None
    """The data column that names each row's stage (``by: column``) or stratifies the split (``random``)."""
    order: list[str] = field(default_factory=list)
    """``by: column``: the column's values, one per stage, in training order."""
    fractions: list[float] = field(default_factory=list)
    """``by: random``: one fraction of the rows per stage, summing to 1."""
    files: list[str] = field(default_factory=list)
    """``by: files``: one data file per stage, in training order."""


@dataclass
class Config:
    """A whole run."""

    model: ModelConfig = field(default_factory=ModelConfig)
    """Which model to train."""
    data: DataConfig = field(default_factory=DataConfig)
    """Training (and held-out) data."""
    method: MethodConfig = field(default_factory=MethodConfig)
    """The method and its hyper-parameters."""
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    """How the reference model's log-probs are obtained."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Optimisation and bookkeeping."""
    stages: StagesConfig | None = None
    """sDPO: train in ordered stages, each referenced by the previous stage's model (null: one run)."""

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
    raise ConfigError(f"{where}: must be {range_text(bound)}, got {value}", where)


def range_text(bound: Bound) -> str:
    """``> 0``, ``≥ 1``, ``in [0, 1)``: how a range is worded in errors and in ``tether config``."""
    if bound.low == -math.inf and bound.high == math.inf:
        return "any number"
    if bound.high == math.inf:
        return f"{'>' if bound.low_open else '≥'} {_num(bound.low)}"
    if bound.low == -math.inf:
        return f"{'<' if bound.high_open else '≤'} {_num(bound.high)}"
    lo, hi = "(" if bound.low_open else "[", ")" if bound.high_open else "]"
    return f"in {lo}{_num(bound.low)}, {_num(bound.high)}{hi}"


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
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}", where)


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
                return f"override '{shown_text(item)}'"
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


# ------------------------------------------------------------------------------------------------
# The key reference (``tether config``, docs/config.md): generated from the dataclasses above
# ------------------------------------------------------------------------------------------------


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
    return _type_name(tp)


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
            section = _section_class(tp)
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
