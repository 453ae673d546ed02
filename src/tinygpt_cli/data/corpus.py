"""A corpus of any size: the text sources of `prepare text`, read in bounded pieces.

A source is one file, every matching file of a folder (recursive), or standard input (spooled to
a temporary file, since it is read twice). Each source is one document. Text comes out in
pieces of a few MB at most, each cut just after a newline that a non-space character follows:
a byte-level BPE never joins tokens across such a cut, so the pieces encode to exactly the ids of
the whole text, and memory stays bounded whatever the corpus size.
"""

from __future__ import annotations

import codecs
import fnmatch
import hashlib
import os
import stat
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import TinyGPTError, UsageError
from ..system.fsutil import open_for_reading
from .tokenizer import next_safe_cut

READ_BYTES = 1 << 22  # 4 MiB read at a time
SNIFF_BYTES = 8192
# Text with no safe cut (corpus.next_safe_cut) for this many pieces is cut anyway: a BPE may then
# split one word differently there, instead of holding a whole one-line file in memory.
FORCED_CUT = 8  # a file of a folder whose first bytes are not UTF-8 text is skipped as binary
# Standard input and pipes are copied to a temporary file (read twice): at most this much.
MAX_SPOOL_BYTES = 2**30


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
    skipped_links: int = 0  # symbolic links of a folder that lead out of it (read only with follow_symlinks)

    @property
    def bytes(self) -> int:
        return sum(s.bytes for s in self.sources)


def collect_sources(inputs: list[str], glob: str = "*", spool_dir: Path | None = None, output: Path | None = None,
                    follow_symlinks: bool = False) -> Corpus:
    """The files `inputs` name, in order: files as given, folders walked (sorted) for files
    matching `glob`, "-" for standard input. `output`, the folder being written, is never read:
    an input inside it is refused, and a folder walk passes over it. A symbolic link in a folder
    that leads out of it is skipped and counted, unless `follow_symlinks`."""
    parts = glob_parts(glob)
    sources, skipped, links = [], 0, 0
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
        if output is not None and _within(os.path.realpath(path), os.path.realpath(output)):
            raise UsageError(f"{path} is in the dataset folder being written ({output}): its outputs are never read as text",
                             "pass your text files, or another --data-dir")
        if stat.S_ISDIR(mode):
            walk = FolderWalk(path, parts, output, follow_symlinks)
            found = walk.sources()
            if not found:
                raise UsageError(f"no text file matching {glob!r} in {path}" + walk.skipped_note(),
                                 "pass another folder, or another pattern with --glob")
            sources += found
            skipped += walk.binary
            links += walk.links_out
        elif stat.S_ISREG(mode):
            sources.append(Source(path, os.stat(path).st_size, given))
        else:  # a pipe or a device: read once, into a file that can be read twice
            with open_for_reading(path) as stream:
                sources.append(_spool(stream, given, spool_dir))
    return Corpus(sources, skipped, links)


def glob_parts(glob: str) -> list[str]:
    """A --glob as the parts it matches inside each folder given, at any depth (rglob's rule:
    `*.txt` and `**/*.txt` are the same pattern); a pattern that names nothing there (empty, from
    the root, climbing out with ..) is a usage error."""
    parts = [p for p in glob.split("/") if p not in ("", ".")]
    while parts and parts[0] == "**":
        parts.pop(0)
    if not parts or glob.startswith("/") or ".." in parts or parts[-1] == "**":
        raise UsageError(f"--glob {glob!r}: a pattern is matched against the files inside each folder given, so it must name "
                         "files, and cannot start at the root or climb out with ..", "pass a pattern such as '*.txt' or 'notes/**/*.md'")
    return parts


def glob_matches(parts: list[str], relative: tuple[str, ...]) -> bool:
    """Whether a file's path inside its folder ends with what `parts` match ('**': any number of folders)."""
    def match(p: int, r: int) -> bool:
        if p == len(parts):
            return r == len(relative)
        if parts[p] == "**":
            return any(match(p + 1, k) for k in range(r, len(relative) + 1))
        return r < len(relative) and fnmatch.fnmatchcase(relative[r], parts[p]) and match(p + 1, r + 1)

    return any(match(0, start) for start in range(len(relative)))


def _within(real: str, root: str) -> bool:
    """Whether the resolved path `real` is the resolved folder `root` or inside it."""
    return real == root or real.startswith(root.rstrip(os.sep) + os.sep)


class FolderWalk:
    """The text files of a folder, recursively, sorted: hidden names, the `output` folder and
    binary files are passed over; a symbolic link is read when it stays inside the folder (a
    link to a folder inside is not walked twice) and otherwise only with `follow_symlinks`."""

    def __init__(self, folder: Path, glob: list[str], output: Path | None, follow_symlinks: bool):
        self.folder, self.glob, self.follow = folder, glob, follow_symlinks
        self.root = os.path.realpath(folder)  # resolved once: every entry is compared with them
        self.output = os.path.realpath(output) if output is not None else None
        self.binary = self.links_out = 0

    def sources(self) -> list[Source]:
        found, read = [], set()
        for path in sorted(self._files(), key=lambda p: p.relative_to(self.folder).parts):
            if (real := os.path.realpath(path)) in read:  # a link to a file already taken
                continue
            read.add(real)
            if _looks_binary(path):
                self.binary += 1
            else:
                found.append(Source(path, path.stat().st_size, str(path)))
        return found

    def skipped_note(self) -> str:
        notes = ([f"{self.binary} binary files skipped"] if self.binary else []) + (
            [f"{self.links_out} links out of the folder skipped: --follow-symlinks reads them"] if self.links_out else [])
        return f" ({'; '.join(notes)})" if notes else ""

    def _files(self) -> Iterator[Path]:
        seen = {self.root}  # folders walked, against link loops
        pending = [self.folder]
        while pending:
            current = pending.pop()
            try:
                entries = sorted(os.scandir(current), key=lambda e: e.name)
            except OSError as e:
                raise TinyGPTError(f"cannot read folder {current}: {e.strerror or e}") from e
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                path, real = Path(entry.path), os.path.realpath(entry.path)
                if self.output is not None and _within(real, self.output):
                    continue
                if entry.is_symlink() and not self._take_link(real):
                    continue
                if entry.is_dir():
                    if entry.is_symlink() and _within(real, self.root) or real in seen:
                        continue  # its files are read where they are
                    seen.add(real)
                    pending.append(path)
                elif entry.is_file() and glob_matches(self.glob, path.relative_to(self.folder).parts):
                    yield path

    def _take_link(self, real: str) -> bool:
        if _within(real, self.root) or self.follow:
            return True
        self.links_out += 1
        return False


def _looks_binary(path: Path) -> bool:
    try:
        with open_for_reading(path) as f:
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
    total = 0
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := _read_stream(stream, name):
                if b"\x00" in chunk:
                    raise TinyGPTError(f"{name} looks binary: it holds NUL bytes")
                total += len(chunk)
                if total > MAX_SPOOL_BYTES:
                    raise TinyGPTError(f"{name} is over the {MAX_SPOOL_BYTES:,}-byte limit for text read from a stream",
                                       "save it to a file and pass the file: a file of any size is read where it is")
                out.write(chunk)
    except OSError as e:  # a write (reads are TinyGPTErrors already): a full disk, say
        os.unlink(tmp)
        raise TinyGPTError(f"cannot keep a copy of {name} in {Path(tmp).parent}: {e.strerror or e}",
                           "free some disk space, or save the text to a file and pass the file") from e
    except BaseException:
        os.unlink(tmp)
        raise
    return Source(Path(tmp), os.stat(tmp).st_size, name, spooled=True)


def _read_stream(stream, name: str) -> bytes:
    try:
        return stream.read(READ_BYTES)
    except OSError as e:
        raise TinyGPTError(f"cannot read {name}: {e.strerror or e}") from e


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
