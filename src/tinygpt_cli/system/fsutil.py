"""Files: atomic writes (a reader sees the old file or the new one, never a part of either), and
reads of user-named paths that never block on a FIFO and never read more than they can use."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import Hint, TinyGPTError, UsageError


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_temp_file(path: Path) -> Path:
    """A new, empty `.<name>.<random>.tmp` beside `path`, with the mode of any new file (0644
    under the usual umask, applied by the kernel): mkstemp's 0600 would keep a group that
    shares a data folder from reading it."""
    while True:
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:  # a name already taken: draw another
            continue


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; once the caller has written it, fsync and rename.

    If the body raises (or the process dies), `path` is untouched and the temporary file is
    removed (or left with a dot-name that nothing reads).
    """
    path = Path(path)
    tmp = _new_temp_file(path)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with suppress(FileNotFoundError):
            tmp.unlink()
        raise


def check_writable(folder: Path, what: str, hint: Hint, temp_of: str) -> None:
    """Refuse, before anything is written, a folder where no new file can be made (read-only,
    another owner's, a full disk): a file is created there and removed. It is named as a
    temporary of the folder's file `temp_of`, so that a kill in between leaves nothing foreign."""
    try:
        _new_temp_file(folder / temp_of).unlink()
    except OSError as e:
        raise TinyGPTError(f"cannot write to {what} {folder}: {e.strerror or e}", hint) from e


def is_temp_file_of(name: str, files: tuple[str, ...]) -> bool:
    """Whether `name` is a half-written `.<file>.<random>.tmp` of one of `files` (atomic_path)."""
    return name.startswith(".") and name.endswith(".tmp") and name[1:].rsplit(".", 2)[0] in files


def entries_except(folder: Path, is_expected: Callable[[str], bool]) -> list[str]:
    """The names in `folder` (folders with a trailing '/') that `is_expected` does not claim."""
    return sorted(child.name + ("/" if child.is_dir() else "") for child in folder.iterdir()
                  if child.is_dir() or not is_expected(child.name))


def short_list(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file of any size, read in pieces."""
    digest = hashlib.sha256()
    with open_for_reading(path) as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


class FileTooLarge(ValueError):
    """A file (or a device, a pipe) holds more than the reader is willing to take."""

    def __init__(self, path: str | os.PathLike, limit: int):
        super().__init__(f"{path} is over the {limit:,}-byte limit")
        self.limit = limit


def open_for_reading(path: str | os.PathLike) -> BinaryIO:
    """Open a user-named path for reading in binary mode.

    O_NONBLOCK makes the open of a FIFO return at once instead of waiting for a writer; blocking
    is then restored, so reads wait for data as usual, and a FIFO with no writer reads as empty.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_at_most(f: BinaryIO, limit: int) -> bytes:
    """Up to `limit` bytes of a stream whose size may be unknown (a device or a pipe), in chunks."""
    chunks, total = [], 0
    while total < limit:
        chunk = f.read(min(2**20, limit - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


def read_user_file(path: str | os.PathLike, limit: int, what: str = "file", too_large_hint: Hint | None = None) -> bytes:
    """A file the user named (`what` it should be), up to `limit` bytes; each way it can fail is
    one error line."""
    try:
        return read_limited(path, limit)
    except FileTooLarge as e:
        raise TinyGPTError(f"{path} is over the {limit:,}-byte limit for a {what}", too_large_hint) from e
    except FileNotFoundError as e:
        raise UsageError(f"no such file: {path}") from e
    except IsADirectoryError as e:
        raise UsageError(f"{path} is a folder, not a {what}") from e
    except OSError as e:
        raise TinyGPTError(f"cannot read {path}: {e.strerror or e}") from e


def read_limited(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of `path`; FileTooLarge past `limit` (a regular file's size is known before
    reading; /dev/zero or a pipe is read only up to the limit)."""
    with open_for_reading(path) as f:
        info = os.fstat(f.fileno())
        if stat.S_ISDIR(info.st_mode):
            raise IsADirectoryError(21, os.strerror(21), str(path))
        if stat.S_ISREG(info.st_mode) and info.st_size > limit:
            raise FileTooLarge(path, limit)
        data = read_at_most(f, limit + 1)
    if len(data) > limit:
        raise FileTooLarge(path, limit)
    return data


def parse_json(text: str | bytes, source: str | os.PathLike) -> Any:
    """JSON from a file the user gave: anything that does not parse, nesting too deep for the
    parser included, is a ValueError that names `source`."""
    try:
        return json.loads(text)
    except RecursionError as e:
        raise ValueError(f"{source} is nested too deeply") from e
    except ValueError as e:
        raise ValueError(f"{source} is not JSON ({e})") from e


def read_json(path: str | os.PathLike, limit: int = 64 * 2**20) -> Any:
    """A JSON file of at most `limit` bytes; any unreadable content (too deep too) is a ValueError."""
    return parse_json(read_limited(path, limit), path)
