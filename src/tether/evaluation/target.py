"""What ``tether eval`` evaluates: a run directory, an sDPO run, or a model, and its reference.

Cheap: nothing is loaded and no GGUF is converted here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import tether.engine.models as models
from tether.errors import TetherError
from tether.rundir import RunDir

if TYPE_CHECKING:
    from tether.config import Config


@dataclass
class Target:
    """What ``model`` names: the weights to load and, for a run directory, its config."""

    spec: str
    model_path: str
    """A model directory, hub id, GGUF path or ``smollm2`` (resolved with :func:`models.resolve_model_dir`)."""
    adapter: Path | None = None
    """A LoRA adapter directory applied on top of ``model_path`` (a LoRA run without ``final/merged``)."""
    tokenizer_path: str | None = None
    run_dir: Path | None = None
    run_cfg: Config | None = None
    """The run's config, read through the config module (its defaults included)."""
    start_model: str | None = None
    """The run's starting model (the default reference)."""


def _run_target(spec: str, rd: RunDir) -> Target:
    cfg = rd.read_config()
    start = cfg.model.name
    final = rd.final_model()
    if final is not None:
        return Target(spec, final, None, final, rd.path, cfg, start)
    adapter = rd.final_adapter()
    if adapter is not None:
        tok = str(adapter) if (adapter / "tokenizer_config.json").is_file() else start
        return Target(spec, start, adapter, tok, rd.path, cfg, start)
    raise TetherError(
        f"{spec}: run directory has no model (no {rd.final} with model weights or a LoRA adapter); "
        "train it to the end or pass a model directory"
    )


def resolve_target(spec: str) -> Target:
    """A run directory (``config.yaml`` + ``final/``), an sDPO run (``stages.json`` + ``stage-N/``), or a
    model spec."""
    spec = str(spec)
    rd = RunDir(spec)
    if rd.path.is_dir() and rd.config.is_file():
        return _run_target(spec, rd)
    if rd.path.is_dir() and rd.stages.is_file():
        stages = rd.stage_dirs(need="config.yaml")
        if not stages:
            raise TetherError(f"{spec}: sDPO run directory without stage-N/ run directories")
        target = _run_target(spec, stages[-1])
        target.start_model = stages[0].read_config().model.name or target.start_model
        target.run_dir = rd.path
        return target
    models.check_model_spec(spec)
    return Target(spec, spec, None, None)


def same_model(a: str, b: str) -> bool:
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    if pa.exists() and pb.exists():
        return pa.resolve() == pb.resolve()
    return a == b


def reference_spec(target: Target, reference: str | None, notes: list[str]) -> str:
    """The reference to compare against: ``--reference``, else the run's starting model, else the model."""
    if reference is not None:
        try:
            models.check_model_spec(reference)
        except TetherError as e:
            raise TetherError(f"--reference: {e}") from None
        return reference
    if target.start_model:
        try:
            models.check_model_spec(target.start_model)
        except TetherError as e:
            raise TetherError(f"the run's starting model (the default reference): {e}") from None
        return target.start_model
    notes.append(
        "reference: the model itself (no --reference and not a run directory): KL, deviation and reward "
        "margins are 0 by construction and the win rate is 0.5"
    )
    return target.model_path


def load(target_path: str, adapter: Path | None, dtype: str, device: torch.device) -> Any:
    """Frozen eval-mode weights on ``device``, a LoRA adapter merged in when given."""
    model = models.load_model(target_path, dtype=dtype)
    if adapter is not None:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
        except (OSError, ValueError, KeyError) as exc:
            raise TetherError(
                f"{adapter}: cannot load the LoRA adapter ({str(exc).splitlines()[0]})"
            ) from None
    model.requires_grad_(False)
    return model.to(device).eval()
