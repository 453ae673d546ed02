"""`tinygpt export`: a trained model as a folder that other tools run."""

from __future__ import annotations

from pathlib import Path

import typer

from .console import out, print_json, render_hint
from .options import CHECKPOINT, JSON, OVERWRITE, RUN, run_named

EXPORT_FORMATS = ("hf",)


def export(
    folders: list[Path] = typer.Argument(..., metavar="FOLDER", help="Folder to write (new, empty, or an earlier export with --overwrite)."),
    run: Path = RUN,
    checkpoint: Path = CHECKPOINT,
    to: str = typer.Option(..., "--to", help="Format: hf (a Hugging Face transformers folder: model, tokenizer, model card)."),
    overwrite: bool = OVERWRITE,
    as_json: bool = JSON,
) -> None:
    """Write a trained model in another tool's format: its best checkpoint, else its last.

    Example: tinygpt export runs/demo-hf --run runs/demo --to hf
    """
    from ..checkpoint import load_checkpoint
    from ..errors import UsageError
    from ..interop.card import train_command
    from ..interop.export import export_hf
    from ..rundir import resolve_checkpoint

    if len(folders) > 2:
        raise UsageError(f"export writes one folder; got {len(folders)}: {', '.join(map(str, folders))}", "tinygpt export FOLDER --run RUN --to hf")
    earlier, folder = (folders[0], folders[1]) if len(folders) == 2 else (None, folders[0])  # earlier: RUN FOLDER
    if to not in EXPORT_FORMATS:
        raise UsageError(f"--to {to}: the formats are {', '.join(EXPORT_FORMATS)}", "pass --to hf")
    source = run_named(run, earlier, "export")
    if source is not None and source.is_file() and checkpoint is None:  # a checkpoint file where the run goes, as export took it
        source, checkpoint = None, source
    checkpoint = resolve_checkpoint(source, checkpoint)
    ckpt = load_checkpoint(checkpoint)
    result = export_hf(ckpt, checkpoint, folder, render_hint(train_command(ckpt)), overwrite)
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
