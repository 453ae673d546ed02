"""Options that several commands share, defined once: the same flag means the same thing, with
the same default, everywhere (tests/test_cli_options.py walks every command to hold it)."""

from __future__ import annotations

from pathlib import Path

import typer

RUN = typer.Option(None, "--run", help="Run folder to read (default: the most recent run in runs/).")
CHECKPOINT = typer.Option(None, "--checkpoint", help="A checkpoint file (.safetensors) instead of a run.")
DRY_RUN = typer.Option(False, "--dry-run", help="Show what would be trained (sweep: the grid, each run's parameters and projected time; train --time: the plan and every shape it weighed), and train nothing.")
JSON = typer.Option(False, "--json", help="Print JSON for scripts instead of text for people (no progress display).")
DEVICE = typer.Option("auto", "--device", help="Where to compute (auto: cuda, then mps, then cpu).")
OVERWRITE = typer.Option(False, "--overwrite", help="Replace what an earlier run of this command wrote in the folder; a folder that holds anything else is refused.")
# Sampling: what generate draws from, and what predict shows it drawing from.
TEMPERATURE = typer.Option(0.8, "--temperature", min=0.0, help="Randomness: below 1 safer, above 1 wilder, 0 greedy (the scores are divided by it before the softmax).")
TOP_K = typer.Option(None, "--top-k", min=1, help="Sample only among the k most likely tokens.")
TOP_P = typer.Option(None, "--top-p", min=0.0, max=1.0, help="Sample from the smallest set of tokens whose probability reaches p.")
SEED = typer.Option(None, "--seed", min=0, max=2**32 - 1, help="Same seed and options give the same text (0 to 4294967295).")


def run_named(option: Path | None, positional: Path | None, command: str) -> Path | None:
    """The run a command acts on: --run, or a run named as an argument, the way earlier versions
    of resume, export and plot took it (still taken, with a note that says the new way)."""
    from ..errors import UsageError

    if positional is None:
        return option
    if option is not None:
        raise UsageError(f"the run is named twice: {positional} and --run {option}", f"tinygpt {command} --run RUN")
    say_deprecated([positional])
    return positional


def say_deprecated(runs: list[Path]) -> None:
    """The note for runs named as arguments: the same command line, written the new way (a
    checkpoint file with --checkpoint), once under torchrun."""
    import os
    import shlex
    import sys

    from .console import err

    if os.environ.get("RANK", "0") != "0":
        return
    given = {str(r) for r in runs}
    words = []
    for arg in sys.argv[1:]:
        if arg in given:
            words += ["--checkpoint" if Path(arg).is_file() else "--run", arg]
            given.discard(arg)
        else:
            words.append(arg)
    err.print(f"note: naming the run as an argument is deprecated: tinygpt {shlex.join(words)}", markup=False, soft_wrap=True)
