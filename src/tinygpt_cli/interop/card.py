"""The model card that `export` writes, and what proves a folder to be an export of tinygpt's.

Torch-free: `tinygpt runs` tells exports from runs with it.
"""

from __future__ import annotations

from pathlib import Path

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
