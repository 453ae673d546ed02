"""The ASGI app of `tinygpt serve` (FastAPI on uvicorn, the `serve` extra): the OpenAI API under
/v1, the playground's routes under /api, and the page at /, whose files ship in the package.

Every error leaves in OpenAI's format with its status: 400 a request that cannot be served as
asked (malformed JSON too), 401 a missing or wrong key, 404 an unknown model or route, 413 a body
over the limit, 422 a field out of its range, 503 a full queue.
"""

from __future__ import annotations

import hmac
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import CheckpointError, TinyGPTError
from ..serving import QueueFull, UnknownModel
from . import playground, v1
from .state import ApiError, ServerState

MAX_BODY_BYTES = 4 * 2**20  # a surprise text of a megabyte, as JSON, fits
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}


def _json_error(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


class BodyLimit:
    """Refuse a request body over `limit` bytes with 413, whether it says its length or not: the
    body is read here first (at most `limit` bytes), then handed on whole."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = _json_error(ApiError(413, f"the request body is over the {self.limit:,}-byte limit", code="body_too_large"))
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await too_large(scope, receive, send)
        body, message = bytearray(), {"more_body": True}
        while message.get("more_body", False):
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                return await too_large(scope, receive, send)
        handed: list[bool] = []

        async def replay() -> Message:
            if handed:
                return await receive()  # after the body: a disconnect, when it comes
            handed.append(True)
            return {"type": "http.request", "body": bytes(body), "more_body": False}

        await self.app(scope, replay, send)


LOOPBACK_NAMES = ["127.0.0.1", "localhost", "::1", "[::1]"]


def create_app(state: ServerState, loopback: bool = True) -> ASGIApp:
    """The app over `state`. `loopback`: it listens on this machine only, and answers only
    requests addressed to it by a loopback name: a web page that rebinds its own domain name to
    127.0.0.1 (DNS rebinding) cannot reach it through the browser."""
    app = FastAPI(title="tinygpt", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.tinygpt = state
    if loopback:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=LOOPBACK_NAMES)

    @app.middleware("http")
    async def _key(request: Request, call_next):
        if state.api_key and request.url.path.startswith(("/v1/", "/api/")):
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {state.api_key}".encode()):
                return _json_error(ApiError(401, "a wrong or missing API key: send the header Authorization: Bearer KEY",
                                            code="invalid_api_key"))
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError):
        return _json_error(error)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, error: RequestValidationError):
        problems = error.errors()
        if any(p.get("type") == "json_invalid" for p in problems):
            return _json_error(ApiError(400, "the request body is not valid JSON", code="invalid_json"))
        first = problems[0]
        where = ".".join(str(part) for part in first.get("loc", ())[1:]) or "body"
        return _json_error(ApiError(422, f"{where}: {first.get('msg')}", param=where, code="invalid_value"))

    @app.exception_handler(TinyGPTError)
    async def _tinygpt(request: Request, error: TinyGPTError):
        # What a request asked for that cannot be: 400; a run whose checkpoint is damaged: the server's, 500.
        status = 404 if isinstance(error, UnknownModel) else 503 if isinstance(error, QueueFull) else 500 if isinstance(error, CheckpointError) else 400
        code = {404: "model_not_found", 503: "queue_full"}.get(status)
        return _json_error(ApiError(status, error.message, param="model" if status == 404 else None, code=code))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException):
        answer = _json_error(ApiError(error.status_code, str(error.detail)))
        answer.headers.update(error.headers or {})
        return answer

    @app.exception_handler(Exception)
    async def _bug(request: Request, error: Exception):
        return _json_error(ApiError(500, f"internal error: {type(error).__name__}: {error}"))

    app.include_router(v1.router)
    app.include_router(playground.router)

    page = resources.files(__package__) / "static"

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return Response(page.joinpath("index.html").read_bytes(), media_type="text/html; charset=utf-8")

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC:
            raise ApiError(404, f"no file {name!r}")
        return Response(page.joinpath(name).read_bytes(), media_type=f"{STATIC[name]}; charset=utf-8")

    return BodyLimit(app, MAX_BODY_BYTES)
