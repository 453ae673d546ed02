"""`export --to hf`: a checkpoint as a folder that transformers loads (see hf.py for the mapping).

The folder is written whole beside its destination and renamed into place, so an interrupted
export leaves nothing half-written; an earlier export is replaced only when asked, and a folder
holding anything else is never touched.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from safetensors.torch import save_file

from ..checkpoint import Checkpoint
from ..errors import TinyGPTError, UsageError
from ..evaluate import bits_per_byte
from ..system.fsutil import entries_except, short_list
from .card import CARD_FILE, CARD_HEADER, is_tinygpt_export
from .hf import ARCHITECTURES, CLASS_NAMES, WEIGHTS_FILE, hf_config, hf_tensors, tokenizer_files

CHAT_EXPORT_FILES = ("chat_template.jinja", "generation_config.json")  # a model trained on conversations also has these
EXPORT_FILES = ("config.json", WEIGHTS_FILE, "tokenizer.json", "tokenizer_config.json", "README.md", *CHAT_EXPORT_FILES)


@dataclass
class ExportResult:
    folder: Path
    architecture: str  # the transformers class
    parameters: int
    files: list[str]


def model_card(ckpt: Checkpoint, checkpoint_path: Path, folder: Path, train_command: str, architecture: str) -> str:
    """README.md: what the model is, what it learned from, how well, and how it was trained."""
    m, t = ckpt.model_config, ckpt.train_config or {}
    tokenizer = f"{'characters' if ckpt.tokenizer.kind == 'char' else 'byte-level BPE'}, {ckpt.tokenizer.size:,} tokens"
    rows = [("architecture", f"{architecture} ({m.n_layer} layers, {m.n_head} heads, width {m.n_embd}, context {m.block_size})"),
            ("tokenizer", tokenizer), ("data", t.get("data_dir", "unknown")), ("iterations", f"{ckpt.iteration:,}"),
            ("quality", _quality(ckpt)), ("checkpoint", f"{checkpoint_path} ({ckpt.kind})")]
    if t.get("init_from"):
        rows.append(("fine-tuned from", t["init_from"]))
    settings = json.dumps({"model": m.model_dump(), "train": t}, indent=2)
    return CARD_HEADER + "\n".join([
        "",
        f"{'Fine-tuned' if t.get('init_from') else 'Trained from scratch'} with tinygpt and exported for Hugging Face transformers.", "",
        "| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows), "",
        "## Use it", "", "```python", "from transformers import pipeline", "",
        f'generate = pipeline("text-generation", model={json.dumps(str(folder))})', *_use_it(ckpt), "```", "",
        "## How it was trained", "", "```", train_command, "```", "", "Every setting:", "", "```json", settings, "```", "",
    ])


def _use_it(ckpt: Checkpoint) -> list[str]:
    """The card's example call: a prompt to continue, or for a chat model, messages to answer."""
    room = max(1, ckpt.model_config.block_size // 2)
    if ckpt.chat_template is not None:
        return ['messages = [{"role": "user", "content": "Hello!"}]',
                f'print(generate(messages, max_new_tokens={room}, do_sample=False)[0]["generated_text"][-1]["content"])']
    return [f'print(generate("ROMEO:", max_new_tokens={room}, do_sample=True)[0]["generated_text"])']


def _quality(ckpt: Checkpoint) -> str:
    """The card's loss: the final evaluation over the validation split when the run finished
    (the figure `tinygpt eval` gives), else training's estimate, labelled as one."""
    final = ckpt.progress.get("final_eval")
    if final:
        over = "every token of the validation split" if final["whole_split"] else "windows spread through the validation split"
        return (f"val loss {final['val_loss']:.4f}, {final['val_bits_per_byte']:.4f} bits per byte "
                f"(over {over}: {final['tokens']:,} tokens)")
    if ckpt.val_loss is None:
        return "not evaluated"
    per_token = ckpt.progress.get("val_bytes_per_token")
    bpb = f", {bits_per_byte(ckpt.val_loss, per_token):.4f} bits per byte" if per_token else ""
    sampled = ckpt.progress.get("eval_tokens")
    how = (f" (estimated during training over {sampled:,} tokens drawn from the validation split; "
           "the eval command scores all of it)") if sampled else ""
    return f"val loss {ckpt.val_loss:.4f}{bpb}{how}"


def _foreign_contents(folder: Path, named: Path) -> UsageError | None:
    """Why the folder `folder` (the user's `named`) is not ours to replace (None: it is empty, or an earlier export)."""
    if not any(folder.iterdir()):
        return None
    foreign = entries_except(folder, lambda name: name in EXPORT_FILES)
    if foreign:
        return UsageError(f"{named} holds files that are not an export's ({short_list(foreign)}): exporting would mix with them",
                          "pass a new or empty folder to export to")
    if not is_tinygpt_export(folder):
        return UsageError(f"{named} holds files but not the model card ({CARD_FILE}) that tinygpt writes in an export: they may be yours",
                          "pass a new or empty folder to export to")
    return None


def _check_destination(folder: Path, overwrite: bool) -> bool:
    """Whether `folder` is there to be replaced (empty, or an earlier export); refuses anything else."""
    if not folder.exists() and not folder.is_symlink():
        return False
    if folder.is_symlink() or not folder.is_dir():
        raise UsageError(f"{folder} is {'a symbolic link' if folder.is_symlink() else 'a file'}, not a folder",
                         "pass a new folder to export to")
    if (problem := _foreign_contents(folder, folder)) is not None:
        raise problem
    if any(folder.iterdir()) and not overwrite:
        raise UsageError(f"{folder} already holds an export", "pass --overwrite to replace it, or another folder")
    return True


def export_hf(ckpt: Checkpoint, checkpoint_path: Path, folder: Path, train_command: str, overwrite: bool = False) -> ExportResult:
    """Write `ckpt` (read from `checkpoint_path`) as a transformers folder (model, tokenizer,
    card) at `folder`."""
    config = ckpt.model_config
    tensors = hf_tensors(config, ckpt.weights)  # refuses what transformers cannot express, first
    architecture = CLASS_NAMES[ARCHITECTURES[config.pos_embedding]]
    replace = _check_destination(folder, overwrite)
    texts = {"config.json": json.dumps(hf_config(config, ckpt.tokenizer, ckpt.chat_template is not None), indent=2) + "\n",
             **tokenizer_files(ckpt.tokenizer, config.block_size, ckpt.chat_template),
             "README.md": model_card(ckpt, checkpoint_path, folder, train_command, architecture)}
    parent = folder.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=parent))
    except OSError as e:
        raise TinyGPTError(f"cannot create {folder}: {e.strerror or e}", "pass a writable folder") from e
    try:
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata={"format": "pt"})
        for name, text in texts.items():
            (staging / name).write_text(text, encoding="utf-8")
        for file in staging.iterdir():
            os.chmod(file, 0o644)  # as any file the user writes, not the private mode of a temporary
        os.chmod(staging, 0o755)
        _move_into_place(staging, folder, replace)
    except OSError as e:
        raise TinyGPTError(f"cannot write the export to {folder}: {e.strerror or e}", "free some disk space, or pass another folder") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(folder, architecture, sum(t.numel() for t in ckpt.weights.values()), sorted([WEIGHTS_FILE, *texts]))


def _move_into_place(staging: Path, folder: Path, replace: bool) -> None:
    """Rename the finished folder in; an earlier export (or an empty folder) is moved aside
    first and deleted after, so `folder` is always either the old export or the new one."""
    if not replace:
        os.replace(staging, folder)
        return
    old = staging.with_name(staging.name + ".old")
    os.replace(folder, old)
    if (problem := _foreign_contents(old, folder)) is not None:  # something came in while the export was written
        os.replace(old, folder)
        raise problem
    try:
        os.replace(staging, folder)
    except OSError:
        os.replace(old, folder)
        raise
    shutil.rmtree(old, ignore_errors=True)
