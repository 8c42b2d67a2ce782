"""Checkpoints of a training run: what one holds, how it is written (atomically), checked before anything
is loaded, loaded, rotated, and which one is the last *good* one.

A checkpoint ``checkpoints/step-N/`` holds the model (``model.safetensors``), the optimizer and RNG states
(accelerate's files, loaded with ``weights_only=True``; or with ``train.sharding: fsdp`` the full state as
safetensors + JSON, :mod:`tether.training.sharding`), a live reference's weights (``reference.safetensors``,
TR-DPO) and ``trainer_state.json``: step, scheduler, the method's state (β), the config and the step's
health. Nothing in it is unpickled: a file that would build anything but tensors is refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
from pathlib import Path

import torch

from tether.errors import TetherError
from tether.rundir import CHECKPOINTS, TRAINER_STATE, RunDir
from tether.training import sharding

MODEL_FILE = sharding.MODEL_FILE  # the same name in both layouts
OPTIMIZER_FILE = "optimizer.bin"
REFERENCE_FILE = "reference.safetensors"  # a live reference's weights (TR-DPO)
WEIGHT_GROWTH = 1e3  # a checkpoint whose largest weight grew this many times is not "good"
DIVERGING = 100.0  # a gradient norm this many times the median of the earlier ones is diverging


def _later_shared_names(model: torch.nn.Module) -> set[str]:
    """State-dict names whose tensor shares storage with an earlier name (tied weights, saved once)."""
    seen: set[int] = set()
    later = set()
    for k, v in model.state_dict().items():
        ptr = v.untyped_storage().data_ptr()
        if ptr in seen:
            later.add(k)
        seen.add(ptr)
    return later


def _reason(e: BaseException) -> str:
    text = (str(e).strip().splitlines() or [""])[0][:200]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _check_files(d: Path, *, with_optimizer: bool, with_reference: bool = False) -> str | None:
    """Checks that name the damaged file before anything is loaded: safetensors headers against the file
    size (a truncated file), and every torch archive loaded memory-mapped with ``weights_only=True``
    (a truncated archive loses its end; a pickle that would build anything but tensors is refused)."""
    import pickle

    from accelerate.utils.other import load
    from safetensors import safe_open

    optimizer_files = [sharding.OPTIMIZER_TENSORS, sharding.OPTIMIZER_GROUPS]
    names = [
        MODEL_FILE,
        *((optimizer_files if sharding.holds_full_state(d) else [OPTIMIZER_FILE]) if with_optimizer else []),
    ]
    if any(p.is_dir() for p in d.iterdir()):  # FSDP / DeepSpeed: accelerate's sharded layout
        names = []
    names += [REFERENCE_FILE] if with_reference else []
    for name in names:
        if not (d / name).is_file():
            return f"{name}: missing"
    for f in sorted(d.iterdir()):
        try:
            if f.name.endswith(".safetensors"):
                with safe_open(str(f), "pt"):
                    pass  # opening checks the header against the file size
            elif f.suffix in (".bin", ".pkl", ".pt") and not _ignored(f.name):
                load(f, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError:
            return f"{f.name}: holds more than tensors (a pickle that could run code); not loaded"
        except Exception as e:
            return f"{f.name}: {_reason(e)}"
    return None


def _ignored(name: str) -> bool:
    """Files accelerate would read that tether never writes (pickled registered objects)."""
    return name.startswith("custom_checkpoint_")


def _loadable_view(d: Path, into: Path) -> Path:
    """``d`` without the files tether never writes: symlinks in ``into`` for accelerate's load_state,
    which would otherwise refuse (or, were an object registered, unpickle) a planted extra file."""
    for f in d.iterdir():
        if not _ignored(f.name):
            (into / f.name).symlink_to(f.resolve())
    return into


def _read_health(d: Path) -> dict | None:
    try:
        h = json.loads((d / TRAINER_STATE).read_text()).get("health")
    except (OSError, ValueError, AttributeError):
        return None
    return h if isinstance(h, dict) else None


def _unhealthy(h: dict, earlier_grad_norms: list[float]) -> str:
    """Why a step's loss / gradient norm say the weights are going bad ("" when they do not)."""
    loss, gn = h.get("loss", float("nan")), h.get("grad_norm", float("nan"))
    if not math.isfinite(loss):
        return "loss is NaN or infinite"
    if not math.isfinite(gn):
        return "gradient norm is NaN or infinite"
    norms = sorted(g for g in earlier_grad_norms if math.isfinite(g))
    if norms and gn > DIVERGING * max(norms[len(norms) // 2], 1e-8):
        return f"gradient norm {gn:.3g} is diverging (median before: {norms[len(norms) // 2]:.3g})"
    return ""


class _DropSharedTensorWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Removed shared tensor" not in record.getMessage()


@contextlib.contextmanager
def _quiet_shared_tensor_warning():
    """accelerate warns at every save that it dropped the tied head's duplicate name: expected, so hidden."""
    logger = logging.getLogger("accelerate.utils.other")
    flt = _DropSharedTensorWarning()
    logger.addFilter(flt)
    try:
        yield
    finally:
        logger.removeFilter(flt)


def newest_checkpoint_config(run_dir: Path) -> tuple[Path, dict] | None:
    """(checkpoint, the config it was made with) of the newest checkpoint that records one."""
    root = run_dir / CHECKPOINTS
    dirs = sorted(root.glob("step-*"), key=lambda p: p.name, reverse=True) if root.is_dir() else []
    for d in dirs:
        try:
            config = json.loads((d / TRAINER_STATE).read_text()).get("config")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(config, dict):
            return d, config
    return None


class Checkpointing:
    """The trainer's checkpoint methods (:class:`tether.training.trainer.Trainer` mixes them in; they read
    its run directory, accelerator, policy, optimizer, scheduler, method state and step health)."""

    def checkpoint_dirs(self) -> list[Path]:
        return RunDir(self.run_dir).checkpoint_dirs(complete=True)

    def _last_checkpoint_note(self) -> str:
        """Names the newest checkpoint that is good: finite loss and weights, gradient norm not diverging,
        and (where this process ran it) the step after it healthy too."""
        newer = []
        for d in reversed(self.checkpoint_dirs()):
            health = _read_health(d)
            step = int(d.name.split("-")[1])
            after = self.health.get(step + 1)
            why = health.get("why") if health else "no health record"
            if not why and after is not None and step + 1 <= self.step:
                why = _unhealthy(after, self._grad_norms(step + 1))
                why = why and f"step {step + 1} after it: {why}"
            if not why and step + 1 > self.step:  # the failing step itself came right after it
                why = f"step {step + 1} after it: loss is NaN or infinite"
            if not why:
                skipped = f" (newer, not good: {'; '.join(newer)})" if newer else ""
                return (
                    f"; last good checkpoint: {d} (loss {health['loss']:.4g}, grad norm "
                    f"{health['grad_norm']:.4g}, weights finite){skipped}"
                )
            newer.append(f"{d.name}: {why}")
        if newer:
            return f"; no good checkpoint ({'; '.join(newer)})"
        return "; no checkpoint was written yet"

    def _grad_norms(self, before: int) -> list[float]:
        return [h["grad_norm"] for s, h in sorted(self.health.items()) if s < before]

    def _health(self) -> dict:
        """Whether the weights just written are worth keeping as a "last good" checkpoint."""
        h = dict(self.health.get(self.step, {"loss": float("nan"), "grad_norm": float("nan")}))
        params = [p for p in self.acc.unwrap_model(self.policy).parameters() if p.requires_grad]
        max_abs = sharding.max_abs(params)
        h["max_abs_weight"] = max_abs
        why = _unhealthy(h, self._grad_norms(self.step)) if self.step in self.health else ""
        if not math.isfinite(max_abs):
            why = "weights are NaN or infinite"
        elif max_abs > WEIGHT_GROWTH * max(self.start_max_abs, 1e-12):
            why = f"weights grew from |w| ≤ {self.start_max_abs:.3g} to {max_abs:.3g}"
        h["why"] = why
        return h

    def save_checkpoint(self) -> Path:
        """Model, optimizer and RNG states (accelerate; safetensors and weights_only tensors), a live
        reference's weights (``reference.safetensors``) plus step, scheduler, method state (β), config and
        health (JSON), atomically. With ``save_optimizer: false``
        only the weights. Keeps the newest ``save_total_limit`` checkpoints and the newest good one."""
        root = self.run_dir / CHECKPOINTS
        final = root / f"step-{self.step:07d}"
        tmp = root / f".tmp-step-{self.step:07d}"
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            root.mkdir(parents=True, exist_ok=True)
        self.acc.wait_for_everyone()
        with _quiet_shared_tensor_warning():
            if sharding.wanted(self.cfg):  # the full state, loadable on any process count
                model, optimizer = self._bare()
                sharding.save(
                    tmp, model, optimizer if self.cfg.save_optimizer else None, self.acc.is_main_process
                )
            elif self.cfg.save_optimizer:
                self.acc.save_state(str(tmp))
            else:
                self.acc.save_model(self.policy, str(tmp))
            if self.method.live_reference:  # gathered from the shards when sharded
                assert self.reference is not None and self.reference.model is not None
                sharding.save_weights(
                    tmp / REFERENCE_FILE, self.reference.model, self.acc.is_main_process, prefix="model."
                )
        health = self._health()
        self.acc.wait_for_everyone()
        if self.acc.is_main_process:
            state = {
                "step": self.step,
                "hparams": self.hparams,
                "reference_updates": self.reference_updates,
                "total_steps": self.schedule.total_steps,
                "scheduler": self.scheduler.state_dict(),
                "optimizer": self.cfg.save_optimizer,
                "health": health,
                "config": self.run_config,
            }
            (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=1))
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            self._rotate()
        self.acc.wait_for_everyone()
        return final

    def _rotate(self) -> None:
        """Delete all but the newest ``save_total_limit`` checkpoints, never the newest good one."""
        limit = self.cfg.save_total_limit
        if limit is None:
            return
        dirs = self.checkpoint_dirs()
        good = [d for d in dirs if not (_read_health(d) or {"why": "?"}).get("why")]
        keep = set(dirs[-limit:]) | set(good[-1:])
        for old in dirs:
            if old not in keep:
                shutil.rmtree(old, ignore_errors=True)

    def resume(self) -> bool:
        """Continue from the newest usable checkpoint, if any: same data position, optimizer, RNG, β.

        A checkpoint that cannot be read (torn, truncated, foreign) is skipped with a line saying why, and
        the previous one is tried."""
        main = self.acc.is_main_process
        for d in reversed(self.checkpoint_dirs()):
            problem = self._load_checkpoint(d)
            if problem is None:
                if self.step > self.schedule.total_steps:
                    raise TetherError(
                        f"train.max_steps: the run is {self.schedule.total_steps} steps long but {d} is at "
                        f"step {self.step}; to shorten a run, use that checkpoint's weights instead"
                    )
                if main:
                    print(f"resuming from step {self.step} ({d})", flush=True)
                    self.sink.truncate_after(
                        self.step, drop_eval_at_step=self.step == self.schedule.total_steps
                    )
                return True
            if main:
                print(f"note: checkpoint {d} is unusable ({problem}); trying the previous one", flush=True)
        if self.checkpoint_dirs():  # starting over would overwrite a run that may be worth repairing
            raise TetherError(
                f"train.resume: no usable checkpoint in {self.run_dir / CHECKPOINTS} (see the notes above); "
                "set train.overwrite=true (without resume) to start the run over"
            )
        if main:
            print("no checkpoint: starting fresh", flush=True)
            self.sink.truncate_after(0)
        return False

    def _load_checkpoint(self, d: Path) -> str | None:
        """Load ``d`` into the trainer; None when done, else what is wrong with it (nothing was changed
        then, or a later complete checkpoint overwrites everything that was)."""
        try:
            state = json.loads((d / TRAINER_STATE).read_text())
            step, sched = int(state["step"]), state["scheduler"]
            hparams = {k: float(v) for k, v in state["hparams"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            return f"{TRAINER_STATE}: {_reason(e) if not isinstance(e, KeyError) else f'no {e}'}"
        live = self.method.live_reference
        problem = _check_files(d, with_optimizer=bool(state.get("optimizer", True)), with_reference=live)
        if problem:
            return problem
        try:
            if sharding.holds_full_state(d) or (self.sharded and not state.get("optimizer", True)):
                model, optimizer = self._bare()
                sharding.load(d, model, optimizer if state.get("optimizer", True) else None)
            elif self.sharded:
                sharding.load_accelerate(d, *self._bare())
            elif state.get("optimizer", True):
                with tempfile.TemporaryDirectory() as view:
                    self.acc.load_state(
                        str(_loadable_view(d, Path(view))), load_kwargs={"weights_only": True}
                    )
            else:
                self._load_weights_only(d)
            if live:
                assert self.reference is not None and self.reference.model is not None
                sharding.load_weights(d / REFERENCE_FILE, self.reference.model, prefix="model.")
                self.reference_updates = int(state.get("reference_updates", 0))
            self.scheduler.load_state_dict(sched)
        except Exception as e:  # a foreign or damaged file: torch/safetensors raise many kinds
            return _reason(e)
        self._apply_optimizer_config(step)
        if not state.get("optimizer", True) and self.acc.is_main_process:
            print(f"note: {d} holds weights only (train.save_optimizer=false): optimizer moments restart")
        self.step, self.hparams = step, hparams
        return None

    def _load_weights_only(self, d: Path) -> None:
        from safetensors.torch import load_file

        model = self.acc.unwrap_model(self.policy)
        result = model.load_state_dict(load_file(str(d / MODEL_FILE)), strict=False)
        if set(result.missing_keys) - _later_shared_names(model) or result.unexpected_keys:
            raise TetherError(f"{MODEL_FILE}: does not match the model")
