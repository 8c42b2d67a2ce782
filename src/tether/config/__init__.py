"""Typed run configuration, validated when loaded: unknown keys are rejected with the closest valid key,
values are type- and range-checked, cross-field constraints are checked, all before any model loads.

A config is YAML with the sections ``model``, ``data``, ``method``, ``reference``, ``train`` and, for sDPO,
``stages``. ``key=value`` overrides use dotted keys (``train.lr=1e-5``, ``method.beta=0.2``).

Three modules: :mod:`~tether.config.schema` (the sections as dataclasses, the ranges),
:mod:`~tether.config.load` (reading, overrides, type and range checks, cross-field and launch checks)
and :mod:`~tether.config.docs` (the key reference of ``tether config`` and docs/config.md). Their public
names are importable from here.
"""

from tether.config.docs import (
    KeyDoc,
    config_keys,
    config_markdown,
    config_text,
    field_help,
    hyperparameter_keys,
)
from tether.config.load import (
    _parse_override,
    apply_overrides,
    check_launch,
    from_dict,
    load_config,
    validate,
)
from tether.config.schema import (
    RANGES,
    Config,
    DataConfig,
    LoraConfig,
    MethodConfig,
    ModelConfig,
    ReferenceConfig,
    StagesConfig,
    TrainConfig,
    range_text,
)
from tether.errors import ConfigError

__all__ = [
    "RANGES",
    "Config",
    "ConfigError",
    "DataConfig",
    "KeyDoc",
    "LoraConfig",
    "MethodConfig",
    "ModelConfig",
    "ReferenceConfig",
    "StagesConfig",
    "TrainConfig",
    "_parse_override",
    "apply_overrides",
    "check_launch",
    "config_keys",
    "config_markdown",
    "config_text",
    "field_help",
    "from_dict",
    "hyperparameter_keys",
    "load_config",
    "range_text",
    "validate",
]
