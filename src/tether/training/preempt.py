"""A graceful stop on SIGTERM, the way clusters preempt a job (SLURM, Kubernetes, spot instances send it and
wait a grace period before SIGKILL): the current optimizer step finishes, a checkpoint is written, and the
run exits with code 143 (128 + SIGTERM) saying how to resume. A second SIGTERM stops at once, as the
signal's default does. ``train.save_on_signal: false`` keeps the default (exit at once, up to
``train.save_every`` steps lost). Under ``accelerate launch`` every process stops after the same step.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

import torch

from tether.errors import TetherError


class Preempted(TetherError):
    """The run stopped on SIGTERM after a checkpoint; ``train.resume=true`` continues it exactly."""

    exit_code = 128 + signal.SIGTERM


class StopOnSignal:
    """Within the block, the first SIGTERM only sets :attr:`received` (the trainer checks it between steps
    with :meth:`requested`); a second one restores the default handler and stops the process at once."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received = False
        self._previous: Any = None

    def __enter__(self) -> StopOnSignal:
        if self.enabled:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.enabled:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received:  # the second signal: stop now, as if no handler were installed
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.received = True
        print(
            "SIGTERM: finishing this step and writing a checkpoint (send it again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    def requested(self, accelerator: Any) -> bool:
        """Whether any process received the signal (one all-reduce a step when there are several), so that
        all stop after the same step."""
        if accelerator.num_processes == 1:
            return self.received
        flag = torch.tensor([float(self.received)], device=accelerator.device)
        return bool(accelerator.reduce(flag, reduction="sum").item() > 0)
