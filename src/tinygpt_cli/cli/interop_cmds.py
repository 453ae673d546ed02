"""`tinygpt export`: a trained model as a folder that other tools run."""

from __future__ import annotations

from pathlib import Path

import typer

from .console import out, print_json
from .options import JSON, OVERWRITE

EXPORT_FORMATS = ("hf",)


def _train_command(ckpt) -> str:
    """The train command line that reproduces a checkpoint's settings: every one that differs
    from its default, spelled as a flag."""
    from ..config import FIELD_INFO
    from ..errors import Command
    from .console import render_hint

    settings = {**ckpt.model_config.model_dump(), **(ckpt.train_config or {})}
    options = {name: value for name, value in settings.items()
               if name in FIELD_INFO and name != "vocab_size" and value != FIELD_INFO[name].default}
    return render_hint(Command("train", options=options))


def export(
    run: Path = typer.Argument(..., help="A run folder (its best checkpoint, else its last) or a checkpoint file."),
    folder: Path = typer.Argument(..., help="Folder to write (new, empty, or an earlier export with --overwrite)."),
    to: str = typer.Option(..., "--to", help="Format: hf (a Hugging Face transformers folder: model, tokenizer, model card)."),
    overwrite: bool = OVERWRITE,
    as_json: bool = JSON,
) -> None:
    """Write a trained model in another tool's format.

    Example: tinygpt export runs/demo runs/demo-hf --to hf
    """
    from ..checkpoint import load_checkpoint
    from ..errors import UsageError
    from ..interop.export import export_hf
    from ..rundir import resolve_checkpoint

    if to not in EXPORT_FORMATS:
        raise UsageError(f"--to {to}: the formats are {', '.join(EXPORT_FORMATS)}", "pass --to hf")
    checkpoint = resolve_checkpoint(run=run) if run.is_dir() else run
    ckpt = load_checkpoint(checkpoint)
    result = export_hf(ckpt, checkpoint, folder, _train_command(ckpt), overwrite)
    if as_json:
        print_json({"folder": str(result.folder), "checkpoint": str(checkpoint), "architecture": result.architecture,
                    "parameters": result.parameters, "files": result.files})
        return
    out.print(f"exported {checkpoint} (iteration {ckpt.iteration:,}) as {result.architecture}, "
              f"{result.parameters:,} parameters, to {result.folder}/", soft_wrap=True)
    out.print(f"  load it: AutoModelForCausalLM.from_pretrained({str(result.folder)!r}) "
              f"and AutoTokenizer.from_pretrained({str(result.folder)!r})", soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("export")(export)
