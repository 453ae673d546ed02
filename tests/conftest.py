"""Shared fixtures: the real console script in a subprocess, the tiny Shakespeare copy, a small text."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SHAKESPEARE = REPO.parent / "shared" / "data" / "tinyshakespeare.txt"

# Variables that change what the CLI does; a test sets them explicitly when it means to.
_DROPPED_ENV = ("TINYGPT_SHAKESPEARE_SOURCE", "TINYGPT_DEBUG")


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env["COLUMNS"] = "200"  # rich tables must not wrap or truncate numbers
    env["PYTHONIOENCODING"] = "utf-8"
    env.pop("FORCE_COLOR", None)
    env["NO_COLOR"] = "1"
    if extra:
        env.update(extra)
    return env


@pytest.fixture
def run_cli(tmp_path):
    """Run `python -m tinygpt_cli ARGS...` in `cwd` (default: tmp_path); return the CompletedProcess."""

    def run(*args: str | os.PathLike, env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "tinygpt_cli", *map(str, args)],
            cwd=str(cwd if cwd is not None else tmp_path),
            env=cli_env(env),
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=timeout,
        )

    return run


@pytest.fixture(scope="session")
def shakespeare_path() -> Path:
    """The local tiny Shakespeare copy: $TINYGPT_SHAKESPEARE_SOURCE or <repo>/../shared/data/tinyshakespeare.txt."""
    path = Path(os.environ.get("TINYGPT_SHAKESPEARE_SOURCE") or DEFAULT_SHAKESPEARE)
    if not path.is_file():
        pytest.skip(f"no local tiny Shakespeare copy at {path} (set TINYGPT_SHAKESPEARE_SOURCE to one)")
    return path


_WORDS = (
    "the a of and to in is was that he she it his her with as for on by at from this but not be have "
    "king queen lord lady sword crown night day love death heart blood time world man men good ill "
    "speak hear come go stay fly stand fall rise weep laugh sing dream sleep wake know think say"
).split()


def make_text(n_chars: int = 5000, seed: int = 1234) -> str:
    """Deterministic English-like text of about `n_chars` characters, over several lines."""
    rng = random.Random(seed)
    lines: list[str] = []
    size = 0
    while size < n_chars:
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 12))]
        words[0] = words[0].capitalize()
        line = " ".join(words) + rng.choice(".,;!?:")
        if rng.random() < 0.15:
            line = "\n" + line  # a blank line now and then
        lines.append(line)
        size += len(line) + 1
    return "\n".join(lines) + "\n"


@pytest.fixture
def small_text(tmp_path) -> Path:
    """A ~5,000-character multi-line English-like UTF-8 text file in tmp_path."""
    path = tmp_path / "small.txt"
    path.write_text(make_text(), encoding="utf-8")
    return path


def tmp_files(root: Path) -> list[Path]:
    """Leftover temporary files of atomic writes anywhere under `root`."""
    return [p for p in root.rglob("*.tmp")]
