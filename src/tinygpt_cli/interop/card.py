"""The model card that `export` writes, and what proves a folder to be an export of tinygpt's.

Torch-free: `tinygpt runs` tells exports from runs with it.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import Command
from ..system.fsutil import read_limited

CARD_FILE = "README.md"
# The model card's first lines: what proves a folder is an earlier export of tinygpt's (a folder
# that merely holds files of an export's names may be the user's own).
CARD_HEADER = "---\nlibrary_name: transformers\npipeline_tag: text-generation\ntags: [tinygpt]\n---\n\n# A tinygpt model\n"


def is_tinygpt_export(folder: Path) -> bool:
    """Whether `folder` holds our model card (a file, not a link to one): an export that tinygpt wrote."""
    card = folder / CARD_FILE
    if card.is_symlink() or not card.is_file():
        return False
    try:
        return read_limited(card, 1 << 20).startswith(CARD_HEADER.encode())
    except (OSError, ValueError):  # unreadable, or far larger than a card of ours
        return False


def train_command(ckpt) -> Command:
    """The train command that reproduces a checkpoint's settings, for its model card: every
    setting that differs from its default."""
    from ..config import FIELD_INFO

    settings = {**ckpt.model_config.model_dump(), **(ckpt.train_config or {})}
    options = {name: value for name, value in settings.items()
               if name in FIELD_INFO and name != "vocab_size" and value != FIELD_INFO[name].default}
    return Command("train", options=options)
