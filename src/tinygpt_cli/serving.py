"""Serving trained runs to many clients from one process: the engine under `tinygpt serve`.

- `ModelStore`: each run's model, loaded once, and again when its checkpoint changes (a training
  in progress saves a new best). A request holds the model it started with: a reload happens
  between requests, never during one.
- `Choice`: one answer being written: its text as the tokens come (whole characters only), cut
  at a stop string, at the end of a chat turn, or at its token budget.
- `Scheduler`: one loop that steps every answer in progress. Answers that start together (in
  one round of the loop: those that waited while the last round ran) and whose contexts have the
  same length step together, as the rows of one batch (sampling.Decoder on a model made
  set_batch_exact): each row's scores are bit for bit those it would get alone, so an answer is
  the same whoever else is being served, and the same as `generate` with its seed. Other answers
  take turns with them, one token each. Requests wait in a bounded queue.

The web layer (server/) parses requests, calls these and formats the answers; it holds no
model code.
"""

from __future__ import annotations

import codecs
import math
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch

from .checkpoint import Checkpoint, load_model
from .data.chat import END_OF_TURN, chat_token_ids
from .data.tokenizer import Tokenizer
from .errors import TinyGPTError
from .model import GPT
from .rundir import RunDir
from .sampling import Decoder, generate, sample_next, sampling_generator, set_batch_exact, set_sampling_precision
from .system.threads import ThreadPolicy

SAMPLE_TOKENS = 200  # the sample drawn from each checkpoint a served run saves
SAMPLES_KEPT = 50  # per run, the newest


class UnknownModel(TinyGPTError):
    """A request named a model this server does not serve."""


class QueueFull(TinyGPTError):
    """More answers wait than the queue holds."""


@dataclass(frozen=True)
class Served:
    """One run's model as loaded from one version of its checkpoint."""

    name: str
    path: Path  # the checkpoint
    stamp: tuple[int, int]  # its (mtime_ns, size) when read
    model: GPT
    ckpt: Checkpoint

    @cached_property
    def end_of_turn(self) -> int | None:
        """The end-of-turn token of a model trained on conversations; None for any other."""
        ids = chat_token_ids(self.ckpt.tokenizer)
        return None if ids is None else ids[END_OF_TURN]


def _stamp(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_mtime_ns, info.st_size


def start_ids(tokenizer: Tokenizer) -> list[int]:
    """What a text starts from when it is given no prompt: a newline, as in generate, where the
    vocabulary has one; else its first token."""
    try:
        return tokenizer.encode("\n") or [0]
    except TinyGPTError:  # a character vocabulary without it
        return [0]


class ModelStore:
    """The served runs by name, each loaded on first use and again when its checkpoint changes.
    Each load draws a sample (SAMPLE_TOKENS, seed 0), so a training's progress can be read."""

    def __init__(self, runs: Callable[[], dict[str, Path]], device: torch.device, dtype: str):
        self._runs = runs  # name -> run folder, looked up again on each request
        self._device, self._dtype = device, dtype
        self._loaded: dict[str, Served] = {}
        self._samples: dict[str, list[dict]] = {}
        self._lock = threading.Lock()  # held through a load
        self._samples_lock = threading.Lock()  # never held long: read from the event loop

    def names(self) -> list[str]:
        return sorted(self._runs())

    def get(self, name: str) -> Served:
        """The model of run `name`, from its newest checkpoint."""
        run = self._runs().get(name)
        path = None if run is None else RunDir(run).checkpoint()
        if path is None:
            raise UnknownModel(f"the model {name!r} does not exist" if run is None else f"the run {name!r} has no checkpoint yet")
        with self._lock:
            served = self._loaded.get(name)
            if served is None or served.path != path or served.stamp != _stamp(path):
                served = self._load(name, path)
            return served

    def _load(self, name: str, path: Path) -> Served:
        stamp = _stamp(path)
        model, ckpt = load_model(path, self._device)
        set_sampling_precision(model, self._dtype)
        set_batch_exact(model)
        served = Served(name, path, stamp, model, ckpt)
        self._loaded[name] = served
        text = ckpt.tokenizer.decode(generate(model, start_ids(ckpt.tokenizer), SAMPLE_TOKENS, seed=0))
        with self._samples_lock:
            self._samples.setdefault(name, []).append({"iteration": ckpt.iteration, "text": text})
            del self._samples[name][:-SAMPLES_KEPT]
        return served

    def samples(self, name: str) -> list[dict]:
        """The samples drawn from each checkpoint of `name` this store loaded, oldest first."""
        with self._samples_lock:
            return list(self._samples.get(name, []))


@dataclass(frozen=True)
class Settings:
    """How one answer is drawn; the API's fields under their own names."""

    max_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    logprobs: int | None = None  # how many alternatives to give with each token's log-probability


@dataclass
class TokenInfo:
    id: int
    logprob: float  # the model's own: temperature 1, no filter (what `predict` shows)
    top: list[tuple[int, float]]  # the most likely tokens there, with theirs


@dataclass
class Delta:
    """What an answer adds: text released since the last delta (whole characters, never a stop
    string nor the start of one), the tokens behind it, and once, how it ended."""

    text: str
    tokens: list[TokenInfo]
    finish_reason: str | None = None  # "stop" or "length"
    error: TinyGPTError | None = None


class Choice:
    """One answer: the text its tokens make, cut at the first stop string or at the end of a chat
    turn (finish "stop"), or at `settings.max_tokens` (finish "length")."""

    def __init__(self, served: Served, prompt: list[int], settings: Settings, send: Callable[[Delta], None]):
        self.served, self.prompt, self.settings, self.send = served, prompt, settings, send
        self.generator = sampling_generator(served.model, settings.seed)
        self.tokens: list[int] = []
        self.cancelled = threading.Event()  # the client went away
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._text = ""  # decoded so far
        self._sent = 0  # characters of it released
        self._pending: list[TokenInfo] = []

    def add(self, info: TokenInfo) -> bool:
        """Take the next token; True when the answer is complete."""
        if info.id == self.served.end_of_turn:
            self._text += self._decoder.decode(b"", final=True)
            return self._finish("stop")
        self.tokens.append(info.id)
        self._pending.append(info)
        self._text += self._decoder.decode(self.served.ckpt.tokenizer.token_bytes(info.id))
        cut = self._stop_at()
        if cut is not None:
            self._text = self._text[:cut]
            return self._finish("stop")
        if len(self.tokens) >= self.settings.max_tokens:
            self._text += self._decoder.decode(b"", final=True)
            return self._finish("length")
        safe = len(self._text) - self._held()
        if safe > self._sent:
            self.send(Delta(self._text[self._sent : safe], self._pending))
            self._sent, self._pending = safe, []
        return False

    def fail(self, error: TinyGPTError) -> None:
        self.send(Delta("", [], "error", error))

    def _finish(self, reason: str) -> bool:
        self.send(Delta(self._text[self._sent :], self._pending, reason))
        return True

    def _stop_at(self) -> int | None:
        """Where the first stop string begins in the text, if one has appeared."""
        found = [i for i in (self._text.find(s, self._sent) for s in self.settings.stop) if i >= 0]
        return min(found) if found else None

    def _held(self) -> int:
        """Characters at the end of the text held back: the start of a stop string, maybe."""
        for n in range(min(len(self._text), max(map(len, self.settings.stop), default=1) - 1), 0, -1):
            if any(s.startswith(self._text[-n:]) for s in self.settings.stop):
                return n
        return 0


def token_info(scores: torch.Tensor, token: int, top: int | None) -> TokenInfo:
    """The log-probability of `token` under the model's own distribution (scores: (vocab,)), and
    the `top` most likely tokens with theirs."""
    if top is None:
        return TokenInfo(token, math.nan, [])
    logprobs = torch.log_softmax(scores.float(), dim=-1)
    best = torch.topk(logprobs, min(top, logprobs.numel()))
    return TokenInfo(token, float(logprobs[token]), list(zip(best.indices.tolist(), best.values.tolist())))


@dataclass
class _Group:
    """Answers stepped together: one model, contexts of one length."""

    choices: list[Choice]
    decoder: Decoder = field(init=False)

    def __post_init__(self) -> None:
        first = self.choices[0]
        room = max(c.settings.max_tokens for c in self.choices)
        self.decoder = Decoder(first.served.model, [c.prompt for c in self.choices], room)


def _stopping() -> TinyGPTError:
    return TinyGPTError("the server is stopping")


class Scheduler:
    """The loop that writes every answer (see the module docstring). `run` it on the main thread:
    torch's CPU threads work together at full speed only there (off it, two threads sampled the
    baby GPT 2.5x slower than on it, on a 2-core machine); `start` runs it on a thread of its own.

    At most `max_active` answers are written at once (each holds a KV cache); past them, up to
    `max_waiting` wait their turn, and more are refused (QueueFull)."""

    def __init__(self, threads: ThreadPolicy | None = None, max_waiting: int = 64, max_active: int = 64, max_batch: int = 32):
        self.max_waiting, self.max_active, self.max_batch = max_waiting, max_active, max_batch
        self._threads = threads
        self._waiting: deque[Choice] = deque()
        self._calls: deque[tuple[Callable[[], object], Future]] = deque()
        self._groups: list[_Group] = []
        self._wake = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self) -> Scheduler:
        self._thread = threading.Thread(target=self.run, name="tinygpt-scheduler", daemon=True)
        self._thread.start()
        return self

    def submit(self, choices: list[Choice]) -> None:
        """Queue the answers of one request (all or none)."""
        with self._wake:
            if self._closed:
                raise _stopping()
            if len(self._waiting) + len(choices) > self.max_waiting:
                raise QueueFull(f"the server is busy: {len(self._waiting):,} answers are waiting, and the queue holds {self.max_waiting:,}",
                                "try again in a moment")
            self._waiting.extend(choices)
            self._wake.notify()

    def call(self, fn: Callable[[], object]) -> Future:
        """Run `fn` on the scheduler's thread between two steps (a load, a look inside a model:
        nothing uses a model while a step does); its result or exception comes in the future."""
        future: Future = Future()
        with self._wake:
            if self._closed:
                future.set_exception(_stopping())
                return future
            self._calls.append((fn, future))
            self._wake.notify()
        return future

    def close(self) -> None:
        """Make `run` return (after the step it is in); every answer not yet complete ends with
        an error that says the server is stopping."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def run(self) -> None:
        """Write answers and run calls as they come, until `close`."""
        try:
            while self._next():
                pass
        finally:
            with self._wake:
                self._closed = True
                left = [c for g in self._groups for c in g.choices] + list(self._waiting)
                calls = list(self._calls)
                self._groups, self._calls = [], deque()
                self._waiting.clear()
            for choice in left:
                choice.fail(_stopping())
            for _, future in calls:
                future.cancel()

    def _next(self) -> bool:
        """One round: the calls that came, the answers that can start, one token of each answer."""
        with self._wake:
            while not self._waiting and not self._groups and not self._calls and not self._closed:
                self._wake.wait()
            if self._closed:
                return False
            room = self.max_active - sum(len(g.choices) for g in self._groups)
            arrived = [self._waiting.popleft() for _ in range(min(room, len(self._waiting)))]
            calls = list(self._calls)
            self._calls.clear()
        for fn, future in calls:
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except Exception as error:  # handed to the caller, who raises it
                    future.set_exception(error)
        self._admit(arrived)
        for group in list(self._groups):
            try:
                self._step(group)
            except Exception as error:  # out of memory, a bug: these answers end, the others go on
                self._end(group, error)
        if self._threads is not None:
            self._threads.adjust()  # fewer threads while other processes want the cores
        return True

    def _admit(self, arrived: list[Choice]) -> None:
        """New answers join groups of their own: one per model and prompt length."""
        by_key: dict[tuple[int, int], list[Choice]] = {}
        for choice in arrived:
            by_key.setdefault((id(choice.served), len(choice.prompt)), []).append(choice)
        for choices in by_key.values():
            for i in range(0, len(choices), self.max_batch):
                try:
                    self._groups.append(_Group(choices[i : i + self.max_batch]))
                except Exception as error:
                    for choice in choices[i : i + self.max_batch]:
                        choice.fail(_as_tinygpt_error(error))

    def _end(self, group: _Group, error: Exception) -> None:
        for choice in group.choices:
            choice.fail(_as_tinygpt_error(error))
        if group in self._groups:
            self._groups.remove(group)

    @torch.inference_mode()
    def _step(self, group: _Group) -> None:
        """One token for every answer of `group`; the finished ones, and those whose scores are
        not finite, leave it."""
        self._keep(group, [i for i, c in enumerate(group.choices) if not c.cancelled.is_set()])
        if not group.choices:
            self._groups.remove(group)
            return
        scores = group.decoder.unchecked_scores()  # (B, vocab)
        finite = torch.isfinite(scores).all(dim=-1).tolist()
        tokens, going = [], []
        for row, choice in enumerate(group.choices):
            s = choice.settings
            if not finite[row]:  # this answer ends; its row's next token is never read
                choice.fail(group.decoder.non_finite())
                tokens.append(torch.zeros(1, dtype=torch.long, device=scores.device))
                continue
            token = sample_next(scores[row : row + 1], s.temperature, s.top_k, s.top_p, choice.generator)  # (1,)
            tokens.append(token)
            if not choice.add(token_info(scores[row], int(token), s.logprobs)):
                going.append(row)
        group.decoder.append(torch.cat(tokens))
        self._keep(group, going)
        if not group.choices:
            self._groups.remove(group)

    @staticmethod
    def _keep(group: _Group, rows: list[int]) -> None:
        if len(rows) == len(group.choices):
            return
        group.choices = [group.choices[i] for i in rows]
        if rows:
            group.decoder.keep(rows)


def _as_tinygpt_error(error: Exception) -> TinyGPTError:
    return error if isinstance(error, TinyGPTError) else TinyGPTError(f"the model failed: {type(error).__name__}: {error}")
