"""A worker (`isolate serve`) run as a real subprocess for tests, readiness awaited through a fake NOTIFY_SOCKET."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

TOKEN = "test-token-" + os.urandom(6).hex()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Worker:
    """One `isolate serve` process on 127.0.0.1; `notes` holds what it told its NOTIFY_SOCKET."""

    def __init__(self, state_dir: Path, *, token: str | None = TOKEN, port: int | None = None, extra: tuple[str, ...] = ()):
        self.state_dir, self.token, self.extra = state_dir, token, extra
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.notes: list[str] = []
        self.folder = Path(tempfile.mkdtemp(prefix="isolate-notify-"))
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.folder / "notify.sock"))
        self.process: subprocess.Popen[bytes] | None = None
        self.log = self.folder / "worker.log"

    def start(self, timeout: float = 60) -> Worker:
        env = {**os.environ, "ISOLATE_STATE_DIR": str(self.state_dir), "NOTIFY_SOCKET": str(self.folder / "notify.sock")}
        env.pop("ISOLATE_TOKEN", None)
        if self.token:
            env["ISOLATE_TOKEN"] = self.token
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "isolate.cli", "serve", "--listen", f"127.0.0.1:{self.port}", *self.extra],
                                            stdout=log, stderr=log, env=env, cwd=Path(__file__).parent.parent)
        self.wait_for("READY=1", timeout)
        return self

    def wait_for(self, state: str, timeout: float = 30) -> None:
        self.notify.settimeout(timeout)
        while not any(state in note for note in self.notes):
            try:
                self.notes.append(self.notify.recv(4096).decode())
            except TimeoutError:
                raise AssertionError(f"worker never sent {state}; log:\n{self.log.read_text()[-3000:]}") from None

    def headers(self, sandbox: str | None = None) -> dict[str, str]:
        headers = {"X-Isolate-Token": self.token} if self.token else {}
        if sandbox:
            headers["X-Sandbox-Id"] = sandbox
        return headers

    def client(self, sandbox: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(sandbox), timeout=60)

    def signal(self, sig: int) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=60)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.signal(signal.SIGTERM)
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
        self.notify.close()
        for item in self.folder.iterdir():
            item.unlink()
        self.folder.rmdir()
