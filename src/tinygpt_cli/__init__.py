"""tinygpt: build a small character-level GPT from scratch.

The library API is importable from here; names load lazily so that `tinygpt --help` stays fast.
"""

from __future__ import annotations

__version__ = "0.1.0"
