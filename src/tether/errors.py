"""User-facing errors. The CLI prints each as one line, never a traceback, and exits with the error's
``exit_code``: 2 for bad input (config, data, model path: the user fixes the input), 1 for a fault of the
machine (:class:`EnvironmentFault`: a full disk, a directory that cannot be written; the input was fine),
3 for a run whose loss diverged."""

from __future__ import annotations

import contextlib
import difflib
import errno
import reprlib
import shutil
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path


class TetherError(Exception):
    """A problem with the user's input (config, data, model path). ``str(err)`` is the message shown."""

    exit_code = 2


class EnvironmentFault(TetherError):
    """The machine, not the input: no space left, a directory that cannot be written, a file that vanished
    while it was read. Exit code 1; what was written before is kept, nothing half-written is left."""

    exit_code = 1


#: errno values that are faults of the machine (the disk, the mount, permissions), not of tether or the input.
ENVIRONMENT_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EACCES,
        errno.EPERM,
        errno.ENAMETOOLONG,
        errno.EMFILE,
        errno.ENFILE,
        errno.EIO,
        errno.ENOENT,
        errno.ESTALE,
    }
)


def environment_fault(exc: OSError, doing: str) -> EnvironmentFault:
    """One line for an ``OSError`` met while ``doing`` something (``"writing checkpoint-40 in runs/x"``),
    with what to do about it."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    where = f" ({shown_text(str(exc.filename))})" if exc.filename and str(exc.filename) not in doing else ""
    hint = {
        errno.ENOSPC: "free space on that disk (or set train.save_total_limit / TETHER_CACHE elsewhere)",
        errno.EDQUOT: "free space within your quota",
        errno.EROFS: "choose a directory on a writable file system",
        errno.EACCES: "choose a directory you may write, or fix its permissions",
        errno.EPERM: "choose a directory you may write, or fix its permissions",
        errno.ENAMETOOLONG: "choose a shorter name",
    }.get(exc.errno or 0, "")
    return EnvironmentFault(f"{doing}: {reason.lower()}{where}" + (f"; {hint}" if hint else ""))


@dataclass(frozen=True)
class Problem:
    """One problem in a data file: where it is and what is wrong."""

    file: str
    line: int | None
    field: str | None
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        what = f"field '{self.field}': " if self.field else ""
        return f"{where}: {what}{self.message}"


class DataError(TetherError):
    """Every problem found in a data file (``tether validate`` lists them all)."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        super().__init__(f"{problems[0]}{more}")


class ConfigError(TetherError):
    """A bad config key or value. ``key``: the dotted key at fault (``train.lr``), where one is."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


#: The most characters of a user's value an error message echoes.
SHOWN_CHARS = 80

_BOUNDED = reprlib.Repr()
_BOUNDED.maxlevel, _BOUNDED.maxstring, _BOUNDED.maxother = 4, SHOWN_CHARS, SHOWN_CHARS
_BOUNDED.maxlist = _BOUNDED.maxtuple = _BOUNDED.maxdict = _BOUNDED.maxset = 10


def _small(value: object, budget: int = 1000) -> int:
    """What is left of ``budget`` after counting ``value``'s items and characters (negative: too large to
    ``repr`` whole); stops counting as soon as the budget is spent."""
    if isinstance(value, (str, bytes)):
        return budget - len(value)
    if isinstance(value, dict):
        value = [x for kv in value.items() for x in kv] if len(value) < budget else range(budget)
    if isinstance(value, (list, tuple, set, frozenset, range)):
        budget -= 1
        for item in value:
            budget = _small(item, budget)
            if budget < 0:
                break
        return budget
    return budget - 1


def shown(value: object, limit: int = SHOWN_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters, for echoing a user's value in a one-line error: a huge
    value (an alias bomb's list, a 20 MB field) never floods the line, and only a bounded part of it is ever
    turned into text (through ``reprlib``; small values read as their plain ``repr``)."""
    return shown_text(repr(value) if _small(value) >= 0 else _BOUNDED.repr(value), limit)


def shown_text(text: str, limit: int = SHOWN_CHARS) -> str:
    """``text`` cut to ``limit`` characters (``…`` marks the cut), for echoing what a user typed."""
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def closest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest valid name, or '' if nothing is close.

    Close means similar spelling, or a valid name that is the initials of ``name``'s ``_``-separated
    words (``learning_rate`` → ``lr``).
    """
    choices = list(choices)
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    if not match:
        initials = "".join(word[0] for word in name.lower().split("_") if word)
        match = [c for c in choices if len(initials) > 1 and c == initials]
    return f" (did you mean '{match[0]}'?)" if match else ""


def out_of_space(e: BaseException, where: Path) -> bool:
    """Whether ``e``, raised while writing under ``where``, means the disk (or quota) is full: an
    ``OSError`` saying so, or (torch's serializer says it as ``RuntimeError: ... unexpected pos``) a
    file system with less than 1 MB left."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if "No space left" in str(e):
        return True
    try:
        return shutil.disk_usage(where).free < 2**20
    except OSError:
        return False


@contextlib.contextmanager
def whole_or_nothing(
    cleanup: Callable[[], object], where: Path, doing: str, advice: str, need: Callable[[], int] | None = None
) -> Iterator[None]:
    """Run the block that writes something under ``where``; on any exception ``cleanup()`` removes what it
    half-wrote, and a full disk becomes one :class:`EnvironmentFault` line: what was being done, about how
    much to free (``need()``, bytes, asked only then) and ``advice``."""
    try:
        yield
    except BaseException as e:
        cleanup()
        if not (isinstance(e, (OSError, RuntimeError)) and out_of_space(e, where)):
            raise  # torch.save says a full disk as RuntimeError
        try:
            free = shutil.disk_usage(where).free
        except OSError:
            free = 0
        wanted = need() if need else 0
        size = f"free about {max(wanted - free, 0) / 2**20:.0f} MB" if wanted else "free space"
        raise EnvironmentFault(
            f"no space left on the disk of {where} while {doing}: {size}, {advice}"
        ) from None
