"""Conversations in, a chat dataset folder out (`tinygpt prepare chat`): read and check every
record, make the tokenizer with the chat tokens, encode each conversation with its loss mask
(data/chat.py), split by conversation, and write the folder as prepare.py writes one (its mark
first, every file renamed into place, meta.json last), with `train.mask` and `val.mask` besides.

A conversation is one training window at most: one longer than the context keeps its exchanges
up to the last that fits (cut), or is dropped when not even its first fits; the summary counts
both. Every `1 / val_fraction`-th conversation validates, spread through the files.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import TinyGPTError, UsageError
from ..system.fsutil import atomic_path, file_sha256, read_user_file, write_json_atomic
from .chat import CHAT_TEMPLATE, CHAT_TOKENS, TRAINED, EncodedChat, Message, encode_chat, read_conversations, with_chat_tokens
from .corpus import cleanup, collect_sources
from .dataset import MAX_SOURCE_BYTES, DatasetInfo, decode_text, intact_dataset
from .prepare import TokenizerChoice, dataset_folder, save_tokenizer
from .tokenizer import MIN_BPE_VOCAB, BPETokenizer, Tokenizer, byte_lengths, check_bpe_vocab_size, encode_texts, token_dtype
from .vocab import Vocabulary

DEFAULT_CONTEXT = 256  # tokens a conversation may take, when the tokenizer's source does not say


@dataclass
class ChatPrepareResult:
    info: DatasetInfo
    reused: bool = False
    skipped: list[str] = field(default_factory=list)  # why each record was left out (skip_invalid)


def chat_tokenizer(choice: TokenizerChoice, contents: list[str]) -> Tokenizer:
    """The tokenizer `choice` asks for, with the chat tokens: a BPE of --vocab-size tokens in all."""
    if choice.kind == "char":
        return Vocabulary.from_codepoints({ord(c) for text in contents for c in text}).with_specials(CHAT_TOKENS)
    if choice.kind == "bpe":
        if choice.vocab_size - len(CHAT_TOKENS) < MIN_BPE_VOCAB:
            raise UsageError(f"--vocab-size {choice.vocab_size:,}: a byte-level BPE with the chat tokens has at least "
                             f"{MIN_BPE_VOCAB + len(CHAT_TOKENS)} tokens", "pass --vocab-size 4096, for example")
        check_bpe_vocab_size(choice.vocab_size - len(CHAT_TOKENS))
        every = max(1, math.ceil(sum(map(len, contents)) / choice.sample_chars))  # at most sample_chars of text, evenly spaced
        return BPETokenizer.train(contents[::every], choice.vocab_size - len(CHAT_TOKENS)).with_specials(CHAT_TOKENS)
    return with_chat_tokens(choice.given)


def is_validation(n: int, val_fraction: float) -> bool:
    """Whether conversation `n` validates: an evenly spaced `val_fraction` of them do."""
    return math.floor((n + 1) * val_fraction) > math.floor(n * val_fraction)


def prepare_chat(inputs: list[str], folder: Path, name: str, choice: TokenizerChoice = TokenizerChoice(),
                 context: int = DEFAULT_CONTEXT, val_fraction: float = 0.1, skip_invalid: bool = False,
                 glob: str = "*.jsonl", follow_symlinks: bool = False) -> ChatPrepareResult:
    """Conversation files (JSON Lines or JSON arrays; folders: every file matching `glob`) as a
    chat dataset in `folder`; an intact one made the same way from the same files is reused."""
    if not 0 < val_fraction < 1:
        raise UsageError(f"--val-fraction must be between 0 and 1 (got {val_fraction})")
    if context < 2:
        raise UsageError(f"--context {context}: a conversation needs at least 2 tokens")
    with tempfile.TemporaryDirectory(prefix="tinygpt-") as spool:
        corpus = collect_sources(inputs, glob, Path(spool), folder, follow_symlinks)
        try:
            records, skipped, digests = [], [], []
            for source in corpus.sources:
                raw = read_user_file(source.path, MAX_SOURCE_BYTES, "conversation file")
                digests.append({"name": source.name, "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()})
                found, why = read_conversations(decode_text(raw, source.name), source.name, skip_invalid)
                records += found
                skipped += why
        finally:
            cleanup(corpus)
    settings = {"sources": hashlib.sha256(" ".join(d["sha256"] for d in digests).encode()).hexdigest(), "tokenizer": choice.spec(),
                "val_fraction": val_fraction, "context": context, "skip_invalid": skip_invalid}
    existing = intact_dataset(folder)
    if existing is not None and existing.kind == "chat" and existing.chat.get("settings") == settings:
        return ChatPrepareResult(existing, reused=True, skipped=skipped)
    if not records:
        raise TinyGPTError(f"{_label(digests)} holds no conversation" + (f" ({len(skipped):,} records skipped)" if skipped else ""))
    tokenizer = chat_tokenizer(choice, [m["content"] for _, messages in records for m in messages])
    encoded, refused = _encode_all(records, tokenizer, context, skip_invalid)
    chars = sum(len(m["content"]) for _, messages in records for m in messages)
    info = _write(folder, name, encoded, tokenizer, val_fraction, choice, digests, settings, chars,
                  counts={"cut": sum(e is not None and e.cut for e in encoded), "dropped": sum(e is None for e in encoded),
                          "skipped": len(skipped) + len(refused)})
    return ChatPrepareResult(info, skipped=skipped + refused)


def _encode_all(records: list[tuple[str, list[Message]]], tokenizer: Tokenizer, context: int,
                skip_invalid: bool) -> tuple[list[EncodedChat | None], list[str]]:
    encoded, refused = [], []
    batched = isinstance(tokenizer, BPETokenizer)  # one batch encode of every content (a character vocabulary may refuse one)
    contents = iter(encode_texts(tokenizer, [m["content"] for _, messages in records for m in messages])) if batched else None
    for where, messages in records:
        try:
            ids = [next(contents) for _ in messages] if batched else None
            encoded.append(encode_chat(messages, tokenizer, context, ids))
        except UsageError as e:  # a character a given vocabulary lacks, a special token spelled
            if not skip_invalid:
                raise UsageError(f"{where}: {e.message}", e.hint) from e
            refused.append(f"{where}: {e.message}")
    return encoded, refused


def _write(folder: Path, name: str, encoded: list[EncodedChat | None], tokenizer: Tokenizer, val_fraction: float,
           choice: TokenizerChoice, digests: list[dict], settings: dict, chars: int, counts: dict) -> DatasetInfo:
    kept = [e for e in encoded if e is not None]
    splits = {"train": [e for n, e in enumerate(kept) if not is_validation(n, val_fraction)],
              "val": [e for n, e in enumerate(kept) if is_validation(n, val_fraction)]}
    if not kept:
        raise TinyGPTError(f"{_label(digests)}: not one conversation fits the context of {settings['context']:,} tokens "
                           f"({counts['dropped']:,} dropped: even their first exchange is longer)", "pass a larger --context")
    for split, chats in splits.items():
        if not chats:
            raise TinyGPTError(f"{_label(digests)}: {len(kept):,} conversations fit the context, too few to hold out "
                               f"{'a validation split' if split == 'val' else 'a training split'}",
                               "add conversations, or change --val-fraction" + (" or --context" if counts["dropped"] else ""))
    dtype = np.dtype(token_dtype(tokenizer.size))
    lengths = byte_lengths(tokenizer)
    arrays = {split: (np.concatenate([e.ids for e in chats]).astype(dtype), np.concatenate([e.mask for e in chats]))
              for split, chats in splits.items()}
    with dataset_folder(folder):
        with ExitStack() as stack:  # the new files are renamed into place when it closes
            for split, (ids, mask) in arrays.items():
                stack.enter_context(_written(folder / f"{split}.bin", ids))
                stack.enter_context(_written(folder / f"{split}.mask", mask))
            (folder / "meta.json").unlink(missing_ok=True)  # incomplete until meta.json is back
        save_tokenizer(folder, tokenizer)
        chat = {"context": settings["context"], "longest": max(len(e.ids) for e in kept), "settings": settings, **counts,
                "conversations": {s: len(c) for s, c in splits.items()},
                "turns": {s: sum(e.turns for e in c) for s, c in splits.items()},
                "trained_tokens": {s: int(((arrays[s][1] & TRAINED) > 0).sum()) for s in splits}}
        info = DatasetInfo(
            name=name, path=folder, source=_label(digests), sha256=settings["sources"], text_bytes=sum(d["bytes"] for d in digests),
            text_chars=chars, vocab_size=tokenizer.size, train_tokens=len(arrays["train"][0]), val_tokens=len(arrays["val"][0]),
            val_fraction=val_fraction, train_sha256=file_sha256(folder / "train.bin"), val_sha256=file_sha256(folder / "val.bin"),
            tokenizer=tokenizer.kind, tokenizer_spec=choice.spec(), token_dtype=dtype.name, val_split="conversations",
            documents=len(digests), train_bytes=int(lengths[arrays["train"][0]].sum()), val_bytes=int(lengths[arrays["val"][0]].sum()),
            sources=digests, kind="chat", chat_template=CHAT_TEMPLATE, chat=chat,
            train_mask_sha256=file_sha256(folder / "train.mask"), val_mask_sha256=file_sha256(folder / "val.mask"))
        write_json_atomic(folder / "meta.json", info.to_dict())
    return info


@contextmanager
def _written(path: Path, array: np.ndarray) -> Iterator[None]:
    """`array` written beside `path`, renamed into place when the caller's block succeeds."""
    with atomic_path(path) as tmp:
        array.tofile(tmp)
        yield


def _label(digests: list[dict]) -> str:
    names = [d["name"] for d in digests]
    return names[0] if len(names) == 1 else f"{names[0]} and {len(names) - 1} more files"
