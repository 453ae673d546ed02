"""Shared rendering helpers: one console for output, one for errors and progress."""

from __future__ import annotations

import json
import sys

from rich.console import Console

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def print_json(obj: object) -> None:
    """Machine-readable output: plain JSON on stdout, nothing else."""
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")
