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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import TinyGPTError, UsageError
from ..serving import QueueFull, UnknownModel
from . import playground, v1
from .state import ApiError, ServerState

MAX_BODY_BYTES = 4 * 2**20  # a surprise text of a megabyte, as JSON, fits
STATIC = {"app.js": "text/javascript", "style.css": "text/css"}


def _json_error(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status)


class BodyLimit:
    """Refuse a request body over `limit` bytes with 413, whether it says its length or not."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = _json_error(ApiError(413, f"the request body is over the {self.limit:,}-byte limit", code="body_too_large"))
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await too_large(scope, receive, send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await too_large(scope, receive, send)


class _TooLarge(Exception):
    pass


def create_app(state: ServerState) -> FastAPI:
    app = FastAPI(title="tinygpt", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.tinygpt = state

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
        status = 404 if isinstance(error, UnknownModel) else 503 if isinstance(error, QueueFull) else 400 if isinstance(error, UsageError) else 500
        code = {404: "model_not_found", 503: "queue_full"}.get(status)
        return _json_error(ApiError(status, error.message, param="model" if status == 404 else None, code=code))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException):
        return _json_error(ApiError(error.status_code, str(error.detail)))

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
