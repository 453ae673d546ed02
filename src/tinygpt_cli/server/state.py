"""What every route of the server shares: the models, the scheduler, the key, and the one way an
error leaves it (OpenAI's error JSON)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..serving import Delta, ModelStore, Scheduler, Served

T = TypeVar("T")


HANDOFF_S = 0.02  # the scheduler hands deltas to the event loop at most this often (50 a second)


class Outbox:
    """Deltas from the scheduler's thread to the event loop's queue, handed over in bunches: at
    once for a request's first and last, then at most every HANDOFF_S. Each handover wakes the
    event loop's thread, which then competes for the cores and the GIL with the model's step:
    once per token, that slowed one client's answer by a third on 2 cores; 50 times a second is
    faster than text can be read."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.queue: asyncio.Queue = asyncio.Queue()
        self._loop = loop
        self._items: list = []
        self._lock = threading.Lock()
        self._scheduled = False
        self._last = 0.0

    def sender(self, index: int) -> Callable[[Delta], None]:
        """What the choice `index` of a request sends its deltas to."""
        return lambda delta: self.put((index, delta))

    def put(self, item: tuple[int, Delta]) -> None:
        """From the scheduler's thread: the delta reaches the queue within HANDOFF_S (a request's
        last, and a first, at once)."""
        now = time.monotonic()
        with self._lock:
            self._items.append(item)
            if self._scheduled:
                return
            self._scheduled = True
            wait = 0.0 if item[1].finish_reason is not None else max(0.0, self._last + HANDOFF_S - now)
        try:
            self._loop.call_soon_threadsafe(self._hand_over_in, wait)
        except RuntimeError:  # the event loop is closed: the server is stopping, nobody waits
            pass

    def _hand_over_in(self, wait: float) -> None:
        if wait > 0:
            self._loop.call_later(wait, self._hand_over)
        else:
            self._hand_over()

    def _hand_over(self) -> None:
        with self._lock:
            items, self._items, self._scheduled = self._items, [], False
            self._last = time.monotonic()
        for item in items:
            self.queue.put_nowait(item)


class ApiError(Exception):
    """An answer in OpenAI's error format: {"error": {"message", "type", "param", "code"}}."""

    TYPES = {401: "authentication_error", 404: "invalid_request_error", 503: "server_error", 500: "server_error"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    def body(self) -> dict[str, Any]:
        kind = self.TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def http_error(status: int, message: str, hint: str | None = None, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(status, f"{message}; {hint}" if hint else message, param, code)


@dataclass
class ServerState:
    runs: Callable[[], dict[str, Path]]  # the served runs' folders by name, looked up again each time
    store: ModelStore
    scheduler: Scheduler
    api_key: str | None = None
    started: int = field(default_factory=lambda: int(time.time()))

    async def model(self, name: str) -> Served:
        """The newest version of a served model, loaded on the scheduler's thread when it changed."""
        return await self.compute(lambda: self.store.get(name))

    async def compute(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the scheduler's thread, between two steps: the models are used by one thread."""
        future: Future = self.scheduler.call(fn)
        return await asyncio.wrap_future(future)
