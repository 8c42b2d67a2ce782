"""tether: fine-tune and preference-align causal LMs while keeping them tethered to their reference.

Python API::

    from tether import load_config, train
    result = train(load_config("examples/dpo.yaml", ["train.max_steps=10"]))

Losses are importable and callable on plain tensors: ``from tether.methods.losses import dpo``.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["METHODS", "Config", "from_dict", "load_config", "train", "validate"]

_LAZY = {
    "train": "tether.training.job",
    "validate": "tether.training.job",
    "Config": "tether.config",
    "load_config": "tether.config",
    "from_dict": "tether.config",
    "METHODS": "tether.methods.registry",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tether' has no attribute {name!r}")
