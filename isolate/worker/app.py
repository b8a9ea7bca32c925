"""Assembly of the worker's ASGI app: routes, error shapes, middleware, shared state."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse

from .. import __version__
from ..errors import IsolateError
from ..manager import SandboxManager
from .access_log import AccessLog, log
from .auth import TokenAuth
from .body_limit import BodyLimit
from .errors import error_response, isolate_error_response
from .metrics import Metrics
from .routes import router
from .sandboxes import HEADER, Sandboxes

DEFAULT_MAX_BODY = 64 * 1024 * 1024  # a 32 MiB file, base64-encoded, fits


def validation_context(exc: RequestValidationError) -> dict[str, Any]:
    """Where and why, without echoing the input back."""
    return {"errors": [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))[:200]} for e in exc.errors()[:20]]}


def create_app(manager: SandboxManager, *, token: str | None = None, max_body: int = DEFAULT_MAX_BODY) -> Any:
    app = FastAPI(title="isolate worker", version=__version__, docs_url=None, redoc_url=None,
                  description="Cloudflare's sandbox container API for many sandboxes; the header X-Sandbox-Id picks one.")
    app.include_router(router)
    app.state.sandboxes = Sandboxes(manager)
    app.state.metrics = Metrics(manager)

    @app.exception_handler(IsolateError)
    async def isolate_error(request: Request, exc: IsolateError) -> JSONResponse:
        if exc.code == "SANDBOX_NOT_FOUND":
            app.state.sandboxes.forget(request.headers.get(HEADER))
        return isolate_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error_response("VALIDATION_FAILED", "malformed request body", 400, validation_context(exc))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "VALIDATION_FAILED")
        return error_response(code, str(exc.detail), exc.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log("internal error", 40, route=request.url.path, error=repr(exc)[:500])
        return error_response("INTERNAL_ERROR", "internal error", 500)

    # outermost first: log everything, then refuse strangers, then cap bodies
    wrapped: Any = BodyLimit(app, max_body)
    wrapped = TokenAuth(wrapped, token)
    wrapped = AccessLog(wrapped, app.state.metrics.observe_request)
    wrapped.fastapi = app  # type: ignore[attr-defined]
    return wrapped
