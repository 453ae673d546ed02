"""What every route of the server shares: the models, the scheduler, the key, and the one way an
error leaves it (OpenAI's error JSON)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from ..serving import ModelStore, Scheduler, Served

T = TypeVar("T")


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
