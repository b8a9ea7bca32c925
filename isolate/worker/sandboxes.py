"""Which sandbox and which session a request means.

The sandbox comes from the header X-Sandbox-Id and is created on first use, as
`get_sandbox` does. The session id comes, as in Cloudflare's container, from the body's
`sessionId`, else the header X-Session-Id, else `Authorization: Bearer <id>`, else `?session=`.
Without one, a command runs on its own (a fresh shell), as `Sandbox.exec` does.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.requests import Request

from ..errors import ValidationError
from ..manager import SandboxManager
from ..sandbox import AsyncSandbox, Sandbox
from ..validation import check_name, check_session_id

HEADER = "x-sandbox-id"


class Sandboxes:
    def __init__(self, manager: SandboxManager):
        self.manager = manager
        self._open: dict[str, AsyncSandbox] = {}

    async def of(self, request: Request) -> AsyncSandbox:
        raw = request.headers.get(HEADER)
        if raw is None:
            raise ValidationError("the X-Sandbox-Id header names the sandbox; it is required here")
        name = check_name(raw)
        sandbox = self._open.get(name)
        if sandbox is None:
            record = await asyncio.to_thread(self.manager.open, name)
            sandbox = self._open.setdefault(name, AsyncSandbox(Sandbox(self.manager, record)))
        return sandbox

    def forget(self, name: str | None) -> None:
        """Drop a sandbox that was destroyed (here or elsewhere): the next request creates it anew."""
        if name:
            self._open.pop(name, None)

    async def target(self, request: Request, body_session: str | None = None) -> AsyncSandbox:
        """The sandbox, or the session of it that the request names."""
        sandbox = await self.of(request)
        session = session_id(request, body_session)
        return sandbox.get_session(session) if session is not None else sandbox

    async def stop_all(self) -> list[str]:
        """Stop the processes of every running sandbox (files stay); returns their names."""
        names = await asyncio.to_thread(lambda: [n for n in self.manager.names() if self.manager.is_running(n)])

        async def stop(name: str) -> None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.manager.stop, name)

        await asyncio.gather(*(stop(name) for name in names))
        return names


def session_id(request: Request, body_session: str | None = None) -> str | None:
    value = body_session or request.headers.get("x-session-id")
    if not value:
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            value = auth[7:].strip()
    value = value or request.query_params.get("session")
    return check_session_id(value) if value else None
