"""A graceful stop on SIGTERM, the way clusters preempt a job (SLURM, Kubernetes, spot instances send it and
wait a grace period before SIGKILL): the current optimizer step finishes, a checkpoint is written, and the
run exits with code 143 (128 + SIGTERM) saying how to resume. A second SIGTERM stops at once, as the
signal's default does (one sent more than 2 s after the first: the same signal delivered twice, by the
scheduler and by the launcher, is one request). ``train.save_on_signal: false`` keeps the default (exit at once, up to
``train.save_every`` steps lost). Under ``accelerate launch`` every process stops after the same step.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from types import FrameType, TracebackType
from typing import Any

import torch

from tether.errors import TetherError

#: A repeat within this many seconds of the first signal is the same request delivered twice (SLURM signals
#: every process of the job step and ``torchrun`` forwards its own SIGTERM to the workers too), not a
#: second one.
REPEAT_WINDOW_S = 2.0


class Preempted(TetherError):
    """The run stopped on SIGTERM after a checkpoint; ``train.resume=true`` continues it exactly."""

    exit_code = 128 + signal.SIGTERM


class StopOnSignal:
    """Within the block, the first SIGTERM only sets :attr:`received` (the trainer checks it between steps
    with :meth:`requested`); a second one restores the default handler and stops the process at once."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.received = False
        self._first = 0.0
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
        now = time.monotonic()
        if self.received and now - self._first > REPEAT_WINDOW_S:  # a second signal: stop now
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if self.received:  # the same request delivered twice (the scheduler and the launcher both send it)
            return
        self.received, self._first = True, now
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
