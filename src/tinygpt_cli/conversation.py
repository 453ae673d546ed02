"""A conversation with a model trained on conversations (`tinygpt chat`): its history as a prompt
that fits the model's context, and each reply streamed until the model ends its turn.

The prompt is what data/chat.py's template renders with the generation prompt: the system
message, the exchanges so far, the user's new message, the assistant's marker. When that and
room for a reply outgrow the context, the oldest exchanges are dropped (the system message
stays) and `dropped` counts them. A reply ends at the end-of-turn token, or when the window is
full: prompt and reply always share one window, as they do in transformers.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass, field

from .data.chat import END_OF_TURN, Message, check_messages, chat_token_ids, prompt_ids
from .data.tokenizer import Tokenizer
from .errors import TinyGPTError, UsageError
from .model import GPT
from .sampling import generate


def reply_budget(block_size: int, prompt_length: int, max_tokens: int | None) -> int:
    """The tokens a reply may take: prompt and reply share one window."""
    room = block_size - prompt_length
    return room if max_tokens is None else min(max_tokens, room)


@dataclass
class Conversation:
    model: GPT
    tokenizer: Tokenizer
    system: str | None = None
    history: list[Message] = field(default_factory=list)  # user and assistant turns, oldest first
    dropped: int = 0  # exchanges dropped from the start to fit the context, in all

    def __post_init__(self) -> None:
        ids = chat_token_ids(self.tokenizer)
        if ids is None:
            raise TinyGPTError("this model's tokenizer has no chat tokens: it was not trained on conversations")
        self.end_id = ids[END_OF_TURN]
        self.set_system(self.system)

    def set_system(self, text: str | None) -> None:
        """The system message from now on (None or blank: none), refused unless the tokenizer
        encodes it and it spells no chat token."""
        if text is not None and text.strip():
            check_messages([{"role": "system", "content": text}, {"role": "user", "content": "-"}], "the system message", complete=False)
            self.tokenizer.encode(text)
        self.system = text if text is not None and text.strip() else None

    def messages(self) -> list[Message]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.history

    def reset(self) -> None:
        self.history, self.dropped = [], 0

    def prompt(self, user_text: str, room: int) -> list[int]:
        """The ids asking for a reply to `user_text` after the history, leaving `room` positions of
        the context for the reply: the oldest exchanges go first (counted in `dropped`)."""
        block = self.model.config.block_size
        check_messages([{"role": "user", "content": user_text}], "your message", complete=False)  # (the history was checked so)
        while True:
            ids = prompt_ids(self.messages() + [{"role": "user", "content": user_text}], self.tokenizer)
            if len(ids) + room <= block:
                return ids
            if not self.history:
                raise UsageError(f"your message is {len(ids):,} tokens with the markers{' and the system message' if self.system else ''}; "
                                 f"with room for a reply of {room:,} it does not fit the model's context of {block:,}",
                                 "write a shorter message, or /system a shorter one")
            self.history = self.history[2:]
            self.dropped += 1

    def reply(self, user_text: str, *, temperature: float = 0.8, top_k: int | None = None, top_p: float | None = None,
              seed: int | None = None, max_tokens: int | None = None, room: int | None = None) -> Iterator[str]:
        """The model's reply to `user_text`, as its text comes (whole characters), until it ends its
        turn, the window is full or `max_tokens`. The exchange joins the history, a reply cut
        short (Ctrl-C) with what it had."""
        block = self.model.config.block_size
        ids = self.prompt(user_text, room if room is not None else max(1, min(max_tokens or block, block // 4)))
        budget = reply_budget(block, len(ids), max_tokens)
        self.history.append({"role": "user", "content": user_text})
        reply: list[int] = []
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        try:
            for token in generate(self.model, ids, budget, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed):
                if token == self.end_id:
                    break
                reply.append(token)
                if piece := decoder.decode(self.tokenizer.token_bytes(token)):
                    yield piece
        finally:
            self.history.append({"role": "assistant", "content": self.tokenizer.decode(reply)})
