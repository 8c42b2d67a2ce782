"""Where a run's metrics go: ``metrics.jsonl`` always (one line per logged step, main process only);
TensorBoard and Weights & Biases when ``train.report_to`` asks."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from tether.errors import TetherError
from tether.rundir import METRICS


class MetricsSink:
    """``metrics.jsonl`` always; TensorBoard / Weights & Biases when asked. Main process only."""

    def __init__(self, run_dir: Path, report_to: Sequence[str], config: dict, enabled: bool):
        self.enabled = enabled
        self.path = run_dir / METRICS
        self.writers: list = []
        if not enabled:
            return
        if "tensorboard" in report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise TetherError("train.report_to: tensorboard needs `pip install tensorboard`") from e
            self.writers.append(SummaryWriter(str(run_dir / "tensorboard")))
        if "wandb" in report_to:
            try:
                import wandb
            except ImportError as e:
                raise TetherError("train.report_to: wandb needs `pip install wandb`") from e
            self.writers.append(wandb.init(project="tether", dir=str(run_dir), config=config))

    def truncate_after(self, step: int, *, drop_eval_at_step: bool = False) -> None:
        """On resume: forget lines logged after the checkpoint (and, when the run is already finished, its
        final evaluation, which is logged again), so the log stays one line per step. A torn line (a kill
        mid-write) is dropped."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for ln in self.path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(ln)
                s = int(rec.get("step", 0))
            except (ValueError, TypeError, AttributeError):
                if ln.strip():
                    print(f"note: {self.path}: dropped a torn line ({ln[:40]!r}...)")
                continue
            is_eval = any(k.startswith("eval/") for k in rec)
            if s < step or (s == step and not (drop_eval_at_step and is_eval)):
                kept.append(ln)
        tmp = self.path.with_name(f".{self.path.name}.tmp")  # a kill or a full disk keeps the old log whole
        try:
            tmp.write_text("".join(ln + "\n" for ln in kept))
            os.replace(tmp, self.path)
        finally:
            tmp.unlink(missing_ok=True)

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        step = record.get("step", 0)
        for w in self.writers:
            scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
            if hasattr(w, "add_scalar"):
                for k, v in scalars.items():
                    w.add_scalar(k, v, step)
            else:
                w.log(scalars, step=step)

    def close(self) -> None:
        for w in self.writers:
            (w.close if hasattr(w, "close") else w.finish)()


def reset_peak_rss() -> None:
    """Start a run's peak-RSS measurement afresh: Linux resets the process's high-water mark (VmHWM), so a
    run trained after another in the same process (a sweep, an evaluation before it) reports its own
    peak, not the process's. Elsewhere nothing happens and the peak is the process's."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:  # pragma: no cover - not Linux, or not allowed
        pass


def peak_rss_mb() -> float:
    """The peak resident memory since :func:`reset_peak_rss` (VmHWM; ``ru_maxrss`` where there is none)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover
        pass
    try:  # pragma: no cover
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    except ImportError:  # pragma: no cover
        return float("nan")
