"""A corpus of any size: the text sources of `prepare text`, read in bounded pieces.

A source is one file, every matching file of a folder (recursive), or standard input (spooled to
a temporary file, since it is read twice). Each source is one document. Text comes out in
pieces of a few MB at most, each cut just after a newline that a non-space character follows:
a byte-level BPE never joins tokens across such a cut, so the pieces encode to exactly the ids of
the whole text, and memory stays bounded whatever the corpus size.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import TinyGPTError, UsageError
from .fsutil import open_for_reading
from .tokenizer import next_safe_cut

READ_BYTES = 1 << 22  # 4 MiB read at a time
SNIFF_BYTES = 8192
# Text with no safe cut (corpus.next_safe_cut) for this many pieces is cut anyway: a BPE may then
# split one word differently there, instead of holding a whole one-line file in memory.
FORCED_CUT = 8  # a file of a folder whose first bytes are not UTF-8 text is skipped as binary


@dataclass(frozen=True)
class Source:
    path: Path
    bytes: int
    name: str  # as the user named it
    spooled: bool = False  # a temporary copy of standard input or a pipe


@dataclass(frozen=True)
class Corpus:
    sources: list[Source]
    skipped_binary: int  # files of a folder that are not UTF-8 text

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.sources)


def collect_sources(inputs: list[str], glob: str = "*", spool_dir: Path | None = None) -> Corpus:
    """The files `inputs` name, in order: files as given, folders walked (sorted) for files
    matching `glob`, "-" for standard input."""
    sources, skipped = [], 0
    for given in inputs:
        if given == "-":
            sources.append(_spool(sys.stdin.buffer, "standard input", spool_dir))
            continue
        path = Path(given)
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError as e:
            raise UsageError(f"no such file or folder: {path}") from e
        except OSError as e:
            raise TinyGPTError(f"cannot read {path}: {e.strerror or e}") from e
        if stat.S_ISDIR(mode):
            found, binary = _folder_files(path, glob)
            if not found:
                raise UsageError(f"no text file matching {glob!r} in {path}" + (f" ({binary} binary files skipped)" if binary else ""),
                                 "pass another folder, or another pattern with --glob")
            sources += found
            skipped += binary
        elif stat.S_ISREG(mode):
            sources.append(Source(path, os.stat(path).st_size, given))
        else:  # a pipe or a device: read once, into a file that can be read twice
            with open_for_reading(path) as stream:
                sources.append(_spool(stream, given, spool_dir))
    return Corpus(sources, skipped)


def _folder_files(folder: Path, glob: str) -> tuple[list[Source], int]:
    found, binary = [], 0
    for path in sorted(p for p in folder.rglob(glob) if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)):
        if _looks_binary(path):
            binary += 1
        else:
            found.append(Source(path, path.stat().st_size, str(path)))
    return found, binary


def _looks_binary(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
    except OSError:
        return True
    if b"\x00" in head:
        return True
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head)  # a character cut at the end is fine
    except UnicodeDecodeError:
        return True
    return False


def _spool(stream, name: str, spool_dir: Path | None) -> Source:
    """Copy a stream that can be read only once into a temporary file (removed by `cleanup`);
    a NUL byte stops it at once: that is no text, and /dev/zero would never end."""
    fd, tmp = tempfile.mkstemp(prefix=".spool.", suffix=".tmp", dir=spool_dir)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := stream.read(READ_BYTES):
                if b"\x00" in chunk:
                    raise TinyGPTError(f"{name} looks binary: it holds NUL bytes")
                out.write(chunk)
    except BaseException:
        os.unlink(tmp)
        raise
    return Source(Path(tmp), os.stat(tmp).st_size, name, spooled=True)


def cleanup(corpus: Corpus) -> None:
    """Remove the temporary copies of standard input and pipes."""
    for source in corpus.sources:
        if source.spooled:
            source.path.unlink(missing_ok=True)


def read_pieces(source: Source, piece_chars: int, digest: hashlib._Hash | None = None) -> Iterator[str]:
    """The text of `source` in pieces of about `piece_chars` characters (more when no safe cut
    comes sooner), decoded strictly as UTF-8; `digest` is fed the raw bytes."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    pending, offset = "", 0
    with open_for_reading(source.path) as f:
        while True:
            raw = f.read(READ_BYTES)
            if digest is not None:
                digest.update(raw)
            if (nul := raw.find(b"\x00")) >= 0:  # UTF-8 spells no character with a zero byte
                raise TinyGPTError(f"{source.name} looks binary: NUL byte at byte offset {offset + nul:,}")
            try:
                pending += decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                raise TinyGPTError(f"{source.name} is not UTF-8 text: invalid byte 0x{e.object[e.start]:02x} "
                                   f"at byte offset {offset + e.start:,}") from e
            offset += len(raw)
            while len(pending) > piece_chars:
                cut = next_safe_cut(pending, piece_chars)
                if cut is None and len(pending) > FORCED_CUT * piece_chars:
                    cut = piece_chars  # text without line breaks (minified code, one long line): memory stays bounded
                if cut is None:
                    break
                yield pending[:cut]
                pending = pending[cut:]
            if not raw:
                break
    if pending:
        yield pending
