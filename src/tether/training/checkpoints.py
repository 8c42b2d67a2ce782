"""Checkpoints of a training run: what one holds, how it is written (atomically), checked before anything
is loaded, loaded, rotated, and which one is the last *good* one.

A checkpoint ``checkpoints/step-N/`` holds the model (``model.safetensors``), the optimizer and RNG states
(accelerate's files, loaded with ``weights_only=True``; or with ``train.sharding: fsdp`` the full state as
safetensors + JSON, :mod:`tether.training.sharding`), a live reference's weights (``reference.safetensors``,
TR-DPO) and ``trainer_state.json``: step, scheduler, the method's state (β), the config and the step's
health. Nothing in it is unpickled: a file that would build anything but tensors is refused.

What a checkpoint saves and restores is one explicit value, :class:`TrainState`; :class:`Checkpoints`
(the run's ``checkpoints/`` directory and its settings) saves it, finds the last good checkpoint and
resumes into it; :func:`check_resume_config` refuses to resume with a config that changes what is computed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tether.config import Config, TrainConfig
from tether.errors import TetherError, shown_text, whole_or_nothing
from tether.rundir import CHECKPOINTS, TRAINER_STATE, RunDir
from tether.training import sharding
from tether.training.schedule import apply_optimizer_config

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


def _newest_state(run_dir: Path) -> tuple[Path, dict] | None:
    """(checkpoint, its ``trainer_state.json``) of the newest checkpoint that records the config."""
    root = run_dir / CHECKPOINTS
    dirs = sorted(root.glob("step-*"), key=lambda p: p.name, reverse=True) if root.is_dir() else []
    for d in dirs:
        try:
            saved = json.loads((d / TRAINER_STATE).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(saved, dict) and isinstance(saved.get("config"), dict):
            return d, saved
    return None


def newest_checkpoint_config(run_dir: Path) -> tuple[Path, dict] | None:
    """(checkpoint, the config it was made with) of the newest checkpoint that records one."""
    found = _newest_state(run_dir)
    return (found[0], found[1]["config"]) if found else None


# Keys that change how a run is logged or saved, not what it computes: a resume may change them freely.
RESUME_FREE = {
    "train.output_dir",
    "train.resume",
    "train.overwrite",
    "train.progress",
    "train.log_every",
    "train.eval_every",
    "train.eval_at_start",
    "train.save_every",
    "train.save_total_limit",
    "train.save_optimizer",
    "train.save_on_signal",
    "train.save_merged",
    "train.report_to",
    "train.resume_allowed_changes",
    "train.sharding",  # how the state is laid out across processes, not what is computed
    "reference.cache_dir",
}
RESUME_EXTEND = {"train.max_steps", "train.epochs"}  # a longer run continues the same trajectory


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(d, dict):
        return {k: v for key, sub in d.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    return {prefix[:-1]: d}


def check_resume_config(cfg: Config, run_dir: Path, data: dict[str, str] | None = None) -> None:
    """Refuse to resume a checkpoint made with another config, naming the keys that differ, unless they
    are listed in ``train.resume_allowed_changes``. Run length (``max_steps``, ``epochs``) may change: the
    run is extended (or shortened down to the checkpoint's step) with the LR schedule of the new length.
    ``data``: the fingerprints of the data as tokenized now (``data.train``/``data.eval`` →
    :func:`tether.data.fingerprint`); a file changed in place since the checkpoint is refused the same way."""
    found = _newest_state(run_dir)
    if found is None:
        return
    where, saved = found
    old = saved["config"]
    _check_resume_data(cfg, where, saved.get("data") or {}, data or {})
    new, before = _flat(cfg.to_dict()), _flat(old)
    allowed = set(cfg.train.resume_allowed_changes)
    # A key only one side has is a config field added or removed by another tether version (compared
    # when it is a method hyper-parameter: a default and an explicit value may differ).
    keys = (set(new) & set(before)) | {k for k in set(new) ^ set(before) if k.startswith("method.")}
    changed = sorted(k for k in keys if new.get(k) != before.get(k) and k not in RESUME_FREE)
    refused = [k for k in changed if k not in allowed and k not in RESUME_EXTEND]
    if refused:
        diffs = ", ".join(f"{k} ({before.get(k)!r} → {new.get(k)!r})" for k in refused)
        raise TetherError(
            f"train.resume: the config differs from the one {where} was made with: {diffs}; "
            "resume with the same config, or list the keys in train.resume_allowed_changes if you mean it"
        )
    for k in changed:
        print(f"note: resuming with {k} changed ({before.get(k)!r} → {new.get(k)!r})")


def _check_resume_data(cfg: Config, where: Path, before: dict, now: dict[str, str]) -> None:
    allowed = set(cfg.train.resume_allowed_changes)
    for key, fp in now.items():
        if before.get(key) not in (None, fp) and key not in allowed:
            files = (cfg.data.eval if key == "data.eval" else None) or cfg.data.train
            raise TetherError(
                f"train.resume: {key} ({shown_text(str(files))}) changed since {where} was made: its rows as "
                "tokenized differ, so the run would continue on other data; resume with the data it was made "
                f"with, or add '{key}' to train.resume_allowed_changes to continue on the new data"
            )


@dataclass
class TrainState:
    """Everything a checkpoint saves and restores. The data position is ``step`` (the order of examples is
    a function of the seed and the step); the RNG states are the accelerator's (saved with the optimizer).
    The trainer owns one and updates it after every optimizer step."""

    accelerator: Any
    """accelerate's ``Accelerator``: the processes, and the RNG states it saves and loads."""
    policy: torch.nn.Module
    """The policy as trained (wrapped by accelerate, or sharded in place with FSDP2)."""
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    total_steps: int
    hparams: dict[str, float]
    """The method's hyper-parameters with its training state (β of ε-DPO and β-DPO)."""
    sharded: bool = False
    live_reference: torch.nn.Module | None = None
    """A reference that moves during training (TR-DPO's frozen copy): its weights are in every checkpoint."""
    step: int = 0
    reference_updates: int = 0
    """How often the live reference was updated so far."""
    health: dict[int, dict[str, float]] = field(default_factory=dict)
    """step → loss and gradient norm (the steps this process ran)."""
    start_max_abs: float = 0.0
    """The largest trainable weight at the start (a checkpoint whose weights grew far beyond is not good)."""

    def bare(self) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
        """The policy and optimizer without accelerate's wrappers (the full-state checkpoint's view)."""
        return self.accelerator.unwrap_model(self.policy), getattr(
            self.optimizer, "optimizer", self.optimizer
        )

    def grad_norms(self, before: int) -> list[float]:
        return [h["grad_norm"] for s, h in sorted(self.health.items()) if s < before]


class Checkpoints:
    """A run's ``checkpoints/`` directory: saving a :class:`TrainState` (atomically; rotated), naming the
    last good checkpoint, resuming into a state.

    ``cfg`` says how (``save_optimizer``, ``save_total_limit``, ``sharding``, the LR schedule re-applied on
    resume); ``config`` is the run's whole config, recorded in each checkpoint."""

    def __init__(
        self, run_dir: Path, cfg: TrainConfig, config: dict | None = None, data: dict[str, str] | None = None
    ):
        self.run_dir = run_dir
        self.cfg = cfg
        self.config = config
        self.data = data
        """The fingerprints of the data as tokenized (``data.train``, ``data.eval``), checked on resume."""

    def dirs(self) -> list[Path]:
        return RunDir(self.run_dir).checkpoint_dirs(complete=True)

    def last_good_note(self, state: TrainState) -> str:
        """Names the newest checkpoint that is good: finite loss and weights, gradient norm not diverging,
        and (where this process ran it) the step after it healthy too."""
        newer = []
        for d in reversed(self.dirs()):
            health = _read_health(d)
            step = int(d.name.split("-")[1])
            after = state.health.get(step + 1)
            why = health.get("why") if health else "no health record"
            if not why and after is not None and step + 1 <= state.step:
                why = _unhealthy(after, state.grad_norms(step + 1))
                why = why and f"step {step + 1} after it: {why}"
            if not why and step + 1 > state.step:  # the failing step itself came right after it
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

    def save(self, state: TrainState) -> Path:
        """Model, optimizer and RNG states (accelerate; safetensors and weights_only tensors), a live
        reference's weights (``reference.safetensors``) plus step, scheduler, method state (β), config and
        health (JSON), atomically. With ``save_optimizer: false``
        only the weights. Keeps the newest ``save_total_limit`` checkpoints and the newest good one."""
        acc, cfg = state.accelerator, self.cfg
        root = self.run_dir / CHECKPOINTS
        final = root / f"step-{state.step:07d}"
        tmp = root / f".tmp-step-{state.step:07d}"
        if acc.is_main_process:
            for stale in root.glob(".tmp-step-*"):  # left by a process killed mid-save
                shutil.rmtree(stale, ignore_errors=True)
        with whole_or_nothing(
            lambda: shutil.rmtree(tmp, ignore_errors=True),
            root,
            f"writing checkpoint step-{state.step}",
            CHECKPOINT_ADVICE,
            need=lambda: sum(_dir_bytes(d) for d in self.dirs()[-1:]),  # as large as the last one
        ):
            if acc.is_main_process:
                root.mkdir(parents=True, exist_ok=True)
            acc.wait_for_everyone()
            with _quiet_shared_tensor_warning():
                if sharding.wanted(cfg):  # the full state, loadable on any process count
                    model, optimizer = state.bare()
                    sharding.save(tmp, model, optimizer if cfg.save_optimizer else None, acc.is_main_process)
                elif cfg.save_optimizer:
                    acc.save_state(str(tmp))
                else:
                    acc.save_model(state.policy, str(tmp))
                if state.live_reference is not None:  # gathered from the shards when sharded
                    sharding.save_weights(
                        tmp / REFERENCE_FILE, state.live_reference, acc.is_main_process, prefix="model."
                    )
            health = _health(state)
            acc.wait_for_everyone()
            if acc.is_main_process:
                saved = {
                    "step": state.step,
                    "hparams": state.hparams,
                    "reference_updates": state.reference_updates,
                    "total_steps": state.total_steps,
                    "scheduler": state.scheduler.state_dict(),
                    "optimizer": cfg.save_optimizer,
                    "health": health,
                    "config": self.config,
                    "data": self.data,
                }
                (tmp / TRAINER_STATE).write_text(json.dumps(saved, indent=1))
                aside = root / f".old-step-{state.step:07d}"  # a step saved again: never without one
                if final.exists():
                    shutil.rmtree(aside, ignore_errors=True)
                    os.replace(final, aside)
                os.replace(tmp, final)
                shutil.rmtree(aside, ignore_errors=True)
                self._rotate()
        acc.wait_for_everyone()
        return final

    def _rotate(self) -> None:
        """Delete all but the newest ``save_total_limit`` checkpoints, never the newest good one."""
        limit = self.cfg.save_total_limit
        if limit is None:
            return
        dirs = self.dirs()
        good = [d for d in dirs if not (_read_health(d) or {"why": "?"}).get("why")]
        keep = set(dirs[-limit:]) | set(good[-1:])
        for old in dirs:
            if old not in keep:
                shutil.rmtree(old, ignore_errors=True)

    def resume(self, state: TrainState) -> Path | None:
        """Load the newest usable checkpoint, if any, into ``state``: same data position, optimizer, RNG,
        β; the checkpoint loaded, or None (starting fresh).

        A checkpoint that cannot be read (torn, truncated, foreign) is skipped with a line saying why, and
        the previous one is tried."""
        main = state.accelerator.is_main_process
        for d in reversed(self.dirs()):
            problem = self._load(d, state)
            if problem is None:
                if state.step > state.total_steps:
                    raise TetherError(
                        f"train.max_steps: the run is {state.total_steps} steps long but {d} is at "
                        f"step {state.step}; to shorten a run, use that checkpoint's weights instead"
                    )
                if main:
                    print(f"resuming from step {state.step} ({d})", flush=True)
                return d
            if main:
                print(f"note: checkpoint {d} is unusable ({problem}); trying the previous one", flush=True)
        if self.dirs():  # starting over would overwrite a run that may be worth repairing
            raise TetherError(
                f"train.resume: no usable checkpoint in {self.run_dir / CHECKPOINTS} (see the notes above); "
                "set train.overwrite=true (without resume) to start the run over"
            )
        if main:
            print("no checkpoint: starting fresh", flush=True)
        return None

    def _load(self, d: Path, state: TrainState) -> str | None:
        """Load ``d`` into ``state``; None when done, else what is wrong with it (nothing was changed
        then, or a later complete checkpoint overwrites everything that was)."""
        try:
            saved = json.loads((d / TRAINER_STATE).read_text())
            step, sched = int(saved["step"]), saved["scheduler"]
            hparams = {k: float(v) for k, v in saved["hparams"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            return f"{TRAINER_STATE}: {_reason(e) if not isinstance(e, KeyError) else f'no {e}'}"
        live = state.live_reference
        with_optimizer = bool(saved.get("optimizer", True))
        problem = _check_files(d, with_optimizer=with_optimizer, with_reference=live is not None)
        if problem:
            return problem
        try:
            if sharding.holds_full_state(d) or (state.sharded and not with_optimizer):
                model, optimizer = state.bare()
                sharding.load(d, model, optimizer if with_optimizer else None)
            elif state.sharded:
                sharding.load_accelerate(d, *state.bare())
            elif with_optimizer:
                with tempfile.TemporaryDirectory() as view:
                    state.accelerator.load_state(
                        str(_loadable_view(d, Path(view))), load_kwargs={"weights_only": True}
                    )
            else:
                _load_weights_only(d, state.accelerator.unwrap_model(state.policy))
            if live is not None:
                sharding.load_weights(d / REFERENCE_FILE, live, prefix="model.")
                state.reference_updates = int(saved.get("reference_updates", 0))
            state.scheduler.load_state_dict(sched)
        except Exception as e:  # a foreign or damaged file: torch/safetensors raise many kinds
            return _reason(e)
        apply_optimizer_config(state.optimizer, state.scheduler, self.cfg, state.total_steps, step)
        if not with_optimizer and state.accelerator.is_main_process:
            print(f"note: {d} holds weights only (train.save_optimizer=false): optimizer moments restart")
        state.step, state.hparams = step, hparams
        return None


#: What to do about a full disk while checkpointing (after "free about N MB").
CHECKPOINT_ADVICE = (
    "or set train.save_total_limit lower (checkpoints kept) or train.save_optimizer=false (smaller "
    "checkpoints); nothing earlier was lost: train.resume=true continues from the last checkpoint"
)


def _dir_bytes(d: Path) -> int:
    return sum(f.stat().st_size for f in d.rglob("*") if f.is_file())


def _health(state: TrainState) -> dict:
    """Whether the weights just written are worth keeping as a "last good" checkpoint."""
    h = dict(state.health.get(state.step, {"loss": float("nan"), "grad_norm": float("nan")}))
    params = [p for p in state.accelerator.unwrap_model(state.policy).parameters() if p.requires_grad]
    max_abs = sharding.max_abs(params)
    h["max_abs_weight"] = max_abs
    why = _unhealthy(h, state.grad_norms(state.step)) if state.step in state.health else ""
    if not math.isfinite(max_abs):
        why = "weights are NaN or infinite"
    elif max_abs > WEIGHT_GROWTH * max(state.start_max_abs, 1e-12):
        why = f"weights grew from |w| ≤ {state.start_max_abs:.3g} to {max_abs:.3g}"
    h["why"] = why
    return h


def _load_weights_only(d: Path, model: torch.nn.Module) -> None:
    from safetensors.torch import load_file

    result = model.load_state_dict(load_file(str(d / MODEL_FILE)), strict=False)
    if set(result.missing_keys) - _later_shared_names(model) or result.unexpected_keys:
        raise TetherError(f"{MODEL_FILE}: does not match the model")
