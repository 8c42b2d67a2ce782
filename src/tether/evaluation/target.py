"""What ``tether eval`` evaluates: a run directory, an sDPO run, or a model, and its reference.

Cheap: nothing is loaded and no GGUF is converted here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import tether.engine.models as models
from tether.errors import TetherError
from tether.rundir import CHECKPOINT_WEIGHTS, RunDir

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
    checkpoint: Path | None = None
    """A training checkpoint (``checkpoints/step-N``) whose weights replace the starting model's."""
    head: str = "lm"
    """``score`` for a reward model (a run whose method declares that head, or a local model directory
    whose config is a ``*ForSequenceClassification``), else ``lm``."""


def _run_target(spec: str, rd: RunDir) -> Target:
    cfg = rd.read_config()
    start = cfg.model.name
    head = cfg.resolved_method()[0].head
    final = rd.final_model()
    if final is not None:
        return Target(spec, final, None, final, rd.path, cfg, start, head=head)
    adapter = rd.final_adapter()
    if adapter is not None:
        tok = str(adapter) if (adapter / "tokenizer_config.json").is_file() else start
        return Target(spec, start, adapter, tok, rd.path, cfg, start, head=head)
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
    return Target(spec, spec, None, None, head=_local_head(rd.path))


def _local_head(path: Path) -> str:
    """``score`` for a local model directory whose config is a sequence-classification model."""
    try:
        archs = json.loads((path / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return "lm"
    return "score" if any(str(a).endswith("ForSequenceClassification") for a in archs) else "lm"


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


def load(
    target_path: str,
    adapter: Path | None,
    dtype: str,
    device: torch.device,
    progress: bool = True,
    head: str = "lm",
) -> Any:
    """Frozen eval-mode weights on ``device``, a LoRA adapter merged in when given; ``head="score"``: as a
    one-output sequence-classification model."""
    model = models.load_model(target_path, dtype=dtype, progress=progress, head=head)
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


# ------------------------------------------------------------------------------------- checkpoints


def checkpoint_step(ckpt: Path) -> int:
    return int(ckpt.name.split("-", 1)[1])


def checkpoint_targets(spec: str, every: int | None) -> tuple[list[Target], list[int]]:
    """A run's checkpoints (every one, or those at a multiple of ``every`` steps) and its final model, as
    targets with their steps; the last row is always ``final/`` (what ``tether eval RUN`` evaluates), so
    the checkpoint of the final step, which holds the same weights, is not evaluated again. Every
    checkpoint is checked before any weight loads (an incomplete one is one line)."""
    rd = RunDir(spec)
    if not (rd.path.is_dir() and rd.config.is_file()):
        raise TetherError(f"--checkpoints: {spec} is not a run directory (no config.yaml)")
    final = _run_target(spec, rd)
    cfg = rd.read_config()
    steps = rd.read_summary().get("steps")
    if not isinstance(steps, int):
        raise TetherError(f"{spec}: the run has not finished (no steps in summary.json)")
    targets, out_steps = [], []
    for d in rd.checkpoint_dirs():
        step = checkpoint_step(d)
        if step >= steps or (every is not None and step % every != 0):
            continue
        if not (d / CHECKPOINT_WEIGHTS).is_file():
            raise TetherError(f"{d}: incomplete checkpoint (no {CHECKPOINT_WEIGHTS}); delete it or retrain")
        target = Target(
            str(d),
            str(cfg.model.name),
            None,
            str(cfg.model.name),
            rd.path,
            cfg,
            final.start_model,
            head=final.head,
        )
        target.checkpoint = d
        targets.append(target)
        out_steps.append(step)
    targets.append(final)
    out_steps.append(steps)
    return targets, out_steps


def load_checkpoint_weights(model: Any, ckpt: Path) -> None:
    """Load a checkpoint's weights into ``model`` (the run's starting architecture, LoRA applied when the
    run used it), in place. Reads only ``model.safetensors`` (no pickles): the state of the
    :class:`~tether.engine.logprobs.LogProbModel` the trainer wraps the model in, so every key starts with
    ``model.``. The one place that knows the checkpoint layout; a missing or mismatched file is one line.
    """
    from safetensors.torch import load_file

    path = ckpt / CHECKPOINT_WEIGHTS
    if not path.is_file():
        raise TetherError(f"{ckpt}: incomplete checkpoint (no {CHECKPOINT_WEIGHTS})")
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error type for a torn or foreign file
        raise TetherError(f"{path}: unreadable ({str(e).splitlines()[0]})") from None
    state = {k.removeprefix("model."): v for k, v in state.items()}
    result = model.load_state_dict(state, strict=False)
    aliases: dict[int, set[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(p.data_ptr(), set()).add(name)
    tied = {n for names in aliases.values() if len(names) > 1 and names & set(state) for n in names}
    missing = set(result.missing_keys) - tied
    if missing or result.unexpected_keys:
        what = sorted(missing)[:1] or sorted(result.unexpected_keys)[:1]
        raise TetherError(
            f"{path}: does not match the run's model ({len(missing)} missing, "
            f"{len(result.unexpected_keys)} unexpected tensors, e.g. {what[0]})"
        )


def load_checkpoint(target: Target, dtype: str, device: torch.device, progress: bool = True) -> Any:
    """A checkpoint target's model: the starting model (with the run's LoRA), the checkpoint's weights,
    merged, frozen, on ``device``."""
    assert target.checkpoint is not None and target.run_cfg is not None
    lora = target.run_cfg.model.lora
    model = models.load_model(
        models.resolve_model_dir(target.model_path, progress=progress),
        dtype=dtype,
        lora=None if lora is None else vars(lora),
        progress=progress,
        head=target.head,
    )
    load_checkpoint_weights(model, target.checkpoint)
    if models.is_lora(model):
        model = models.merge_lora(model)
    model.requires_grad_(False)
    return model.to(device).eval()
