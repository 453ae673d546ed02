"""The project's own exceptions. The CLI maps them to `Error:`/`Try:` lines and exit codes."""

from __future__ import annotations


class TinyGPTError(Exception):
    """A failure the user can act on: exit 1 unless a subclass says otherwise."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(TinyGPTError):
    """Bad flags, bad values or bad input given on the command line: exit 2."""

    exit_code = 2


class ConfigError(UsageError):
    """A configuration that breaks one or more rules; one line per broken rule."""

    def __init__(self, problems: list[str], hint: str | None = None):
        super().__init__("invalid configuration:\n" + "\n".join(f"  {p}" for p in problems), hint)
        self.problems = problems


class CheckpointError(TinyGPTError):
    """A checkpoint that is missing, damaged or does not fit what is asked of it."""


class TrainingStopped(TinyGPTError):
    """Training was stopped by a signal after saving; exit 128 + signal number."""

    def __init__(self, message: str, hint: str, exit_code: int):
        super().__init__(message, hint)
        self.exit_code = exit_code
