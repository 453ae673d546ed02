"""The character vocabulary: every distinct character of a text, sorted, one id each, and any
special tokens after them (the chat markers of data/chat.py), which no text encodes to."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import Command, TinyGPTError, UsageError
from ..system.fsutil import read_json, write_json_atomic

VOCAB_FORMAT = "tinygpt-vocab"
VOCAB_VERSION = 1
# Token files store ids as uint16, so a vocabulary holds at most this many characters.
MAX_VOCAB_SIZE = 2**16


def escape_char(ch: str) -> str:
    """A visible spelling of a character: whitespace and control characters escaped."""
    named = {"\n": "\\n", "\t": "\\t", "\r": "\\r", " ": "␣"}
    if ch in named:
        return named[ch]
    if not ch.isprintable():
        return f"\\u{ord(ch):04x}" if ord(ch) <= 0xFFFF else f"\\U{ord(ch):08x}"
    return ch


def _too_many_characters(n: int) -> TinyGPTError:
    return TinyGPTError(f"the text has {n:,} distinct characters; at most {MAX_VOCAB_SIZE:,} fit in uint16 token ids")


class UnknownCharactersError(UsageError):
    def __init__(self, unknown: Iterable[str]):
        self.unknown = sorted(set(unknown))
        listed = " ".join(repr(c) for c in self.unknown[:20])
        more = f" and {len(self.unknown) - 20} more" if len(self.unknown) > 20 else ""
        super().__init__(
            f"{len(self.unknown)} character(s) not in the vocabulary: {listed}{more}",
            Command("vocab", before="use only characters of the training text:", why="lists them"),
        )


@dataclass(frozen=True)
class Vocabulary:
    """Maps characters to ids and back. Ids follow code-point order, so the mapping is canonical;
    special tokens, if any, take the ids after the characters, in the order given."""

    chars: tuple[str, ...]
    specials: tuple[str, ...] = ()
    _codepoints: np.ndarray = field(init=False, repr=False, compare=False)
    kind = "char"
    eot_id = None  # one text, no documents to separate

    def __post_init__(self) -> None:
        if list(self.chars) != sorted(set(self.chars)) or any(len(c) != 1 for c in self.chars):
            raise ValueError("vocabulary characters must be distinct single characters in sorted order")
        if len(set(self.specials)) != len(self.specials) or any(len(t) < 2 for t in self.specials):
            raise ValueError("special tokens must be distinct and longer than one character")
        if not 0 < len(self.chars) + len(self.specials) <= MAX_VOCAB_SIZE:
            raise _too_many_characters(len(self.chars) + len(self.specials))
        codepoints = np.array([ord(c) for c in self.chars], dtype=np.uint32)
        object.__setattr__(self, "_codepoints", codepoints)

    @classmethod
    def from_text(cls, text: str) -> Vocabulary:
        if not text:
            raise TinyGPTError("the text is empty: there is nothing to build a vocabulary from")
        codepoints = np.unique(np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32))
        if len(codepoints) > MAX_VOCAB_SIZE:  # before building the tuple of characters
            raise _too_many_characters(len(codepoints))
        return cls(tuple(chr(int(c)) for c in codepoints))

    @classmethod
    def from_codepoints(cls, codepoints: set[int]) -> Vocabulary:
        """The vocabulary of a text whose distinct code points are `codepoints`."""
        if not codepoints:
            raise TinyGPTError("the text is empty: there is nothing to build a vocabulary from")
        if len(codepoints) > MAX_VOCAB_SIZE:
            raise _too_many_characters(len(codepoints))
        return cls(tuple(chr(c) for c in sorted(codepoints)))

    @property
    def size(self) -> int:
        return len(self.chars) + len(self.specials)

    def __len__(self) -> int:
        return self.size

    def with_specials(self, tokens: tuple[str, ...]) -> Vocabulary:
        """This vocabulary with `tokens` appended as special tokens (those it lacks)."""
        return Vocabulary(self.chars, self.specials + tuple(t for t in tokens if t not in self.specials))

    def special_id(self, token: str) -> int | None:
        return len(self.chars) + self.specials.index(token) if token in self.specials else None

    def encode_array(self, text: str) -> np.ndarray:
        """Token ids of `text` as uint16; raises UnknownCharactersError listing strangers."""
        # surrogatepass: a lone surrogate (e.g. from a non-UTF-8 command-line argument) is reported as unknown
        codepoints = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        ids = np.searchsorted(self._codepoints, codepoints)
        ids = np.minimum(ids, len(self._codepoints) - 1)
        unknown = self._codepoints[ids] != codepoints
        if unknown.any():
            raise UnknownCharactersError(chr(int(c)) for c in codepoints[unknown])
        return ids.astype(np.uint16)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        tokens = self.chars + self.specials
        try:
            return "".join(tokens[i] for i in ids)
        except IndexError as e:
            raise TinyGPTError(f"token id out of range for a vocabulary of {self.size}") from e

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes of a token's character (a special token: its name's)."""
        return (self.chars + self.specials)[token_id].encode("utf-8")

    def to_dict(self) -> dict:
        return {"format": VOCAB_FORMAT, "version": VOCAB_VERSION, "size": self.size, "chars": list(self.chars),
                **({"specials": list(self.specials)} if self.specials else {})}

    @classmethod
    def from_dict(cls, obj: object, source: str = "vocabulary") -> Vocabulary:
        ok = (
            isinstance(obj, dict)
            and obj.get("format") == VOCAB_FORMAT
            and obj.get("version") == VOCAB_VERSION
            and isinstance(obj.get("chars"), list)
            and isinstance(obj.get("specials", []), list)
            and 0 < len(obj["chars"]) + len(obj.get("specials", [])) <= MAX_VOCAB_SIZE
            and all(isinstance(c, str) for c in obj["chars"] + obj.get("specials", []))
            and obj.get("size") == len(obj["chars"]) + len(obj.get("specials", []))
        )
        if not ok:
            raise TinyGPTError(f"{source} is not a tinygpt vocabulary (format {VOCAB_FORMAT} v{VOCAB_VERSION})")
        try:
            return cls(tuple(obj["chars"]), tuple(obj.get("specials", [])))
        except ValueError as e:
            raise TinyGPTError(f"{source}: {e}") from e

    def save(self, path: str | Path) -> None:
        write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Vocabulary:
        try:
            obj = read_json(path)
        except FileNotFoundError as e:
            raise TinyGPTError(f"no vocabulary file at {path}") from e
        except (OSError, ValueError) as e:
            raise TinyGPTError(f"cannot read vocabulary {path}: {e}") from e
        return cls.from_dict(obj, str(path))

    def counts(self, ids: np.ndarray) -> np.ndarray:
        """How often each id occurs in `ids`."""
        return np.bincount(ids, minlength=self.size)
