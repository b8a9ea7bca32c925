"""One structured (JSON) line per request: sandbox, route, status, duration. Never contents or output."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("isolate.worker")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"), "level": record.levelname.lower(),
                                "event": record.getMessage()}
        line.update(getattr(record, "fields", {}))
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"), default=str)


def setup_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


def log(event: str, level: int = logging.INFO, **fields: Any) -> None:
    logger.log(level, event, extra={"fields": fields})


def route_of(scope: Scope) -> str:
    """The matched route's template (/api/process/{id}), so logs and metrics never hold ids."""
    route = scope.get("route")
    return getattr(route, "path", None) or "unmatched"


class AccessLog:
    """ASGI middleware: logs each request once it has been answered (streams: once they end)."""

    def __init__(self, app: ASGIApp, observe: Any = None):
        self.app = app
        self.observe = observe  # callback(route, method, status, seconds) for metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.monotonic()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            seconds = time.monotonic() - started
            route = route_of(scope)
            headers = dict(scope.get("headers") or [])
            sandbox = headers.get(b"x-sandbox-id", b"").decode("latin-1")[:63] or None
            log("request", sandbox=sandbox, method=scope["method"], route=route, status=status, duration_ms=round(seconds * 1000, 3))
            if self.observe is not None:
                self.observe(route, scope["method"], status, seconds)
