"""User-facing errors. The CLI prints each as one line and exits with code 2, never a traceback."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


class TetherError(Exception):
    """A problem with the user's input (config, data, model path). ``str(err)`` is the message shown."""


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
