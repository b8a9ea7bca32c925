"""The host's side of the agent channel: pooled unix-socket connections to one sandbox.

The agent holds a "door": a datagram socket bound at a host-only path. A connection
is a fresh socket pair whose far end is pushed through the door (SCM_RIGHTS). This
works the same in nsjail and in gVisor, whose Sentry can receive descriptors over a
host socket but cannot accept() on one. A door nobody holds refuses at once.

Every answer comes from inside the sandbox, where untrusted code may have taken the
agent over, so frames are size-capped and fields type-checked before use.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import IsolateError, SandboxError, error_from_code
from .protocol import ProtocolError, decode_frame, encode_frame

CONNECT_ERRORS = (FileNotFoundError, ConnectionRefusedError)
STALE_ERRORS = (EOFError, BrokenPipeError, ConnectionResetError)
REPLY_TIMEOUT = 120.0
CONNECT_TIMEOUT = 10.0  # an agent that stops reading its door fills its queue; knocking would then wait forever


def door_is_open(path: Path | str) -> bool:
    """Whether a live agent holds the door (connecting a datagram socket sends nothing, never blocks)."""
    door = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        door.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        door.close()


def knock(path: Path | str, timeout: float) -> socket.socket:
    """A new stream connection to the agent behind the door at `path`; SandboxError if the
    door's queue stays full for `timeout` seconds (an agent that stopped reading it)."""
    near, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    door = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        door.settimeout(timeout)
        door.connect(str(path))
        door.sendmsg([b"c"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, far.fileno().to_bytes(4, sys.byteorder))])
    except TimeoutError:
        near.close()
        raise SandboxError("sandbox agent is not accepting connections") from None
    except BaseException:
        near.close()
        raise
    finally:
        door.close()
        far.close()
    return near


class AgentConnection:
    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.reader = sock.makefile("rb", buffering=65536)

    def send(self, message: dict[str, Any], payload: bytes = b"", deadline: float | None = None) -> None:
        self._wait_at_most_until(deadline)
        self.sock.sendall(encode_frame(message, payload))

    def receive(self, max_payload: int, deadline: float | None = None) -> tuple[dict[str, Any], bytes]:
        """One frame, whole before `deadline`: an agent dripping a byte at a time cannot hold the caller."""

        def read(size: int) -> bytes:
            self._wait_at_most_until(deadline)
            return self.reader.read1(size)

        return decode_frame(read, max_payload)

    def _wait_at_most_until(self, deadline: float | None) -> None:
        if deadline is None:
            self.sock.settimeout(None)
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the agent's answer did not arrive in time")
        self.sock.settimeout(remaining)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


class Cancel:
    """Lets another thread end a call blocked reading the agent (its caller went away).

    Shutting the socket down makes the blocked read return at once; the agent sees the
    host gone and stops the command, as when a stream is closed.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.cancelled = False

    def attach(self, sock: socket.socket | None) -> None:
        with self._lock:
            self._sock = sock
            if sock is not None and self.cancelled:
                _shutdown(sock)

    def __call__(self) -> None:
        with self._lock:
            self.cancelled = True
            if self._sock is not None:
                _shutdown(self._sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class AgentClient:
    """Talks to the agent behind the door at `socket_path`; calls `start` when nobody holds it."""

    def __init__(self, socket_path: Path, start: Callable[[], None], describe_failure: Callable[[], str]):
        self.socket_path = str(socket_path)
        self.start = start
        self.describe_failure = describe_failure
        self.idle: list[AgentConnection] = []
        self.lock = threading.Lock()

    def _connect(self, timeout: float | None) -> AgentConnection:
        for attempt in range(2):
            try:
                return AgentConnection(knock(self.socket_path, min(timeout or CONNECT_TIMEOUT, CONNECT_TIMEOUT)))
            except CONNECT_ERRORS:
                if attempt:
                    raise SandboxError(f"sandbox agent did not start: {self.describe_failure()}") from None
                self.start()
        raise AssertionError("unreachable")

    def _checkout(self, timeout: float | None = None) -> tuple[AgentConnection, bool]:
        with self.lock:
            if self.idle:
                return self.idle.pop(), True
        return self._connect(timeout), False

    def _checkin(self, conn: AgentConnection) -> None:
        with self.lock:
            self.idle.append(conn)

    def exchange(self, message: dict[str, Any], payload: bytes = b"", *, max_payload: int = 1 << 20,
                 timeout: float | None = REPLY_TIMEOUT, cancel: Cancel | None = None) -> Iterator[tuple[dict[str, Any], bytes]]:
        """Send one request and yield its answer frames until one is final (no `ev`, or `ev: exit`).

        A pooled connection may have died with an idle agent; the request is then sent
        again on a fresh one, which is safe because nothing was answered. So may a fresh
        one, once, when the agent it reached was on its way out (its door closes soon after).
        """
        deadline = time.monotonic() + timeout if timeout is not None else None
        fresh_retried = False
        cancel = cancel or Cancel()
        while True:
            conn, pooled = self._checkout(timeout)
            answered = False
            cancel.attach(conn.sock)
            try:
                conn.send(message, payload, deadline)
                while True:
                    reply, data = conn.receive(max_payload, deadline)
                    answered = True
                    final = reply.get("ev") in (None, "exit")
                    if not final:
                        yield reply, data
                        continue
                    cancel.attach(None)
                    if reply.get("ok") is False:
                        self._checkin(conn)
                        conn = None  # type: ignore[assignment]
                        raise error_from_code(str(reply.get("code")), str(reply.get("message"))[:2000])
                    self._checkin(conn)
                    conn = None  # type: ignore[assignment]
                    yield reply, data
                    return
            except IsolateError:
                raise
            except TimeoutError:
                raise SandboxError("sandbox agent did not answer in time") from None
            except (EOFError, OSError) as exc:
                if cancel.cancelled:
                    raise SandboxError("the call was cancelled") from None
                if not isinstance(exc, STALE_ERRORS):
                    raise
                if answered:
                    raise SandboxError(f"sandbox agent went away mid-answer: {exc}") from None
                if not pooled:
                    if fresh_retried or not self._door_closes(deadline):
                        raise SandboxError(f"sandbox agent is not answering: {self.describe_failure()}") from None
                    fresh_retried = True
                self.close()  # the agent behind every pooled connection is gone; retry on a fresh one
            except ProtocolError as exc:
                raise SandboxError(f"sandbox agent sent a malformed answer: {exc}") from None
            finally:
                cancel.attach(None)
                if conn is not None:
                    conn.close()

    def _door_closes(self, deadline: float | None, within: float = 2.0) -> bool:
        """Whether the door closes soon (before the call's deadline): the agent that dropped a fresh connection is ending."""
        until = time.monotonic() + within if deadline is None else min(time.monotonic() + within, deadline)
        while door_is_open(self.socket_path):
            if time.monotonic() > until:
                return False
            time.sleep(0.02)
        return True

    def call(self, message: dict[str, Any], payload: bytes = b"", *, max_payload: int = 1 << 20,
             timeout: float = REPLY_TIMEOUT) -> tuple[dict[str, Any], bytes]:
        """A request with exactly one answer."""
        for reply, data in self.exchange(message, payload, max_payload=max_payload, timeout=timeout):
            return reply, data
        raise SandboxError("sandbox agent sent no answer")

    def close(self) -> None:
        with self.lock:
            idle, self.idle = self.idle, []
        for conn in idle:
            conn.close()

