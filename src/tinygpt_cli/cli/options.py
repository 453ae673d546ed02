"""Options that several commands share, defined once: the same flag means the same thing everywhere."""

from __future__ import annotations

import typer

RUN = typer.Option(None, "--run", help="Run folder to read (default: the most recent run in runs/).")
CHECKPOINT = typer.Option(None, "--checkpoint", help="A checkpoint file (.safetensors) instead of a run.")
JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
DEVICE = typer.Option("cpu", "--device", help="auto, cpu, cuda or mps.")
