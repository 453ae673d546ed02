"""The `tinygpt` Typer app and the one place that turns exceptions into exit codes."""

from __future__ import annotations

import os
import signal
import sys

import typer
from typer.exceptions import TyperException

from .. import __version__
from ..errors import TinyGPTError, TrainingStopped
from .console import render_hint
from . import bench_cmds, chat_cmds, data_cmds, generate_cmds, inside_cmds, interop_cmds, model_cmds, train_cmds
from . import runs_cmds, serve_cmds

class JourneyOrder(typer.core.TyperGroup):
    """`tinygpt --help` lists the commands in the order a user meets them: prepare comes first
    (a sub-app, which typer would list last)."""

    def list_commands(self, ctx) -> list[str]:
        names = super().list_commands(ctx)
        return sorted(names, key=lambda name: name != "prepare")


app = typer.Typer(
    name="tinygpt",
    cls=JourneyOrder,
    help="Build a small GPT language model from scratch.\n\nExample: tinygpt prepare shakespeare",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"tinygpt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Build a small GPT language model from scratch.

    Example: tinygpt prepare shakespeare && tinygpt train --preset cpu
    """


data_cmds.register(app)
train_cmds.register(app)
generate_cmds.register(app)
chat_cmds.register(app)
model_cmds.register(app)
inside_cmds.register(app)
interop_cmds.register(app)
bench_cmds.register(app)
runs_cmds.register(app)
serve_cmds.register(app)


def _report(message: str, hint: str | None, label: str = "Error:") -> None:
    from rich.text import Text

    from .console import err

    err.print(Text.assemble((label, "bold red" if label == "Error:" else "bold yellow"), " ", message), soft_wrap=True)
    if hint:
        err.print(Text.assemble(("Try:", "bold"), " ", hint), soft_wrap=True)


def main() -> None:
    debug = os.environ.get("TINYGPT_DEBUG") == "1"
    try:
        _run(debug)
    finally:
        # From here on the process only exits: a Ctrl-C now ends it at once, quietly, instead of
        # raising KeyboardInterrupt inside an exit handler ("Exception ignored in atexit callback").
        signal.signal(signal.SIGINT, signal.SIG_DFL)


def _run(debug: bool) -> None:
    try:
        # Not standalone: usage errors come back here and are rendered like every other error.
        code = app(standalone_mode=False)
    except TyperException as e:  # bad flags or values: click's usage errors, exit 2
        ctx = getattr(e, "ctx", None)
        if e.format_message():  # empty after a bare group name: the help was already shown
            _report(e.format_message(), f"{ctx.command_path if ctx else 'tinygpt'} --help")
        sys.exit(getattr(e, "exit_code", 2))
    except typer.Abort:
        _report("aborted", None)
        sys.exit(1)
    except TinyGPTError as e:
        if debug:
            raise
        # A graceful stop saved everything: it is reported, but it is not an error.
        _report(e.message, render_hint(e.hint), "Stopped:" if isinstance(e, TrainingStopped) else "Error:")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        if debug:
            raise
        _report("interrupted", None)
        sys.exit(130)
    except Exception as e:  # a bug: still one line, the traceback on request
        if debug:
            raise
        _report(f"internal error: {type(e).__name__}: {e}", "TINYGPT_DEBUG=1 tinygpt ...  (shows the traceback; please report it)")
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
