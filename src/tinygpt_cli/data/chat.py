"""Conversations: the chat format, its template, and conversations as token ids with a loss mask.

A conversation is a list of messages `{"role": "system" | "user" | "assistant", "content": str}`,
the format of the OpenAI API and of Hugging Face chat datasets. Each message becomes its role
marker, its content and the end-of-turn token, as ChatML and nanochat render a conversation:

    <|system|>Answer briefly.<|end|><|user|>Hi, I'm Ada.<|end|><|assistant|>Hello, Ada!<|end|>

Only the assistant's content and its end-of-turn token are trained (the loss mask): the model
learns to answer and to stop, not to write the user's side nor the markers, which the prompt
always supplies. Markers are special tokens, appended to the tokenizer's vocabulary; encoding
text never produces one, and content that spells one is refused.

CHAT_TEMPLATE is the same rendering as a Jinja template that transformers' `apply_chat_template`
runs: the one definition of the format, stored in the dataset, in every checkpoint trained on it
and in the export (tokenizer_config.json and chat_template.jinja).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from ..errors import UsageError
from ..system.fsutil import parse_json
from .tokenizer import Tokenizer, encode_texts, special_ids, token_dtype

ROLES = ("system", "user", "assistant")
END_OF_TURN = "<|end|>"
ROLE_MARKERS = {role: f"<|{role}|>" for role in ROLES}
# The special tokens, in the order their ids follow the vocabulary's last one.
CHAT_TOKENS = (*ROLE_MARKERS.values(), END_OF_TURN)
CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|' + message['role'] + '|>' + message['content'] + '<|end|>' }}{% endfor %}"
                 "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}")
# The loss mask holds one byte per token: bit 0 set for a token that is trained (a target of the
# loss), bit 1 for the first token of a conversation (where a training window starts).
TRAINED, CONVERSATION_START = 1, 2

Message = dict  # {"role": ..., "content": ...}


def render(messages: list[Message], add_generation_prompt: bool = False) -> str:
    """The conversation as CHAT_TEMPLATE renders it (a test runs both and compares)."""
    text = "".join(ROLE_MARKERS[m["role"]] + m["content"] + END_OF_TURN for m in messages)
    return text + (ROLE_MARKERS["assistant"] if add_generation_prompt else "")


def check_messages(messages: object, where: str, complete: bool = True) -> list[Message]:
    """`messages` as a conversation, or a UsageError naming `where` (file:line) and the rule it
    breaks: a list of {"role", "content"} objects, a system message first if at all, then user
    and assistant in turn, ending with the assistant's (`complete`; a prompt ends with the user's),
    every content a non-empty string that spells no chat token."""
    if not isinstance(messages, list) or not messages:
        raise UsageError(f"{where}: \"messages\" must be a non-empty list of {{\"role\", \"content\"}} objects")
    checked = []
    for n, message in enumerate(messages, 1):
        if not isinstance(message, dict) or set(message) - {"role", "content", "name"} or "role" not in message:
            raise UsageError(f"{where}: message {n} must be an object with \"role\" and \"content\"")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise UsageError(f"{where}: message {n} has role {role!r}: use system, user or assistant")
        if not isinstance(content, str) or not content.strip():
            raise UsageError(f"{where}: message {n} ({role}) has no content: it must be a non-empty string")
        marker = next((t for t in CHAT_TOKENS if t in content), None)
        if marker is not None:
            raise UsageError(f"{where}: message {n} ({role}) spells the chat token {marker} in its content")
        checked.append({"role": role, "content": content})
    turns = checked[1:] if checked[0]["role"] == "system" else checked
    for n, message in enumerate(turns):
        expected = ("user", "assistant")[n % 2]
        if message["role"] != expected:
            place = len(checked) - len(turns) + n + 1
            why = "a system message may only come first" if message["role"] == "system" else "user and assistant must take turns, the user first"
            raise UsageError(f"{where}: message {place} is {message['role']}'s where {expected}'s was due: {why}")
    if not turns:
        raise UsageError(f"{where}: a system message alone is no conversation")
    if complete and turns[-1]["role"] != "assistant":
        raise UsageError(f"{where}: the last message is the user's: a conversation to train on ends with the assistant's reply")
    return checked


def conversation_of(record: object, where: str) -> list[Message]:
    """A JSONL record as a conversation: {"messages": [...]}, or Alpaca's {"instruction", "input",
    "output"} as one user turn (the instruction, then the input after a blank line) and the reply."""
    if isinstance(record, dict) and "messages" in record:
        return check_messages(record["messages"], where)
    if isinstance(record, dict) and "instruction" in record and "output" in record:
        parts = [record["instruction"], record.get("input") or ""]
        if not all(isinstance(p, str) for p in parts) or not isinstance(record["output"], str):
            raise UsageError(f"{where}: Alpaca's \"instruction\", \"input\" and \"output\" must be strings")
        user = "\n\n".join(p for p in parts if p.strip())
        return check_messages([{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}], where)
    raise UsageError(f"{where}: not a conversation: expected {{\"messages\": [...]}} or Alpaca's {{\"instruction\", \"output\"}}")


# --- the tokenizer's chat tokens ----------------------------------------------------------------
def with_chat_tokens(tokenizer: Tokenizer) -> Tokenizer:
    """`tokenizer` with the chat tokens after its own (itself when it has them all already)."""
    if chat_token_ids(tokenizer) is not None:
        return tokenizer
    if any(tokenizer.special_id(t) is not None for t in CHAT_TOKENS):
        raise UsageError("the tokenizer holds some of tinygpt's chat tokens but not all: it was not made by tinygpt",
                         "pass a tokenizer without them, or the run it came from")
    return tokenizer.with_specials(CHAT_TOKENS)


def chat_token_ids(tokenizer: Tokenizer) -> dict[str, int] | None:
    """The id of each chat token (CHAT_TOKENS' names as keys); None when the tokenizer lacks any."""
    ids = {token: tokenizer.special_id(token) for token in CHAT_TOKENS}
    return None if None in ids.values() else ids


# --- conversations as ids and a mask ------------------------------------------------------------
@dataclass
class EncodedChat:
    """One conversation as token ids and its loss mask (TRAINED and CONVERSATION_START bits)."""

    ids: np.ndarray
    mask: np.ndarray
    turns: int  # the user-and-assistant exchanges kept
    cut: bool = False  # later exchanges were dropped: the whole did not fit the context


def check_no_special(tokenizer: Tokenizer, messages: list[Message]) -> None:
    """Refuse content that spells one of the tokenizer's special tokens (GPT-2's <|endoftext|>,
    say): transformers' tokenizer would read it as that token, tinygpt as text."""
    for text in {tokenizer.decode([i]) for i in special_ids(tokenizer)}:
        for n, message in enumerate(messages, 1):
            if text in message["content"]:
                raise UsageError(f"message {n} ({message['role']}) spells the tokenizer's special token {text} in its content")


def encode_chat(messages: list[Message], tokenizer: Tokenizer, context: int, contents: list[np.ndarray] | None = None) -> EncodedChat | None:
    """The conversation's ids and mask: each message its role marker, content and end of turn, the
    assistant's content and end of turn trained. A conversation longer than `context` tokens keeps
    its exchanges up to the last that fits (so that a reply of a model with that context always
    has room for its end of turn); None when not even its first does (a system message counts with
    the first exchange). `contents`: the messages' ids, when encoded already (in one batch)."""
    ids_of = chat_token_ids(tokenizer)
    check_no_special(tokenizer, messages)
    contents = encode_texts(tokenizer, [m["content"] for m in messages]) if contents is None else contents
    dtype = token_dtype(tokenizer.size)
    pieces, trained, ends = [], [], []  # ends: the length after each complete exchange
    length = 0
    for message, content in zip(messages, contents):
        is_reply = message["role"] == "assistant"
        part = np.array(_message_ids(message, content, ids_of), dtype=dtype)
        pieces.append(part)
        trained.append(np.r_[0, np.full(len(part) - 1, TRAINED if is_reply else 0)].astype(np.uint8))
        length += len(part)
        if is_reply:
            ends.append(length)
    fits = [n for n, end in enumerate(ends) if end <= context]
    if not fits:
        return None
    keep = ends[fits[-1]]
    ids, mask = np.concatenate(pieces)[:keep], np.concatenate(trained)[:keep]
    mask[0] |= CONVERSATION_START
    return EncodedChat(ids, mask, turns=len(fits), cut=len(fits) < len(ends))


def conversation_bounds(mask: np.ndarray) -> np.ndarray:
    """Where each conversation of a split starts, and the split's end: (n + 1,) offsets."""
    return np.r_[np.flatnonzero(mask & CONVERSATION_START), len(mask)]


def prompt_ids(messages: list[Message], tokenizer: Tokenizer) -> list[int]:
    """The ids that ask a chat model for the next reply: the history, then the assistant's marker
    (what CHAT_TEMPLATE renders with add_generation_prompt)."""
    ids_of = chat_token_ids(tokenizer)
    check_no_special(tokenizer, messages)
    contents = encode_texts(tokenizer, [m["content"] for m in messages])
    return [i for message, content in zip(messages, contents) for i in _message_ids(message, content, ids_of)] + [
        ids_of[ROLE_MARKERS["assistant"]]]


def _message_ids(message: Message, content: np.ndarray, ids_of: dict[str, int]) -> list[int]:
    """One message as the template renders it: its role marker, its content, the end of its turn."""
    return [ids_of[ROLE_MARKERS[message["role"]]], *content.tolist(), ids_of[END_OF_TURN]]


# --- reading conversation files -----------------------------------------------------------------
def read_conversations(text: str, name: str, skip_invalid: bool = False) -> tuple[list[tuple[str, list[Message]]], list[str]]:
    """(where, conversation) for each record of a file's text: JSON Lines (blank lines skipped;
    where is `file:line`), or one JSON array of records (Alpaca's files; `file: record N`). A
    record that breaks a rule is refused, or with `skip_invalid` left out; the second list says
    why each was."""
    conversations, skipped = [], []
    for where, parse in _records(text, name):
        try:
            conversations.append((where, conversation_of(parse(), where)))
        except UsageError as e:
            if not skip_invalid:
                raise
            skipped.append(e.message)
    return conversations, skipped


def _records(text: str, name: str) -> Iterator[tuple[str, Callable[[], object]]]:
    if text.lstrip().startswith("["):
        try:
            records = parse_json(text, name)
        except ValueError as e:
            raise UsageError(str(e)) from e
        for n, record in enumerate(records, 1):
            yield f"{name}: record {n}", lambda record=record: record
        return
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            yield f"{name}:{n}", lambda where=f"{name}:{n}", line=line: _parse_line(line, where)


def _parse_line(line: str, where: str) -> object:
    try:
        return parse_json(line, where)
    except ValueError as e:
        raise UsageError(str(e)) from e
