"""Dataset folders: what they hold, how they are checked and loaded; reading and downloading text.

A dataset folder holds the tokenizer (`vocab.json` for characters, `tokenizer.json` for BPE),
`train.bin` and `val.bin` (token ids, uint16, or uint32 for a vocabulary past 65,536) and
`meta.json` (sources and their digests, sizes, checksums, split, tokenizer). prepare.py writes
them. A dataset of conversations (prepare_chat.py) also holds `train.mask` and `val.mask`, one
byte per token (data/chat.py: which tokens are trained, where each conversation starts). `meta.json` is written last and
removed first, so a folder with a `meta.json` whose checksums match is complete. A mark file,
`.tinygpt-dataset`, is written before anything else: tinygpt writes only into a folder it made
(or an empty one), so a user's own files are never overwritten.
"""

from __future__ import annotations

import fcntl
import hashlib
import http.client
import os
import re
import stat
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import Command, TinyGPTError, UsageError
from ..system.fsutil import entries_except, file_sha256, is_temp_file_of, read_json, read_user_file, short_list
from .tokenizer import Tokenizer, byte_lengths, load_tokenizer, token_counts

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_BYTES = 1_115_394

META_FORMAT = "tinygpt-dataset"
# 2: the tokenizer and the token type (1: characters, uint16, with a copy of the text in input.txt)
# 3: the sources, the split, the bytes of text in each split; no copy of the text
# 4: the kind (text or chat); a chat dataset's template, counts and loss masks
META_VERSION = 4
# Each split must hold at least this many tokens, enough for a few windows to train and evaluate on.
MIN_SPLIT_TOKENS = 256
# Refuse downloads past this size: a char-level corpus this tool can train on is far smaller.
MAX_DOWNLOAD_BYTES = 256 * 2**20
# Refuse local text files past this size too, before reading them (a huge or endless file would
# otherwise be read into memory whole).
MAX_SOURCE_BYTES = 2**30
DOWNLOAD_TIMEOUT_S = 30
# The files of a dataset folder, and the mark that says tinygpt made the folder (written before
# any of them and never removed, so that a prepare killed midway can be run again).
# (input.txt: the copy of the text that format 1 and 2 folders hold)
DATASET_FILES = ("input.txt", "vocab.json", "tokenizer.json", "train.bin", "val.bin", "train.mask", "val.mask", "meta.json")
# Splits larger than this are read through np.memmap instead of into memory.
IN_MEMORY_BYTES = 2**28


OWNER_MARK = ".tinygpt-dataset"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_name(name: str, what: str = "name") -> str:
    """A dataset or run name: letters, digits, '.', '_', '-'; no path separators, no '..'."""
    if not _NAME_RE.match(name) or ".." in name:
        raise UsageError(
            f"invalid {what} {name!r}: use letters, digits, '.', '_' and '-' only (no '/' or '..')",
        )
    return name


def is_url(source: str) -> bool:
    return "://" in source


def download(url: str, max_bytes: int = MAX_DOWNLOAD_BYTES, timeout: float = DOWNLOAD_TIMEOUT_S) -> bytes:
    """Fetch `url` (http or https only) into memory, refusing bodies over `max_bytes`."""
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        raise UsageError(f"unsupported URL scheme {scheme!r} in {url}: only http and https", "pass a local file path to --source instead")
    offline_hint = Command("prepare shakespeare", options={"source": "PATH/TO/input.txt"}, why="a local copy works offline")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) > max_bytes:
                raise TinyGPTError(f"{url} is {int(declared):,} bytes, over the {max_bytes:,}-byte download limit")
            body = response.read(max_bytes + 1)
    except urllib.error.HTTPError as e:
        raise TinyGPTError(f"download failed: {url} answered HTTP {e.code} {e.reason}", offline_hint) from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", e)
        raise TinyGPTError(f"cannot reach {url}: {reason}", offline_hint) from e
    if len(body) > max_bytes:
        raise TinyGPTError(f"{url} sent more than the {max_bytes:,}-byte download limit")
    return body


def read_source(source: str) -> bytes:
    """Bytes of a local file or an http(s) URL; local files over MAX_SOURCE_BYTES are refused."""
    if is_url(source):
        return download(source)
    return read_user_file(source, MAX_SOURCE_BYTES, "text file", Command("prepare text", ("FILE",), why="reads a text of any size"))


def decode_text(data: bytes, source: str) -> str:
    """UTF-8 text of `data`; names the byte offset of the first bad byte."""
    if not data:
        raise TinyGPTError(f"{source} is empty")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TinyGPTError(f"{source} is not UTF-8 text: invalid byte 0x{data[e.start]:02x} at byte offset {e.start:,}") from e
    if "\x00" in text:
        raise TinyGPTError(f"{source} looks binary: NUL byte at character {text.index(chr(0)):,}")
    return text


@dataclass(frozen=True)
class DatasetInfo:
    """What `meta.json` records about a prepared dataset folder."""

    name: str
    path: Path
    source: str
    sha256: str
    text_bytes: int
    text_chars: int
    vocab_size: int
    train_tokens: int
    val_tokens: int
    val_fraction: float
    train_sha256: str
    val_sha256: str
    tokenizer: str = "char"  # "char" or "bpe"
    tokenizer_spec: str = "char"  # how it was asked for: char, bpe:SIZE or file: and the SHA-256 of a given tokenizer's JSON
    token_dtype: str = "uint16"
    val_split: str = "end"  # "spread" through the corpus, its "end", or a separate "file"
    documents: int = 1
    block_tokens: int = 0  # "spread": the stream's blocks, each wholly train or val
    train_bytes: int = 0  # bytes of text in each split (0: not recorded, format 1 and 2)
    val_bytes: int = 0
    sources: list = field(default_factory=list)  # name, bytes and sha256 of each source
    kind: str = "text"  # or "chat": conversations, with loss masks
    chat_template: str | None = None  # chat: the Jinja template of data/chat.py
    chat: dict = field(default_factory=dict)  # chat: counts (conversations, turns, trained tokens...) and the context
    train_mask_sha256: str = ""
    val_mask_sha256: str = ""

    @property
    def digest(self) -> str:
        """One SHA-256 for the token ids of both splits (and a chat dataset's masks): what a
        checkpoint records of the data it trained on, so that a resume can tell a dataset that was
        prepared again from another text."""
        masks = f" {self.train_mask_sha256} {self.val_mask_sha256}" if self.kind == "chat" else ""
        return sha256_hex(f"{self.train_sha256} {self.val_sha256}{masks}".encode())

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "path"}
        return {"format": META_FORMAT, "version": META_VERSION, **d}


def _permission_denied(error: PermissionError) -> TinyGPTError:
    return TinyGPTError(f"cannot read {error.filename}: permission denied",
                        Command("prepare", options={"data_dir": "FOLDER"}, before="ask its owner for read access, or prepare your own copy:"))


def read_dataset_info(folder: Path) -> DatasetInfo | None:
    """What a dataset folder's meta.json says, without checking its splits (intact_dataset
    does); None when there is no readable one."""
    return _read_meta(folder)


def _read_meta(folder: Path) -> DatasetInfo | None:
    try:
        obj = read_json(folder / "meta.json")
        if obj.pop("format") != META_FORMAT or obj.pop("version") not in (1, 2, 3, META_VERSION):
            return None
        return DatasetInfo(path=folder, **obj)
    except PermissionError as e:  # present but not ours to read: not "damaged"
        raise _permission_denied(e) from e
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return None


def intact_dataset(folder: Path) -> DatasetInfo | None:
    """The folder's DatasetInfo if every file is present and matches its checksum, else None."""
    info = _read_meta(folder)
    if info is None:
        return None
    try:
        ok = (
            file_sha256(folder / "train.bin") == info.train_sha256
            and file_sha256(folder / "val.bin") == info.val_sha256
            and load_tokenizer(folder, info.tokenizer).size == info.vocab_size
            and (info.kind != "chat" or (file_sha256(folder / "train.mask") == info.train_mask_sha256
                                         and file_sha256(folder / "val.mask") == info.val_mask_sha256))
        )
    except PermissionError as e:
        raise _permission_denied(e) from e
    except (OSError, KeyError, TinyGPTError):
        return None
    return info if ok else None


def claim_folder(folder: Path) -> None:
    """Refuse to write a dataset where it could destroy the user's files: a folder that tinygpt
    did not make (no mark, no meta.json) must be empty. In a folder it made, every file is its own:
    input.txt is the copy it took of a source, never the source itself."""
    if not folder.is_dir() or (folder / OWNER_MARK).exists() or _read_meta(folder) is not None:
        return
    others = entries_except(folder, lambda name: False)
    if others:
        raise UsageError(f"{folder} holds files tinygpt did not write ({short_list(others)}): preparing would overwrite or mix with them",
                         "pass a new or empty folder with --data-dir")


@contextmanager
def owned_folder(folder: Path) -> Iterator[None]:
    """Mark `folder` as a tinygpt dataset (before its first file), hold its lock while writing,
    and clear the half-written files of a prepare that was killed."""
    _make_folder(folder)
    fd = os.open(folder / OWNER_MARK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a second prepare of the same folder waits its turn
        for child in folder.iterdir():
            if is_temp_file_of(child.name, DATASET_FILES):
                child.unlink(missing_ok=True)
        yield
    finally:
        os.close(fd)


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError as e:
        raise TinyGPTError(f"cannot create data folder {folder}: a file is in the way") from e
    except OSError as e:
        raise TinyGPTError(f"cannot create data folder {folder}: {e.strerror}", "pass a writable folder with --data-dir") from e


DATA_DIR = Path("data")


def latest_dataset(root: Path = DATA_DIR) -> Path | None:
    """The most recently prepared dataset folder under `root` (by its meta.json), if any."""
    found = []
    try:
        for folder in root.iterdir():
            with suppress(OSError):  # a folder we may not look into is not ours to show
                found.append((os.stat(folder / "meta.json").st_mtime, folder))
    except OSError:  # no data folder (or an unreadable one)
        return None
    return max(found)[1] if found else None


@dataclass(frozen=True)
class Dataset:
    """A prepared dataset in memory: both splits as arrays of token ids, and the tokenizer."""

    info: DatasetInfo
    tokenizer: Tokenizer
    train: np.ndarray  # or an np.memmap, for a large split
    val: np.ndarray
    train_mask: np.ndarray | None = None  # chat: one byte per token (data/chat.py)
    val_mask: np.ndarray | None = None

    def val_bytes_per_token(self) -> float:
        """Bytes of text per validation token (a chat dataset's: per trained token): bits per
        byte = loss / ln 2 / this."""
        if self.val_mask is not None:
            from .chat import TRAINED

            trained = self.val[(self.val_mask & TRAINED) > 0]
            return float(byte_lengths(self.tokenizer)[trained].sum()) / max(1, len(trained))
        if self.info.val_bytes:
            return self.info.val_bytes / self.info.val_tokens
        counts = token_counts(self.val, self.tokenizer.size)  # folders of format 1 and 2
        return float(counts @ byte_lengths(self.tokenizer)) / len(self.val)

    def token_counts(self) -> np.ndarray:
        """How often each id occurs in both splits."""
        return token_counts(self.train, self.tokenizer.size) + token_counts(self.val, self.tokenizer.size)


def load_dataset(folder: str | Path) -> Dataset:
    folder = Path(folder)
    if not (folder / "meta.json").exists():
        hint = Command("prepare shakespeare") if folder.name == "shakespeare" else Command("prepare text", ("FILE",), {"data_dir": str(folder)})
        raise TinyGPTError(f"no prepared dataset in {folder}", hint)
    info = intact_dataset(folder)
    if info is None:
        raise TinyGPTError(
            f"the dataset in {folder} is damaged or incomplete (a file is missing or fails its checksum)",
            Command("prepare", ("...",), before="rebuild it with the command that made it:"),
        )
    tokenizer = load_tokenizer(folder, info.tokenizer)
    train, val = (read_split(folder / f"{split}.bin", info.token_dtype) for split in ("train", "val"))
    if info.kind == "chat":
        masks = [read_split(folder / f"{split}.mask", "uint8") for split in ("train", "val")]
        return Dataset(info=info, tokenizer=tokenizer, train=train, val=val, train_mask=np.asarray(masks[0]), val_mask=np.asarray(masks[1]))
    return Dataset(info=info, tokenizer=tokenizer, train=train, val=val)


def read_split(path: Path, dtype: str) -> np.ndarray:
    """A split's ids, from its file as it is (load_dataset checks its digest first): in memory,
    or past IN_MEMORY_BYTES mapped from the file (np.memmap), so that a corpus larger than the
    machine's memory trains as well. Anything but a regular file (a FIFO) is refused unread."""
    info = path.stat()
    if not stat.S_ISREG(info.st_mode):
        raise TinyGPTError(f"{path} is not a regular file")
    if info.st_size > IN_MEMORY_BYTES:
        return np.memmap(path, dtype=dtype, mode="r")
    return np.fromfile(path, dtype=dtype)
