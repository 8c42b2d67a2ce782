"""The run directory: its layout, and every write and read of it.

One training run writes one directory::

    <run>/config.yaml        the resolved config (read back through :func:`tether.config.from_dict`)
    <run>/metrics.jsonl      one JSON record per logged step (train metrics, or ``eval/...`` metrics)
    <run>/summary.json       what the run produced (:class:`tether.training.run.RunResult`)
    <run>/checkpoints/step-N model, optimizer and trainer state (see :mod:`tether.training.trainer`)
    <run>/final              the final model (``final/merged`` too for LoRA with ``save_merged``) and
                             its model card, ``final/README.md`` (``final/merged/README.md``)
    <run>/plots              training curves
    <run>/eval.json          written by ``tether eval``
    <run>/eval_prompts.jsonl its per-prompt outcomes (read by ``tether compare``), written with it
    <run>/eval_checkpoints.json  written by ``tether eval --checkpoints``: one row per checkpoint

An sDPO run's root holds ``stages.json`` and one run directory per stage, ``stage-<t>/``. A sweep
(``tether sweep``) is one directory of run directories::

    <sweep>/sweep.json       the base config and the grid (a rerun checks the base config is the same)
    <sweep>/<point>/         one run directory per grid point (``dpo_beta=0.1``)
    <sweep>/table.md         one row per point: hyper-parameters, KL, performance, on the frontier or not
    <sweep>/frontier.png     performance against KL, a line per method through its non-dominated points

``<run>/.tether.lock`` is held by the one process writing the run (:func:`run_dir_lock`).
Trainer, sDPO stages, evaluation and report find these files here and nowhere else.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tether.errors import ConfigError, TetherError, environment_fault
from tether.safe_yaml import load_yaml

if TYPE_CHECKING:
    from tether.config import Config
    from tether.eval_result import EvalResult, PromptOutcome

CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
STAGES = "stages.json"
CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"  # in each checkpoint, written last
FINAL = "final"
MERGED = "merged"
MODEL_CARD = "README.md"
PLOTS = "plots"
EVAL = "eval.json"
EVAL_CHECKPOINTS = "eval_checkpoints.json"
OUTCOMES_SUFFIX = "_prompts.jsonl"
CHECKPOINT_WEIGHTS = "model.safetensors"
"""A checkpoint's model weights (accelerate's ``save_state``; no pickles are read)."""
SWEEP = "sweep.json"
SWEEP_TABLE = "table.md"
SWEEP_FRONTIER = "frontier.png"


def read_json(path: Path) -> Any:
    """A JSON file, or :class:`TetherError` naming the file (and line) at fault."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise TetherError(f"{path}: cannot read ({e})") from None
    except json.JSONDecodeError as e:
        raise TetherError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None


def outcomes_path(eval_path: Path) -> Path:
    """Where an evaluation's per-prompt outcomes lie: beside it, ``eval.json`` → ``eval_prompts.jsonl``."""
    return eval_path.with_name(eval_path.stem + OUTCOMES_SUFFIX)


def has_weights(d: Path) -> bool:
    """A directory ``transformers`` can load a model from."""
    return (d / "config.json").is_file() and (
        any(d.glob("*.safetensors")) or any(d.glob("*.bin")) or any(d.glob("*.index.json"))
    )


@dataclass(frozen=True)
class RunDir:
    """One run directory (plain or an sDPO root), by path. Cheap: nothing is read until asked."""

    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path).expanduser())

    # ------------------------------------------------------------------------------------- layout
    @property
    def config(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def stages(self) -> Path:
        return self.path / STAGES

    @property
    def checkpoints(self) -> Path:
        return self.path / CHECKPOINTS

    @property
    def final(self) -> Path:
        return self.path / FINAL

    @property
    def merged(self) -> Path:
        return self.path / FINAL / MERGED

    def model_cards(self) -> list[Path]:
        """Where the final model's card goes: ``final/README.md``, and ``final/merged/README.md`` when
        the merged model was saved."""
        return [d / MODEL_CARD for d in (self.final, self.merged) if d.is_dir()]

    @property
    def plots(self) -> Path:
        return self.path / PLOTS

    @property
    def eval(self) -> Path:
        return self.path / EVAL

    @property
    def eval_checkpoints(self) -> Path:
        return self.path / EVAL_CHECKPOINTS

    def checkpoint_dirs(self, complete: bool = False) -> list[Path]:
        """The ``checkpoints/step-N`` directories, by step (temporary ``.tmp-*`` ones excluded); with
        ``complete``, only those whose trainer state was written (the last file of a checkpoint)."""
        if not self.checkpoints.is_dir():
            return []
        dirs = [
            p
            for p in self.checkpoints.iterdir()
            if p.is_dir()
            and p.name.startswith("step-")
            and p.name[5:].isdigit()
            and (not complete or (p / TRAINER_STATE).is_file())
        ]
        return sorted(dirs, key=lambda p: int(p.name[5:]))

    def is_finished(self) -> bool:
        """A run that wrote its summary and its final model (or adapter)."""
        return self.summary.is_file() and (self.final_model() is not None or self.final_adapter() is not None)

    def stage(self, t: int) -> RunDir:
        """Stage ``t``'s run directory (1-based) under an sDPO root."""
        return RunDir(self.path / f"stage-{t}")

    def stage_dirs(self, need: str = METRICS) -> list[RunDir]:
        """The ``stage-<t>`` directories holding ``need``, in stage order."""
        dirs = [d for d in self.path.glob("stage-*") if d.is_dir() and d.name[6:].isdigit()]
        return [RunDir(d) for d in sorted(dirs, key=lambda d: int(d.name[6:])) if (d / need).exists()]

    def holds_run(self) -> bool:
        """Whether a run was (at least partly) written here."""
        return self.metrics.exists() or self.checkpoints.exists()

    def is_staged(self) -> bool:
        """An sDPO root: ``stages.json``, or stage directories of an unfinished run."""
        return not self.metrics.exists() and (self.stages.exists() or bool(self.stage_dirs()))

    def last_stage(self) -> RunDir:
        """The run directory that ends training: an sDPO root's last stage (with metrics), else this one."""
        stages = self.stage_dirs() if self.is_staged() else []
        return stages[-1] if stages else self

    def final_model(self) -> str | None:
        """The final model's directory: ``final/merged`` when present, else ``final`` (None: no weights)."""
        for d in (self.merged, self.final):
            if has_weights(d):
                return str(d)
        return None

    def final_adapter(self) -> Path | None:
        """``final`` when it holds a LoRA adapter (no merged weights)."""
        return self.final if (self.final / "adapter_config.json").is_file() else None

    # ------------------------------------------------------------------------------------- config
    def write_config(self, cfg: Config) -> None:
        import yaml

        self.config.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    def read_config_mapping(self) -> dict[str, Any]:
        """``config.yaml`` as written (a mapping; empty when absent), for display."""
        if not self.config.exists():
            return {}
        import yaml

        try:
            raw = load_yaml(self.config.read_text(), str(self.config))
        except (OSError, UnicodeDecodeError) as e:
            raise TetherError(f"{self.config}: cannot read the run config ({e})") from None
        except yaml.YAMLError as e:
            raise TetherError(f"{self.config}: malformed YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(raw, dict):
            raise TetherError(f"{self.config}: not a run config (expected a mapping)")
        return raw

    def read_config(self) -> Config:
        """The run's config, through the config module's own loader (defaults and checks included)."""
        from tether.config import from_dict

        try:
            return from_dict(self.read_config_mapping())
        except ConfigError as e:
            raise TetherError(f"{self.config}: {e}") from None

    # -------------------------------------------------------------------------- summary and stages
    def write_summary(self, summary: dict[str, Any]) -> None:
        self.summary.write_text(json.dumps(summary, indent=1))

    def read_summary(self) -> dict[str, Any]:
        """``summary.json`` (empty when the run has not finished)."""
        if not self.summary.exists():
            return {}
        data = read_json(self.summary)
        if not isinstance(data, dict):
            raise TetherError(f"{self.summary}: not a JSON object")
        return data

    def write_stages(self, stages: list[dict[str, Any]]) -> None:
        self.stages.write_text(json.dumps(stages, indent=1))

    def read_stages(self) -> list[dict[str, Any]]:
        data = read_json(self.stages)
        if not isinstance(data, list) or not all(isinstance(s, dict) and "stage" in s for s in data):
            raise TetherError(f"{self.stages}: expected a list of {{stage, examples, gamma_ref}}")
        return data

    # ------------------------------------------------------------------------------------- metrics
    def read_metrics(self) -> tuple[list[dict], list[dict]]:
        """The train and eval records of ``metrics.jsonl`` (eval records hold ``eval/...`` keys)."""
        path = self.metrics
        train, evals = [], []
        try:
            lines = path.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise TetherError(f"{path}: cannot read ({e})") from None
        for i, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise TetherError(f"{path}:{i}: malformed metrics line ({e.msg})") from None
            if not isinstance(rec, dict):
                raise TetherError(f"{path}:{i}: malformed metrics line (not a JSON object)")
            step = rec.get("step")
            if not isinstance(step, (int, float)) or isinstance(step, bool):
                raise TetherError(f"{path}:{i}: malformed metrics line (no numeric 'step')")
            (evals if any(k.startswith("eval/") for k in rec) else train).append(rec)
        if not train and not evals:
            raise TetherError(f"{path}: empty, no metrics logged")
        return train, evals

    def write_json(self, path: Path, data: Any) -> None:
        """``data`` as indented JSON at ``path`` (a file of this directory), written atomically."""
        import os

        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        os.replace(tmp, path)

    def read_eval_checkpoints(self) -> dict[str, Any] | None:
        """``eval_checkpoints.json`` (None when absent); an unreadable one raises :class:`TetherError`."""
        if not self.eval_checkpoints.exists():
            return None
        data = read_json(self.eval_checkpoints)
        if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
            raise TetherError(f"{self.eval_checkpoints}: not a checkpoint evaluation (no rows)")
        return data

    def read_eval(self) -> dict[str, Any] | None:
        """``eval.json`` as a JSON object, whoever wrote it (None when absent); an unreadable one raises
        :class:`TetherError`. :meth:`read_eval_result` reads it as the result ``tether eval`` wrote."""
        if not self.eval.exists():
            return None
        data = read_json(self.eval)
        if not isinstance(data, dict):
            raise TetherError(f"{self.eval}: not a JSON object")
        return data

    def read_eval_result(self) -> EvalResult | None:
        """``eval.json`` as :class:`tether.eval_result.EvalResult` (None when absent); an unreadable one
        raises :class:`TetherError`, one ``tether eval`` did not write
        :class:`tether.eval_result.NotAnEvalResult` (holding the JSON object)."""
        from tether.eval_result import EvalResult

        data = self.read_eval()
        return None if data is None else EvalResult.from_dict(data, str(self.eval))

    def write_eval(self, result: EvalResult, path: Path | None = None) -> None:
        """``result`` as ``eval.json`` (or at ``path``), written atomically, and its per-prompt outcomes
        beside it (:func:`outcomes_path`) when it holds some: both are written to temporary files first,
        then renamed, outcomes first; ``eval.json`` records their count and hash, so an outcomes file left
        by a crash between the two renames is never read as the older ``eval.json``'s."""
        import hashlib
        import os

        from tether.errors import whole_or_nothing

        path = path if path is not None else self.eval
        path.parent.mkdir(parents=True, exist_ok=True)
        texts: dict[Path, str] = {}
        if result.outcomes:
            lines = "".join(o.to_json() + "\n" for o in result.outcomes)
            digest = hashlib.sha256(lines.encode()).hexdigest()
            result.prompt_outcomes = {"rows": len(result.outcomes), "sha256": digest}
            texts[outcomes_path(path)] = lines
        texts[path] = result.dumps()
        tmps = {p: p.with_suffix(f".tmp{os.getpid()}") for p in texts}
        remove = lambda: [t.unlink(missing_ok=True) for t in tmps.values()]  # noqa: E731
        with whole_or_nothing(remove, path.parent, "writing the evaluation", "or write it elsewhere (--out)"):
            for p, text in texts.items():
                tmps[p].write_text(text)
            for p in texts:
                os.replace(tmps[p], p)

    def read_outcomes(self, result: EvalResult, path: Path | None = None) -> list[PromptOutcome] | None:
        """The per-prompt outcomes written with ``result`` (read from ``path``, default ``eval.json``);
        None when it has none or the file beside it is missing or not the one it recorded; a malformed
        line raises :class:`TetherError` naming it."""
        import hashlib

        from tether.eval_result import PromptOutcome

        record = result.prompt_outcomes
        file = outcomes_path(path if path is not None else self.eval)
        if not isinstance(record, dict) or not file.is_file():
            return None
        try:
            text = file.read_text()
        except (OSError, UnicodeDecodeError) as e:
            raise TetherError(f"{file}: cannot read ({e})") from None
        if hashlib.sha256(text.encode()).hexdigest() != record.get("sha256"):
            return None
        out = []
        for n, line in enumerate(text.splitlines(), 1):
            try:
                out.append(PromptOutcome(**json.loads(line)))
            except (json.JSONDecodeError, TypeError) as e:
                raise TetherError(f"{file}:{n}: not a per-prompt outcome ({e})") from None
        return out


# ------------------------------------------------------------------------------------------ the lock
# One writer per run directory: ``tether train`` holds an advisory lock on ``<output_dir>/.tether.lock``.
#
# The lock is an ``flock`` on the file, so the kernel drops it when its holder dies (even by ``kill -9``);
# the file also names the holder (pid, host, start time) for the message a second writer gets. A lock file
# whose ``flock`` is free was left by a process that is gone, and is taken over with a note.

LOCK_FILE = ".tether.lock"


class RunDirLocked(TetherError):
    """Another live process is writing into the run directory."""


def _holder(text: str) -> str:
    try:
        h = json.loads(text)
        return f"pid {h['pid']} on host {h['host']}, since {h['since']}"
    except (ValueError, KeyError, TypeError):
        return "an unknown process"


def _check_writable(directory: Path) -> None:
    """Raise the ``OSError`` a write into ``directory`` would (read-only mount, no permission), before a run
    starts rather than at its first checkpoint."""
    probe = directory / f".tether-write-test-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()


@contextlib.contextmanager
def run_dir_lock(run_dir: Path, *, enabled: bool = True) -> Iterator[None]:
    """Hold the run directory's lock for the block; raises :class:`RunDirLocked` naming the holder.

    Creates ``run_dir`` if needed and, on leaving, removes the lock file and a directory it created that
    stayed empty (a run refused later leaves nothing behind)."""
    if not enabled:
        yield
        return
    created = not run_dir.exists()
    if run_dir.exists() and not run_dir.is_dir():
        raise TetherError(f"train.output_dir: {run_dir} is not a directory")
    path = run_dir / LOCK_FILE
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        _check_writable(run_dir)
    except OSError as e:
        raise environment_fault(e, f"train.output_dir: {run_dir}") from None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise environment_fault(e, f"train.output_dir: {run_dir}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = Path(path).read_text(errors="replace") if path.exists() else ""
            os.close(fd)
            raise RunDirLocked(
                f"train.output_dir: {run_dir} is in use by another tether train ({_holder(text)}); "
                "wait for it to finish or choose another directory"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino  # not unlinked by a holder that just left
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    stale = os.read(fd, 4096).decode(errors="replace").strip()
    if stale:
        print(f"note: taking over the lock of {run_dir} left by a process that is gone ({_holder(stale)})")
    me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only when empty


@dataclass(frozen=True)
class SweepDir:
    """A sweep's directory (``tether sweep``): its manifest, one run directory per grid point, the table
    and the frontier plot."""

    path: Path

    def __init__(self, path: str | Path):
        object.__setattr__(self, "path", Path(path).expanduser())

    @property
    def manifest(self) -> Path:
        return self.path / SWEEP

    @property
    def table(self) -> Path:
        return self.path / SWEEP_TABLE

    @property
    def frontier(self) -> Path:
        return self.path / SWEEP_FRONTIER

    def run(self, name: str) -> RunDir:
        return RunDir(self.path / name)

    def read_manifest(self) -> dict[str, Any] | None:
        """``sweep.json`` (None when absent)."""
        if not self.manifest.exists():
            return None
        data = read_json(self.manifest)
        if not isinstance(data, dict) or not isinstance(data.get("base"), dict):
            raise TetherError(f"{self.manifest}: not a tether sweep manifest")
        return data

    def write_manifest(self, data: dict[str, Any]) -> None:
        RunDir(self.path).write_json(self.manifest, data)
