"""Tokenizers: text to token ids and back, chosen when a dataset is prepared.

- char (vocab.py:Vocabulary): every distinct character of the text, one id each.
- bpe (`BPETokenizer`): byte-level byte-pair encoding. BPE starts from single symbols and
  merges the most frequent adjacent pair into a new token, again and again, until the
  vocabulary has the size asked for (Sennrich et al. 2016, "Neural Machine Translation of Rare
  Words with Subword Units"). GPT-2 runs it on bytes rather than characters, so any text
  encodes and no character is ever unknown (Radford et al. 2019). It is trained on the user's
  own corpus with Hugging Face `tokenizers`, or loaded from any byte-level BPE tokenizer.json
  (GPT-2's, for one), and saved as a standard tokenizer.json that other tools read.

Both give the bytes of each token (for bits per byte, and for streamed output that never shows
half a character) and a JSON form that the dataset folder and every checkpoint carry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any, Union

import numpy as np

from ..errors import TinyGPTError, UsageError
from ..system.fsutil import parse_json, read_user_file, write_text_atomic
from .vocab import VOCAB_FORMAT, Vocabulary

EOT = "<|endoftext|>"  # separates documents; GPT-2's spelling
BPE_FORMAT = "tinygpt-bpe"
BPE_VERSION = 1
MIN_BPE_VOCAB = 257  # the 256 byte values and the end-of-text token: no merge yet
MAX_VOCAB = 2**20  # ids past uint16 are stored as uint32; an embedding this size is already huge
MAX_TOKENIZER_FILE_BYTES = 64 * 2**20
# GPT-2's pre-tokenizer: contractions, letters, digits, other symbols and whitespace runs (the
# regular expression of `tokenizers`' ByteLevel and of tiktoken's gpt2 encoding).
GPT2_SPLIT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
# What tiktoken must encode exactly as `tokenizers` does before it replaces it.
FAST_ENCODER_PROBE = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\n  Speak, speak.\n"
                      "def f(x):\n    return x**2  # 3.14 it's they're we'll I'd\t\r\n Ünïcödé 東京 🌸 \u00a0\u2028 1234567\n")
ENCODE_CHUNK_CHARS = 1 << 16  # text per piece of a batch encode (the pieces run on all cores)


def token_dtype(vocab_size: int) -> type[np.unsignedinteger]:
    """The smallest unsigned type that holds every id: token files and memory stay small."""
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed: each of the 256 bytes is spelled as one printable
    character in token strings (tokenizer.json), and this maps the character back to its byte."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


BYTE_DECODER = _byte_decoder()


def next_safe_cut(text: str, at: int) -> int | None:
    """The first position at or after `at` that is just after a newline with no whitespace on
    either side of it (a letter before, a letter after); None when `text` has none. Byte-level BPE
    always separates tokens there (the GPT-2 pre-tokenizer joins a newline to neither side
    then), so the two sides encode to exactly the ids of the whole."""
    i = text.find("\n", max(at - 1, 1))
    while 0 < i < len(text) - 1:
        if not text[i + 1].isspace() and not text[i - 1].isspace():
            return i + 1
        i = text.find("\n", i + 1)
    return None


def split_for_encoding(text: str, size: int = ENCODE_CHUNK_CHARS) -> list[str]:
    """`text` cut into pieces of about `size` characters at safe cuts (next_safe_cut): encoding
    the pieces gives exactly the ids of encoding the whole text."""
    pieces, start = [], 0
    while start < len(text):
        cut = next_safe_cut(text, start + size) if start + size < len(text) else None
        pieces.append(text[start:cut])
        start = len(text) if cut is None else cut
    return pieces


class BPETokenizer:
    """A byte-level BPE tokenizer, held by Hugging Face `tokenizers`."""

    kind = "bpe"

    def __init__(self, hf: Any, source: str = "tokenizer"):
        self.hf = hf
        self.size = hf.get_vocab_size(with_added_tokens=True)
        if not 0 < self.size <= MAX_VOCAB:
            raise TinyGPTError(f"{source} has {self.size:,} tokens; tinygpt takes 1 to {MAX_VOCAB:,}")
        if sorted(hf.get_vocab(with_added_tokens=True).values()) != list(range(self.size)):  # ids index the embedding
            raise UsageError(f"{source}: its token ids are not 0 to {self.size - 1:,}, each once", "pass a tokenizer.json whose ids are contiguous")
        self.eot_id: int | None = hf.token_to_id(EOT)

    # --- making one ----------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Learn `vocab_size` tokens from `texts`: the 256 bytes, the end-of-text token, merges."""
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        check_bpe_vocab_size(vocab_size)
        hf = HFTokenizer(models.BPE())
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        hf.train_from_iterator(texts, trainer)
        return cls(hf)

    @classmethod
    def from_json(cls, text: str, source: str) -> BPETokenizer:
        """A tokenizer.json, refused in one line unless it is a byte-level BPE."""
        from tokenizers import Tokenizer as HFTokenizer

        try:
            spec = parse_json(text, source)
        except ValueError as e:
            raise UsageError(str(e), "pass a tokenizer.json: a Hugging Face tokenizer file") from e
        if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict) or spec["model"].get("type") != "BPE":
            raise UsageError(f"{source} is not a BPE tokenizer.json (a Hugging Face tokenizer file with a BPE model)")
        if "ByteLevel" not in json.dumps(spec.get("pre_tokenizer")) or "ByteLevel" not in json.dumps(spec.get("decoder")):
            raise UsageError(f"{source} is a BPE tokenizer but not a byte-level one (as GPT-2's): tinygpt needs every text to encode")
        try:
            hf = HFTokenizer.from_str(text)
        except Exception as e:  # the library's own parse error
            raise UsageError(f"{source} is not a tokenizer file the tokenizers library reads: {e}") from e
        return cls(hf, source)

    @classmethod
    def from_file(cls, path: Path) -> BPETokenizer:
        raw = read_user_file(path, MAX_TOKENIZER_FILE_BYTES, "tokenizer file")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"{path} is not a tokenizer file: not UTF-8") from e
        return cls.from_json(text, str(path))

    def with_specials(self, tokens: tuple[str, ...]) -> BPETokenizer:
        """This tokenizer with `tokens` added as special tokens (those it lacks), their ids after
        its last; text never encodes to them (encode_array takes no special tokens)."""
        from tokenizers import AddedToken
        from tokenizers import Tokenizer as HFTokenizer

        hf = HFTokenizer.from_str(self.to_json())
        hf.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens if self.special_id(t) is None])
        return BPETokenizer(hf)

    def special_id(self, token: str) -> int | None:
        special = {t.content: i for i, t in self.hf.get_added_tokens_decoder().items() if t.special}
        return special.get(token)

    # --- using it ------------------------------------------------------------------------
    def encode_array(self, text: str) -> np.ndarray:
        """Token ids of `text`, as uint16 or uint32 (token_dtype), encoded on all cores."""
        pieces = split_for_encoding(text)
        if self._fast is not None:
            batches = self._fast.encode_ordinary_batch(pieces, num_threads=os.cpu_count() or 1)
        else:
            batches = [e.ids for e in self.hf.encode_batch(pieces, add_special_tokens=False)]
        return np.fromiter((i for ids in batches for i in ids), dtype=token_dtype(self.size))

    @cached_property
    def _fast(self) -> Any:
        """The same BPE in tiktoken, which encodes several times faster than `tokenizers` (its
        merges applied by rank, as GPT-2's are), when it gives exactly the library's ids on a
        test text; else None."""
        try:
            import tiktoken
        except ImportError:
            return None
        special = {t.content for t in self.hf.get_added_tokens_decoder().values()}
        ranks = {self.token_bytes(i): i for i in range(self.size) if self.hf.id_to_token(i) not in special}
        if len(ranks) + len(special) != self.size:  # two tokens for the same bytes: no rank order
            return None
        try:
            fast = tiktoken.Encoding("tinygpt", pat_str=GPT2_SPLIT, mergeable_ranks=ranks, special_tokens={})
        except Exception:  # ranks tiktoken cannot take (no byte alphabet, say)
            return None
        sampled = (self.hf.id_to_token(i) or "" for i in range(0, self.size, max(1, self.size // 500)))
        probe = FAST_ENCODER_PROBE + "".join(t for t in sampled if t not in special)  # (the library matches special tokens in text)
        same = fast.encode_ordinary(probe) == self.hf.encode(probe, add_special_tokens=False).ids
        return fast if same else None

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def decode(self, ids: Iterable[int]) -> str:
        ids = list(ids)
        if any(not 0 <= i < self.size for i in ids):
            raise TinyGPTError(f"token id out of range for a vocabulary of {self.size}")
        return b"".join(self.token_bytes(i) for i in ids).decode("utf-8", errors="replace")

    @cached_property
    def _token_bytes(self) -> list[bytes]:
        special = {t.content for t in self.hf.get_added_tokens_decoder().values()}
        table = []
        for i in range(self.size):
            token = self.hf.id_to_token(i) or ""
            if token in special:
                table.append(token.encode("utf-8"))
            else:
                table.append(bytes(BYTE_DECODER.get(ch, 0x3F) for ch in token))
        return table

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes a token stands for (several tokens may be needed for one character)."""
        return self._token_bytes[token_id]

    def merges(self) -> list[tuple[str, str]]:
        """The learned merges, in the order they apply (as tokenizer.json spells them)."""
        merges = json.loads(self.hf.to_str())["model"]["merges"]
        return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in merges]

    # --- files ---------------------------------------------------------------------------
    def to_json(self) -> str:
        return self.hf.to_str()

    def to_dict(self) -> dict:
        return {"format": BPE_FORMAT, "version": BPE_VERSION, "size": self.size, "tokenizer": json.loads(self.to_json())}

    def save(self, path: str | Path) -> None:
        """As a standard tokenizer.json, which `tokenizers` and transformers load."""
        write_text_atomic(path, self.to_json())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BPETokenizer) and self.to_json() == other.to_json()

    def __hash__(self) -> int:
        return hash(self.to_json())


Tokenizer = Union[Vocabulary, BPETokenizer]


def encode_texts(tokenizer: Tokenizer, texts: list[str]) -> list[np.ndarray]:
    """The ids of each of `texts` (a conversation's messages): a BPE encodes them in one batch."""
    if isinstance(tokenizer, BPETokenizer) and texts:
        if tokenizer._fast is not None:
            batches = tokenizer._fast.encode_ordinary_batch(texts, num_threads=os.cpu_count() or 1)
        else:
            batches = [e.ids for e in tokenizer.hf.encode_batch(texts, add_special_tokens=False)]
        dtype = token_dtype(tokenizer.size)
        return [np.array(ids, dtype=dtype) for ids in batches]
    return [tokenizer.encode_array(t) for t in texts]


def check_bpe_vocab_size(vocab_size: int) -> None:
    if not MIN_BPE_VOCAB <= vocab_size <= MAX_VOCAB:
        raise UsageError(f"--vocab-size {vocab_size:,}: a byte-level BPE has {MIN_BPE_VOCAB} to {MAX_VOCAB:,} tokens "
                         f"(the 256 bytes and the end-of-text token come first)", "pass --vocab-size 4096, for example")


def tokenizer_from_dict(obj: object, source: str = "tokenizer") -> Tokenizer:
    """The tokenizer a checkpoint or a dataset records (its to_dict())."""
    if isinstance(obj, dict) and obj.get("format") == VOCAB_FORMAT:
        return Vocabulary.from_dict(obj, source)
    if isinstance(obj, dict) and obj.get("format") == BPE_FORMAT and obj.get("version") == BPE_VERSION:
        tokenizer = BPETokenizer.from_json(json.dumps(obj.get("tokenizer")), source)
        if tokenizer.size != obj.get("size"):
            raise TinyGPTError(f"{source}: a tokenizer of {tokenizer.size} tokens recorded as {obj.get('size')}")
        return tokenizer
    raise TinyGPTError(f"{source} is not a tinygpt tokenizer ({VOCAB_FORMAT} or {BPE_FORMAT} v{BPE_VERSION})")


TOKENIZER_FILES = {"char": "vocab.json", "bpe": "tokenizer.json"}


def load_tokenizer(folder: Path, kind: str) -> Tokenizer:
    """A dataset folder's tokenizer (vocab.json for char, tokenizer.json for bpe)."""
    path = folder / TOKENIZER_FILES[kind]
    if kind == "char":
        return Vocabulary.load(path)
    return BPETokenizer.from_file(path)


def byte_lengths(tokenizer: Tokenizer) -> np.ndarray:
    """The bytes of text each token stands for, by id: bits per byte count them. Special tokens
    (the end-of-text token between documents, the chat markers) stand for no text: 0."""
    lengths = np.array([len(tokenizer.token_bytes(i)) for i in range(tokenizer.size)], dtype=np.int64)
    lengths[special_ids(tokenizer)] = 0
    return lengths


def special_ids(tokenizer: Tokenizer) -> list[int]:
    """The ids of the special tokens, which no text encodes to."""
    if isinstance(tokenizer, BPETokenizer):
        return sorted(i for i, t in tokenizer.hf.get_added_tokens_decoder().items() if t.special)
    return list(range(len(tokenizer.chars), tokenizer.size))


def token_label(tokenizer: Tokenizer, token_id: int) -> str:
    """A token as its text with whitespace made visible; bytes that are no whole character, in hex."""
    from .vocab import escape_char

    raw = tokenizer.token_bytes(token_id)
    try:
        return "".join(escape_char(ch) for ch in raw.decode("utf-8"))
    except UnicodeDecodeError:
        return " ".join(f"<{b:02x}>" for b in raw)


def token_texts(tokenizer: Tokenizer, ids: Iterable[int]) -> Iterator[str]:
    """The text each token completes, as the tokens come: a BPE token may end inside a multi-byte
    UTF-8 character, whose text then comes with the token that completes it ("" before)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    previous = None
    for token_id in ids:
        if previous is not None:
            yield previous
        previous = decoder.decode(tokenizer.token_bytes(token_id))
    if previous is not None:
        yield previous + decoder.decode(b"", final=True)


def stream_text(tokenizer: Tokenizer, ids: Iterable[int]) -> Iterator[str]:
    """Text as the tokens come, never a broken character: whole characters only."""
    return (text for text in token_texts(tokenizer, ids) if text)


def token_counts(tokens: np.ndarray, size: int, chunk: int = 1 << 24) -> np.ndarray:
    """How often each id occurs, read in pieces: a memory-mapped split of billions of tokens
    never comes into memory whole."""
    counts = np.zeros(size, dtype=np.int64)
    for start in range(0, len(tokens), chunk):
        counts += np.bincount(tokens[start : start + chunk], minlength=size)
    return counts
