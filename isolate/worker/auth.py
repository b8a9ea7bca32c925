"""Token authentication: the header X-Isolate-Token (Cloudflare's client uses `Authorization: Bearer`
for session ids, so it cannot carry the token). A request without the right token touches nothing."""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import ValidationError
from .errors import error_response

HEADER = b"x-isolate-token"


def load_token(token_file: str | None) -> str | None:
    """The token from --token-file, else from ISOLATE_TOKEN; None when neither is set."""
    if token_file:
        token = Path(token_file).read_text().strip()
        if not token:
            raise ValidationError(f"token file {token_file} is empty")
        return token
    return os.environ.get("ISOLATE_TOKEN") or None


class TokenAuth:
    """ASGI middleware: 401 UNAUTHORIZED unless the request carries the configured token."""

    def __init__(self, app: ASGIApp, token: str | None):
        self.app = app
        self.token = token.encode() if token else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.token is not None:
            given = dict(scope.get("headers") or []).get(HEADER, b"")
            if not hmac.compare_digest(given, self.token):
                await error_response("UNAUTHORIZED", "missing or wrong X-Isolate-Token", 401)(scope, receive, send)
                return
        await self.app(scope, receive, send)
