"""The project's own exceptions. The CLI maps them to `Error:`/`Try:` lines and exit codes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Command:
    """A tinygpt command to suggest, kept as data: the CLI writes it out as a command line
    (cli/console.py:render_hint), so the core never spells the command-line syntax itself.

    `options` maps setting names (`learning_rate`) to values; True and False stand for a
    switch on or off."""

    name: str  # the subcommand, e.g. "resume" or "prepare shakespeare"
    args: tuple[str, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)
    before: str = ""  # advice that comes first ("free some disk space, then:")
    why: str = ""  # what the command does or shows, written after it in parentheses


Hint = str | Command


class TinyGPTError(Exception):
    """A failure the user can act on: exit 1 unless a subclass says otherwise. The hint is advice
    in words, or a `Command`."""

    exit_code = 1

    def __init__(self, message: str, hint: Hint | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(TinyGPTError):
    """Bad flags, bad values or bad input given on the command line: exit 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration that breaks one or more rules; one line per broken rule."""

    def __init__(self, problems: list[str], hint: Hint | None = None):
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems), hint)
        self.problems = problems


class CheckpointError(TinyGPTError):
    """A checkpoint that is missing, damaged or does not fit what is asked of it."""


class TrainingStopped(TinyGPTError):
    """Training was stopped by a signal after saving; exit 128 + signal number."""

    def __init__(self, message: str, hint: Hint, exit_code: int):
        super().__init__(message, hint)
        self.exit_code = exit_code
