"""Text in, dataset folder out, at any size: scan the corpus, make the tokenizer, encode, split.

Two passes over the text, each in bounded pieces (corpus.py), so memory stays flat however
large the corpus is:
1. scan: check that every source is UTF-8 text, digest it, count its characters, and gather
   what the tokenizer needs (the character set, or a sample to train a BPE on);
2. encode the pieces (a BPE on all cores) and route the ids to the train and val files, which
   are written as temporary files and renamed into place, with meta.json last.

Validation is held out across the whole corpus: the token stream is cut into about twenty
blocks per split share, and an evenly spaced `val_fraction` of them is validation ("spread"),
so a corpus made of several sources is validated on all of them. `prepare shakespeare` keeps
the last 10% ("end"), as nanoGPT does, so that its losses compare with nanoGPT's. A separate
validation file may be given instead.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .corpus import Corpus, Source, cleanup, collect_sources, read_pieces
from .dataset import (MIN_SPLIT_TOKENS, OWNER_MARK, SHAKESPEARE_BYTES, SHAKESPEARE_SHA256, SHAKESPEARE_URL, DatasetInfo, claim_folder,
                   intact_dataset, owned_folder, read_source, sha256_hex)
from ..errors import Command, TinyGPTError, UsageError
from ..system.fsutil import atomic_path, file_sha256, write_json_atomic
from .tokenizer import TOKENIZER_FILES, BPETokenizer, Tokenizer, byte_lengths, token_dtype
from .vocab import Vocabulary

PIECE_CHARS = 1 << 20  # text encoded at a time: about 30 MB of transient ids at most
BPE_SAMPLE_CHARS = 100 * 2**20  # a BPE learns its merges from this much text at most
# Blocks of the token stream per split share ("spread"). Each block boundary joins two unrelated
# stretches of text inside a split, and a window across one predicts from the wrong context: with
# a hundred blocks, those of a 100k-token corpus were as short as a context, and a val estimate
# came out 5% above the loss of coherent windows. Twenty keep blocks many contexts long and still
# draw the validation text from twenty places of the corpus.
VAL_BLOCKS = 20
VAL_SPLITS = ("spread", "end")
PhaseProgress = Callable[[str, int, int], None]  # (phase: scan, merges or encode; bytes done, bytes in all; 0 of 0: not measured)


@dataclass(frozen=True)
class TokenizerChoice:
    """How prepare makes the tokenizer: characters, a BPE trained on the text, or one given
    (a tokenizer.json, or the tokenizer of a run, checkpoint, transformers folder or hub model:
    interop/pretrained.py:tokenizer_choice reads `--tokenizer` into one of these)."""

    kind: str = "char"  # "char", "bpe" or "given"
    vocab_size: int | None = None  # bpe
    given: Tokenizer | None = None  # given
    sample_chars: int = BPE_SAMPLE_CHARS  # bpe: the most text its merges are learned from

    def spec(self) -> str:
        """What a prepared folder records, so that asking for the same tokenizer reuses it."""
        if self.kind == "given":
            return "file:" + sha256_hex(json.dumps(self.given.to_dict(), sort_keys=True).encode())
        return "char" if self.kind == "char" else f"bpe:{self.vocab_size}"


@dataclass
class Scan:
    """What the first pass learns about a corpus."""

    chars: int = 0
    digests: list[dict] = field(default_factory=list)  # per source: name, bytes, sha256
    codepoints: set[int] = field(default_factory=set)  # char tokenizer
    sample: list[str] = field(default_factory=list)  # bpe: evenly spaced pieces

    @property
    def sha256(self) -> str:
        """The text's SHA-256 when it is one source, else a digest of the sources' digests."""
        if len(self.digests) == 1:
            return self.digests[0]["sha256"]
        return sha256_hex("\n".join(f"{d['sha256']} {d['bytes']}" for d in self.digests).encode())


def scan(corpus: Corpus, choice: TokenizerChoice, progress: PhaseProgress) -> Scan:
    result, done = Scan(), 0
    every = max(1, math.ceil(corpus.bytes / choice.sample_chars)) if choice.kind == "bpe" else 0
    index = 0
    for source in corpus.sources:
        digest = hashlib.sha256()
        for piece in read_pieces(source, PIECE_CHARS, digest):
            result.chars += len(piece)
            if choice.kind == "char":
                result.codepoints.update(np.unique(np.frombuffer(piece.encode("utf-32-le"), dtype=np.uint32)).tolist())
            elif every and index % every == 0:
                result.sample.append(piece)
            index += 1
            done += len(piece.encode("utf-8"))
            progress("scan", done, corpus.bytes)
        result.digests.append({"name": source.name, "bytes": source.bytes, "sha256": digest.hexdigest()})
    if not result.chars:
        raise TinyGPTError(f"{', '.join(s.name for s in corpus.sources)} is empty")
    return result


def make_tokenizer(choice: TokenizerChoice, found: Scan) -> Tokenizer:
    if choice.kind == "char":
        return Vocabulary.from_codepoints(found.codepoints)
    if choice.kind == "bpe":
        return BPETokenizer.train(found.sample, choice.vocab_size)
    return choice.given


def encoded(corpus: Corpus, found: Scan, tokenizer: Tokenizer, progress: PhaseProgress, done: int = 0,
            total: int | None = None) -> Iterator[np.ndarray]:
    """The corpus as arrays of token ids, the end-of-text token between its documents. Each
    source must read as the scan `found` read it: a file rewritten in between is refused."""
    total = corpus.bytes if total is None else total
    dtype = token_dtype(tokenizer.size)
    for n, source in enumerate(corpus.sources):
        if n and tokenizer.eot_id is not None:
            yield np.array([tokenizer.eot_id], dtype=dtype)
        digest = hashlib.sha256()
        for piece in read_pieces(source, PIECE_CHARS, digest):
            yield tokenizer.encode_array(piece).astype(dtype, copy=False)
            done += len(piece.encode("utf-8"))
            progress("encode", done, total)
        if digest.hexdigest() != found.digests[n]["sha256"]:
            raise TinyGPTError(f"{source.name} changed while it was being prepared: its bytes differ between the scan and the "
                               "encoding, so the dataset would not be the text it records", "prepare again once nothing is writing to it")


def split_sizes(n_tokens: int, val_fraction: float) -> tuple[int, int]:
    """Train and val tokens when the last `val_fraction` of the tokens validates ("end")."""
    n_train = int(n_tokens * (1 - val_fraction))
    return n_train, n_tokens - n_train


class SplitWriter:
    """Routes a token stream to the train and val files: "spread" sends the blocks whose share
    comes due to val, "end" writes all to train and moves the tail to val at the end; a write
    may also name its split (a separate validation file)."""

    def __init__(self, files: dict[str, Path], mode: str, val_fraction: float, block_tokens: int, token_bytes: np.ndarray):
        self.outs = {split: open(path, "wb") for split, path in files.items()}
        self.files, self.mode, self.val_fraction, self.block = files, mode, val_fraction, block_tokens
        self.token_bytes = token_bytes
        self.tokens = {"train": 0, "val": 0}
        self.text_bytes = {"train": 0, "val": 0}
        self.position = 0  # in the whole stream

    def _split_of_block(self, block: int) -> str:
        f = self.val_fraction
        return "val" if math.floor((block + 1) * f) > math.floor(block * f) else "train"

    def write(self, ids: np.ndarray, split: str | None = None) -> None:
        while len(ids):
            if split is not None or self.mode == "end":
                take, to = len(ids), split or "train"
            else:
                block = self.position // self.block
                take, to = min(len(ids), (block + 1) * self.block - self.position), self._split_of_block(block)
            self.outs[to].write(ids[:take].tobytes())
            self.tokens[to] += take
            self.text_bytes[to] += int(self.token_bytes[ids[:take]].sum())
            self.position += take
            ids = ids[take:]

    def finish(self, dtype: np.dtype) -> dict[str, str]:
        """Close the files ("end": move the last val_fraction of the tokens to val); their SHA-256s."""
        for out in self.outs.values():
            out.close()
        if self.mode == "end":
            self._move_tail(dtype)
        return {split: file_sha256(path) for split, path in self.files.items()}

    def _move_tail(self, dtype: np.dtype, chunk: int = 1 << 24) -> None:
        n = self.tokens["train"]
        keep, _ = split_sizes(n, self.val_fraction)
        moved = 0
        if n > keep:
            train = np.memmap(self.files["train"], dtype=dtype, mode="r")
            with open(self.files["val"], "wb") as out:
                for start in range(keep, n, chunk):  # in pieces: the tail of a large corpus stays on disk
                    piece = np.asarray(train[start : min(n, start + chunk)])
                    out.write(piece.tobytes())
                    moved += int(self.token_bytes[piece].sum())
            del train
        with open(self.files["train"], "r+b") as f:
            f.truncate(keep * np.dtype(dtype).itemsize)
        self.tokens, self.text_bytes = {"train": keep, "val": n - keep}, {"train": self.text_bytes["train"] - moved, "val": moved}


def write_dataset(corpus: Corpus, folder: Path, name: str, val_fraction: float, choice: TokenizerChoice = TokenizerChoice(),
                  val_split: str = "spread", val_corpus: Corpus | None = None, progress: PhaseProgress | None = None,
                  found: Scan | None = None) -> DatasetInfo:
    """Scan, make the tokenizer, encode, split and write every file of a dataset folder."""
    progress = progress or (lambda phase, done, total: None)
    if val_corpus is None and not 0 < val_fraction < 1:
        raise UsageError(f"--val-fraction must be between 0 and 1 (got {val_fraction})")
    found = found or scan(corpus, choice, progress)
    found_val = scan(val_corpus, TokenizerChoice(), progress) if val_corpus is not None else None
    if found_val is not None and choice.kind == "char":
        found.codepoints |= found_val.codepoints  # the validation text's characters are tokens too
    if choice.kind == "bpe":
        progress("merges", 0, 0)  # a stage of its own, with no measure of how far it has come
    tokenizer = make_tokenizer(choice, found)
    if choice.kind == "bpe":
        progress("merges", 1, 1)
    dtype = np.dtype(token_dtype(tokenizer.size))
    lengths = byte_lengths(tokenizer)
    # Blocks of about a twentieth of the validation share each ("spread"); a BPE token is about
    # three characters of English.
    est_tokens = found.chars if tokenizer.kind == "char" else found.chars // 3  # (a given tokenizer is either)
    block = max(64, int(est_tokens * val_fraction / VAL_BLOCKS))
    with dataset_folder(folder):
        with ExitStack() as stack:  # the new files are renamed into place when it closes
            files = {split: stack.enter_context(atomic_path(folder / f"{split}.bin")) for split in ("train", "val")}
            writer = SplitWriter(files, val_split if val_corpus is None else "file", val_fraction, block, lengths)
            total = corpus.bytes + (val_corpus.bytes if val_corpus else 0)
            for ids in encoded(corpus, found, tokenizer, progress, 0, total):
                writer.write(ids, "train" if val_corpus is not None else None)
            if val_corpus is not None:
                for ids in encoded(val_corpus, found_val, tokenizer, progress, corpus.bytes, total):
                    writer.write(ids, "val")
            digests = writer.finish(dtype)
            _check_sizes(writer.tokens, corpus, val_corpus)  # refused: the old files stay
            (folder / "meta.json").unlink(missing_ok=True)  # the folder is incomplete until meta.json is back
            (folder / "input.txt").unlink(missing_ok=True)  # a copy of the text that earlier versions kept
        save_tokenizer(folder, tokenizer)
        info = DatasetInfo(
            name=name, path=folder, source=_sources_label(corpus, val_corpus), sha256=found.sha256,
            text_bytes=corpus.bytes + (val_corpus.bytes if val_corpus else 0), text_chars=found.chars + (found_val.chars if found_val else 0),
            vocab_size=tokenizer.size, train_tokens=writer.tokens["train"], val_tokens=writer.tokens["val"],
            val_fraction=val_fraction if val_corpus is None else 0.0, train_sha256=digests["train"], val_sha256=digests["val"],
            tokenizer=tokenizer.kind, tokenizer_spec=choice.spec(), token_dtype=dtype.name,
            val_split=val_split if val_corpus is None else "file", documents=len(corpus.sources),
            block_tokens=block if val_split == "spread" and val_corpus is None else 0,
            train_bytes=writer.text_bytes["train"], val_bytes=writer.text_bytes["val"],
            sources=found.digests + (found_val.digests if found_val else []),
        )
        write_json_atomic(folder / "meta.json", info.to_dict())
    return info


@contextmanager
def dataset_folder(folder: Path) -> Iterator[None]:
    """Where a dataset is written: refused unless tinygpt made `folder` or it is empty
    (claim_folder), marked and locked while it is written (owned_folder). A write refused or
    interrupted removes the folders it made, if they hold nothing else; an OS error is one line,
    for a source that cannot be read or for the folder that cannot be written."""
    claim_folder(folder)
    created = missing_ancestors(folder)
    try:
        with owned_folder(folder):
            yield
    except BaseException as e:
        if created:
            remove_if_empty(folder, created)
        if isinstance(e, OSError):
            if e.filename is not None and Path(e.filename).parent != folder:
                raise TinyGPTError(f"cannot read {e.filename}: {e.strerror or e}") from e
            raise TinyGPTError(f"cannot write dataset to {folder}: {e.strerror or e}", "free some space or pass a writable --data-dir") from e
        raise


def save_tokenizer(folder: Path, tokenizer: Tokenizer) -> None:
    """The tokenizer's file, and no other kind's (from an earlier prepare into the folder)."""
    for kind, file in TOKENIZER_FILES.items():
        if kind != tokenizer.kind:
            (folder / file).unlink(missing_ok=True)
    tokenizer.save(folder / TOKENIZER_FILES[tokenizer.kind])


def remove_if_empty(folder: Path, created: list[Path]) -> None:
    """Remove the folders a refused prepare made, when they hold nothing but tinygpt's mark."""
    with suppress(OSError):
        if os.listdir(folder) == [OWNER_MARK]:
            (folder / OWNER_MARK).unlink()
            for made in created:
                made.rmdir()


def missing_ancestors(folder: Path) -> list[Path]:
    """`folder` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _check_sizes(tokens: dict[str, int], corpus: Corpus, val_corpus: Corpus | None) -> None:
    if min(tokens.values()) >= MIN_SPLIT_TOKENS:
        return
    if val_corpus is not None:
        short = corpus if tokens["train"] < MIN_SPLIT_TOKENS else val_corpus
        raise TinyGPTError(f"{_sources_label(short, None)} is too short: {min(tokens.values()):,} tokens; "
                           f"each split needs at least {MIN_SPLIT_TOKENS}", "use a longer text")
    raise TinyGPTError(
        f"{_sources_label(corpus, None)} is too short: {sum(tokens.values()):,} tokens give {tokens['train']:,} train and "
        f"{tokens['val']:,} validation tokens; each split needs at least {MIN_SPLIT_TOKENS}",
        "use a longer text, or change the split with --val-fraction",
    )


def _sources_label(corpus: Corpus, val_corpus: Corpus | None) -> str:
    names = [s.name for s in corpus.sources]
    label = names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} more files"
    return label + (f" (validation: {val_corpus.sources[0].name})" if val_corpus is not None else "")


@dataclass(frozen=True)
class PrepareResult:
    info: DatasetInfo
    reused: bool
    skipped_binary: int = 0  # files of a folder that were not text
    skipped_links: int = 0  # symbolic links that lead out of a folder given (follow_symlinks reads them)


def prepare_text(inputs: list[str] | Path, folder: Path, name: str, val_fraction: float,
                 choice: TokenizerChoice = TokenizerChoice(), glob: str = "*", val: str | None = None,
                 val_split: str = "spread", progress: PhaseProgress | None = None, follow_symlinks: bool = False) -> PrepareResult:
    """Your own corpus: files, folders (every file matching `glob`, recursively) or standard
    input ("-"), each a document; `val` a separate validation file. Nothing inside `folder` is
    read as text (a second prepare into a folder of the corpus reads no earlier output), and a
    folder's symbolic links that lead out of it are skipped unless `follow_symlinks`."""
    if val_split not in VAL_SPLITS:
        raise UsageError(f"--val-split {val_split!r}: choose from {', '.join(VAL_SPLITS)}")
    inputs = [str(inputs)] if isinstance(inputs, Path) else inputs
    with tempfile.TemporaryDirectory(prefix="tinygpt-") as spool:
        corpus = collect_sources(inputs, glob, Path(spool), folder, follow_symlinks)
        val_corpus = collect_sources([val], "*", Path(spool), folder, follow_symlinks) if val is not None else None
        try:
            found = scan(corpus, choice, progress or (lambda *a: None))
            existing = intact_dataset(folder)
            wanted = (found.sha256, val_fraction if val is None else 0.0, choice.spec(), val_split if val is None else "file")
            if existing and val is None and (existing.sha256, existing.val_fraction, existing.tokenizer_spec, existing.val_split) == wanted:
                return PrepareResult(existing, reused=True, skipped_binary=corpus.skipped_binary, skipped_links=corpus.skipped_links)
            info = write_dataset(corpus, folder, name, val_fraction, choice, val_split, val_corpus, progress, found)
            return PrepareResult(info, reused=False, skipped_binary=corpus.skipped_binary, skipped_links=corpus.skipped_links)
        finally:
            cleanup(corpus)
            if val_corpus is not None:
                cleanup(val_corpus)


def prepare_shakespeare(folder: Path, source: str | None, verify: bool, val_fraction: float,
                        choice: TokenizerChoice = TokenizerChoice(), progress: PhaseProgress | None = None) -> PrepareResult:
    """Tiny Shakespeare from its canonical URL (or `source`), checked against its SHA-256; its
    last 10% validates, as nanoGPT's split does."""
    existing = intact_dataset(folder)
    same = existing and existing.val_fraction == val_fraction and existing.tokenizer_spec == choice.spec()
    if same and (not verify or existing.sha256 == SHAKESPEARE_SHA256):
        return PrepareResult(existing, reused=True)
    src = source or SHAKESPEARE_URL
    raw = read_source(src)
    if verify and sha256_hex(raw) != SHAKESPEARE_SHA256:
        raise TinyGPTError(
            f"checksum mismatch for {src}: got SHA-256 {sha256_hex(raw)[:12]}… ({len(raw):,} bytes), "
            f"expected {SHAKESPEARE_SHA256[:12]}… ({SHAKESPEARE_BYTES:,} bytes)",
            Command("prepare shakespeare", options={"source": str(src), "verify": False}, why="only if you edited the copy on purpose"),
        )
    with tempfile.TemporaryDirectory(prefix="tinygpt-") as tmp:
        copy = Path(tmp) / "input.txt"
        copy.write_bytes(raw)
        corpus = Corpus([Source(copy, len(raw), src)], 0)
        return PrepareResult(write_dataset(corpus, folder, "shakespeare", val_fraction, choice, "end", progress=progress), reused=False)
