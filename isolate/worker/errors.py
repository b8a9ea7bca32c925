"""Error bodies in the shape Cloudflare's client reads: {code, message, context, httpStatus, timestamp}."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from ..errors import IsolateError
from ..types import now_iso


def error_body(code: str, message: str, status: int, context: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"success": False, "code": code, "message": message, "context": context or {}, "httpStatus": status, "timestamp": now_iso()}


def error_response(code: str, message: str, status: int, context: dict[str, Any] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, status, context), status_code=status)


def isolate_error_response(exc: IsolateError) -> JSONResponse:
    return error_response(exc.code, exc.message, exc.http_status, exc.context)
