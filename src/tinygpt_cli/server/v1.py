"""The OpenAI API, as llama.cpp's server, vLLM and Ollama serve it: /v1/models, /v1/completions
and /v1/chat/completions, whole or streamed over server-sent events ending with `data: [DONE]`.

What this server adds or leaves out, and its limits:
- `top_k` is an extra field; `logprobs` are the model's own log-probabilities (temperature 1, no
  filter), the `model` column of `tinygpt predict`;
- a completion may be longer than the model's context: the window slides, as in `generate`; a
  chat reply shares one window with its prompt, as in `tinygpt chat`;
- an empty prompt starts from a newline, as in `generate` (a vocabulary without one: from its
  first token);
- `n` answers are drawn with seeds seed, seed + 1, ..., as `generate --num-samples` draws them;
- frequency and presence penalties (other than 0), `echo`, `suffix`, `best_of` and `logit_bias` are not
  offered: any field this module does not name is refused (422).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import AsyncIterator
from itertools import accumulate
from typing import Annotated, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..conversation import reply_budget
from ..data.chat import check_messages, prompt_ids
from ..errors import UsageError
from ..rundir import RunDir
from ..serving import Choice, Delta, Served, Settings, TokenInfo, start_ids
from .state import Outbox, ServerState, http_error

MAX_TOKENS = 4096  # the most one answer may ask for
MAX_N = 8  # answers per request
MAX_STOP = 4  # stop strings per request, as OpenAI allows
MAX_TOP_LOGPROBS = 20
SEED_MAX = 2**32 - 1  # as `generate --seed`
DISCONNECT_CHECK_S = 0.5  # how often a whole (not streamed) answer looks whether its client is still there

router = APIRouter()


class Fields(BaseModel):
    """A request's fields: unknown ones refused, and null taken as the field's default, as
    OpenAI's API takes it (clients send `"temperature": null` for "not set")."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _null_is_the_default(cls, data: object) -> object:
        return {k: v for k, v in data.items() if v is not None} if isinstance(data, dict) else data


class Common(Fields):
    """The fields both endpoints take."""

    model: str
    temperature: float = Field(1.0, ge=0, description="0 is greedy.")
    top_p: float = Field(1.0, ge=0, le=1)
    top_k: int | None = Field(None, ge=1, description="An extra: sample among the k most likely tokens.")
    stop: str | list[Annotated[str, Field(min_length=1)]] | None = Field(None, min_length=1)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: dict[Literal["include_usage"], bool] | None = None
    user: str | None = None
    frequency_penalty: Literal[0] = 0
    presence_penalty: Literal[0] = 0

    def stops(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        if len(stops) > MAX_STOP or not all(stops):
            raise UsageError(f"stop takes at most {MAX_STOP} non-empty strings")
        return tuple(stops)

    def settings(self, max_tokens: int, logprobs: int | None, seed: int) -> Settings:
        return Settings(max_tokens=max_tokens, temperature=self.temperature, top_k=self.top_k,
                        top_p=None if self.top_p >= 1 else self.top_p, seed=seed, stop=self.stops(), logprobs=logprobs)


class CompletionRequest(Common):
    prompt: str | list[Annotated[int, Field(ge=0)]]
    max_tokens: int = Field(16, ge=1, le=MAX_TOKENS)
    logprobs: int | None = Field(None, ge=0, le=5)


class Message(Fields):
    role: Literal["system", "developer", "user", "assistant"]  # developer: OpenAI's newer name for system
    content: str | list[dict[str, str]]
    name: str | None = None  # taken, unused: the chat template has no names

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        if any(part.get("type") != "text" or not isinstance(part.get("text"), str) for part in self.content):
            raise UsageError("a message's parts must all be {\"type\": \"text\", \"text\": ...}: this model reads text only")
        return "".join(part["text"] for part in self.content)


class ChatRequest(Common):
    messages: list[Message] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)

    @model_validator(mode="after")
    def _one_budget(self) -> ChatRequest:
        if self.max_tokens is not None and self.max_completion_tokens is not None and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens differ: give one")
        return self


def _seed(request: Common) -> int:
    return request.seed if request.seed is not None else secrets.randbits(32)


def _prompt_of(served: Served, prompt: str | list[int]) -> list[int]:
    tokenizer = served.ckpt.tokenizer
    if isinstance(prompt, list):
        if not prompt:
            raise UsageError("the prompt holds no token ids")
        if max(prompt) >= tokenizer.size:
            raise UsageError(f"token id {max(prompt):,} is past the model's vocabulary of {tokenizer.size:,}")
        return prompt
    return tokenizer.encode(prompt) if prompt else start_ids(tokenizer)


@router.get("/v1/models")
def list_models(request: Request) -> dict:
    state: ServerState = request.app.state.tinygpt
    return {"object": "list", "data": [{"id": name, "object": "model", "created": state.started, "owned_by": "tinygpt"}
                                        for name, run in sorted(state.runs().items()) if RunDir(run).has_checkpoint()]}


@router.post("/v1/completions")
async def completions(body: CompletionRequest, request: Request):
    state: ServerState = request.app.state.tinygpt
    served = await state.model(body.model)
    prompt = _prompt_of(served, body.prompt)
    seed = _seed(body)
    settings = [body.settings(body.max_tokens, body.logprobs, seed + i) for i in range(body.n)]
    return await _answer(state, request, served, prompt, settings, body, Completions(served))


@router.post("/v1/chat/completions")
async def chat_completions(body: ChatRequest, request: Request):
    state: ServerState = request.app.state.tinygpt
    served = await state.model(body.model)
    if served.end_of_turn is None:
        raise http_error(400, f"the model {served.name!r} was not trained on conversations: it has no chat template",
                         "use /v1/completions with it, or fine-tune it on conversations", param="model")
    messages = check_messages([{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages],
                              "messages", complete=False)
    prompt = prompt_ids(messages, served.ckpt.tokenizer)
    block = served.model.config.block_size
    budget = reply_budget(block, len(prompt), body.max_completion_tokens or body.max_tokens)
    if budget < 1:
        raise http_error(400, f"the messages are {len(prompt):,} tokens with the chat markers: no room is left for a reply "
                              f"in the model's context of {block:,}", "send fewer or shorter messages", param="messages")
    top = body.top_logprobs or 0 if body.logprobs else None
    seed = _seed(body)
    settings = [body.settings(budget, top, seed + i) for i in range(body.n)]
    return await _answer(state, request, served, prompt, settings, body, ChatCompletions(served))


class Completions:
    """The response shapes of /v1/completions."""

    object, chunk_object = "text_completion", "text_completion"
    prefix = "cmpl"

    def __init__(self, served: Served):
        self.served = served

    def token(self, token_id: int) -> str:
        return self.served.ckpt.tokenizer.token_bytes(token_id).decode("utf-8", errors="replace")

    def choice(self, index: int, text: str, tokens: list[TokenInfo], finish: str | None, logprobs: bool, offset: int) -> dict:
        return {"index": index, "text": text, "finish_reason": finish, "logprobs": self.logprobs(tokens, offset) if logprobs else None}

    def chunk_choice(self, index: int, text: str, tokens: list[TokenInfo], finish: str | None, logprobs: bool, offset: int,
                     first: bool) -> dict:
        return self.choice(index, text, tokens, finish, logprobs, offset)

    def logprobs(self, tokens: list[TokenInfo], offset: int) -> dict:
        texts = [self.token(t.id) for t in tokens]
        offsets = list(accumulate((len(t) for t in texts), initial=offset))[: len(texts)]  # where each token begins
        return {"tokens": texts, "token_logprobs": [t.logprob for t in tokens], "text_offset": offsets,
                "top_logprobs": [{self.token(i): lp for i, lp in t.top} for t in tokens]}


class ChatCompletions(Completions):
    """The response shapes of /v1/chat/completions."""

    object, chunk_object = "chat.completion", "chat.completion.chunk"
    prefix = "chatcmpl"

    def choice(self, index: int, text: str, tokens: list[TokenInfo], finish: str | None, logprobs: bool, offset: int) -> dict:
        return {"index": index, "message": {"role": "assistant", "content": text}, "finish_reason": finish,
                "logprobs": self.logprobs(tokens, offset) if logprobs else None}

    def chunk_choice(self, index: int, text: str, tokens: list[TokenInfo], finish: str | None, logprobs: bool, offset: int,
                     first: bool) -> dict:
        delta = ({"role": "assistant"} if first else {}) | ({"content": text} if text or first else {})
        return {"index": index, "delta": delta, "finish_reason": finish, "logprobs": self.logprobs(tokens, offset) if logprobs else None}

    def _entry(self, token_id: int, logprob: float) -> dict:
        raw = self.served.ckpt.tokenizer.token_bytes(token_id)
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}

    def logprobs(self, tokens: list[TokenInfo], offset: int) -> dict:
        return {"content": [self._entry(t.id, t.logprob) | {"top_logprobs": [self._entry(i, lp) for i, lp in t.top]} for t in tokens]}


async def _answer(state: ServerState, request: Request, served: Served, prompt: list[int], settings: list[Settings],
                  body: Common, shape: Completions):
    """Queue the request's answers, then return them whole or stream them."""
    outbox = Outbox(asyncio.get_running_loop())
    queue = outbox.queue
    choices = [Choice(served, prompt, s, outbox.sender(i)) for i, s in enumerate(settings)]
    state.scheduler.submit(choices)  # QueueFull: 503
    meta = {"id": f"{shape.prefix}-{secrets.token_hex(12)}", "created": int(time.time()), "model": served.name}
    logprobs = settings[0].logprobs is not None
    if body.stream:
        usage = bool(body.stream_options and body.stream_options.get("include_usage"))
        return StreamingResponse(_stream(request, queue, choices, shape, meta, logprobs, len(prompt), usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    collecting = asyncio.ensure_future(_collect(queue, len(choices)))
    try:
        while not (await asyncio.wait({collecting}, timeout=DISCONNECT_CHECK_S))[0]:
            if await request.is_disconnected():  # the client went away while it waited: stop writing
                collecting.cancel()
                raise http_error(499, "the client closed the request")
        done = collecting.result()
    finally:
        for choice in choices:
            choice.cancelled.set()
    return JSONResponse(meta | {"object": shape.object, "choices": [
        shape.choice(i, "".join(d.text for d in deltas), [t for d in deltas for t in d.tokens], deltas[-1].finish_reason, logprobs, 0)
        for i, deltas in enumerate(done)], "usage": _usage(prompt, choices)})


def _usage(prompt: list[int], choices: list[Choice]) -> dict:
    completion = sum(len(c.tokens) for c in choices)
    return {"prompt_tokens": len(prompt), "completion_tokens": completion, "total_tokens": len(prompt) + completion}


def _check(delta: Delta) -> None:
    if delta.error is not None:
        raise delta.error


async def _collect(queue: asyncio.Queue, n: int) -> list[list[Delta]]:
    done: list[list[Delta]] = [[] for _ in range(n)]
    finished = 0
    while finished < n:
        i, delta = await queue.get()
        _check(delta)
        done[i].append(delta)
        finished += delta.finish_reason is not None
    return done


async def drain(queue: asyncio.Queue) -> list[tuple[int, Delta]]:
    """The next delta, and every other one waiting, each answer's run merged into one: a client
    slower than the model gets fewer, longer chunks instead of falling behind."""
    waiting = [await queue.get()]
    while not queue.empty():
        waiting.append(queue.get_nowait())
    merged: list[tuple[int, Delta]] = []
    for i, delta in waiting:
        last = next((m for m in reversed(merged) if m[0] == i), None)
        if last is None or last[1].finish_reason is not None or delta.error is not None:
            merged.append((i, delta))
        else:
            merged[merged.index(last)] = (i, Delta(last[1].text + delta.text, last[1].tokens + delta.tokens, delta.finish_reason))
    return merged


def _event(obj: dict | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n".encode()


async def _stream(request: Request, queue: asyncio.Queue, choices: list[Choice], shape: Completions, meta: dict,
                  logprobs: bool, prompt_length: int, usage: bool) -> AsyncIterator[bytes]:
    """Each delta as a chunk as it comes, then `data: [DONE]`; a client that hangs up stops its answers."""
    base = meta | {"object": shape.chunk_object}
    offsets, started, finished = [0] * len(choices), [False] * len(choices), 0
    try:
        while finished < len(choices):
            for i, delta in await drain(queue):
                if delta.error is not None:
                    yield _event({"error": {"message": delta.error.message, "type": "server_error", "param": None, "code": None}})
                    return
                yield _event(base | {"choices": [shape.chunk_choice(i, delta.text, delta.tokens, delta.finish_reason, logprobs,
                                                                     offsets[i], not started[i])]})
                offsets[i] += len(delta.text)
                started[i] = True
                finished += delta.finish_reason is not None
        if usage:
            yield _event(base | {"choices": [], "usage": _usage([0] * prompt_length, choices)})
        yield _event("[DONE]")
    finally:
        for choice in choices:
            choice.cancelled.set()
