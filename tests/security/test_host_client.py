"""The host's client against an agent that answers anything at all: it returns or raises an
IsolateError, within its deadline, and never holds more than a frame's cap. (The audit's
hostile-agent cases do the same through a real sandbox whose agent was replaced from inside.)"""

from __future__ import annotations

import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isolate import IsolateError
from isolate.agent.client import AgentClient
from isolate.agent.protocol import encode_frame

DEADLINE = 0.5


class FakeAgent:
    """Holds a door as the real agent does (a datagram socket each connection is passed through)
    and answers each request with `behave(connection)`; with `accept=False` it never reads the door."""

    def __init__(self, behave, accept: bool = True):
        self.folder = tempfile.TemporaryDirectory()
        self.path = str(Path(self.folder.name) / "agent.sock")
        self.door = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.door.bind(self.path)
        self.behave = behave
        if accept:
            threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                _, fds, _, _ = socket.recv_fds(self.door, 1, 4)
            except OSError:
                return
            for fd in fds:
                threading.Thread(target=self._answer, args=(socket.socket(fileno=fd),), daemon=True).start()

    def _answer(self, connection: socket.socket) -> None:
        try:
            connection.recv(65536)
            self.behave(connection)
        except OSError:
            pass
        finally:
            connection.close()

    def client(self) -> AgentClient:
        return AgentClient(Path(self.path), lambda: None, lambda: "fake agent")

    def close(self) -> None:
        self.door.close()
        self.folder.cleanup()


def call_within_deadline(agent: FakeAgent) -> str:
    started = time.monotonic()
    try:
        agent.client().call({"op": "ping"}, timeout=DEADLINE)
        outcome = "answered"
    except IsolateError as exc:
        outcome = exc.code
    assert time.monotonic() - started < DEADLINE + 1.0
    return outcome


@settings(max_examples=60, deadline=None)
@given(answer=st.binary(max_size=600) | st.builds(lambda body, payload: body + payload,
                                                  st.binary(min_size=8, max_size=8), st.binary(max_size=64)))
def test_any_bytes_from_the_agent_end_in_an_answer_or_an_isolate_error(answer):
    agent = FakeAgent(lambda connection: connection.sendall(answer))
    try:
        call_within_deadline(agent)
    finally:
        agent.close()


@settings(max_examples=8, deadline=None)
@given(json_len=st.integers(0, 2**32 - 1), payload_len=st.integers(0, 2**32 - 1))
def test_a_header_announcing_anything_is_never_waited_for_beyond_the_deadline(json_len, payload_len):
    def announce(connection: socket.socket) -> None:
        connection.sendall(json_len.to_bytes(4, "big") + payload_len.to_bytes(4, "big") + b"{")
        time.sleep(DEADLINE + 0.5)

    agent = FakeAgent(announce)
    try:
        assert call_within_deadline(agent) in ("SANDBOX_START_FAILED", "answered")
    finally:
        agent.close()


def test_an_answer_dripped_a_byte_at_a_time_is_abandoned_at_the_deadline():
    def drip(connection: socket.socket) -> None:
        connection.sendall((1000).to_bytes(4, "big") + bytes(4))
        for _ in range(100):
            connection.sendall(b" ")
            time.sleep(0.05)

    agent = FakeAgent(drip)
    try:
        assert call_within_deadline(agent) == "SANDBOX_START_FAILED"
    finally:
        agent.close()


def test_an_agent_that_stopped_accepting_does_not_hang_the_caller():
    agent = FakeAgent(lambda connection: None, accept=False)
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    filler.setblocking(False)
    try:
        filler.connect(agent.path)
        for _ in range(100000):  # fill the door's queue, as an agent that stopped reading it would leave it
            try:
                filler.send(b"x")
            except BlockingIOError:
                break
        assert call_within_deadline(agent) == "SANDBOX_START_FAILED"
    finally:
        filler.close()
        agent.close()


@pytest.mark.parametrize("code", ["../../etc/passwd", "FILE_NOT_FOUND", "", "<script>"])
def test_error_codes_from_the_agent_are_kept_to_known_ones(code):
    agent = FakeAgent(lambda connection: connection.sendall(encode_frame({"ok": False, "code": code, "message": "m" * 100000})))
    try:
        with pytest.raises(IsolateError) as caught:
            agent.client().call({"op": "ping"}, timeout=DEADLINE)
        assert caught.value.code == (code if code == "FILE_NOT_FOUND" else "INTERNAL_ERROR")
        assert len(caught.value.message) <= 2000
    finally:
        agent.close()
