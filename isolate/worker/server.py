"""`isolate serve`: listen, clean up after a crashed run, serve, and stop gracefully.

Start-up: jails still running from an earlier run of this worker (one that was SIGKILLed
or crashed) are stopped, then `clean_leftovers` removes stale cgroups, run folders and
half-created sandboxes; every sandbox's files stay and it starts again at its next request.
The warm pool (`--warm-pool`, spares started ahead of need) is refilled in the background.
Ready: READY=1 to systemd once the socket accepts requests.
SIGTERM: STOPPING=1, no new connections, in-flight requests get `shutdown_timeout`
seconds, then every running sandbox is stopped (files kept).
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from ..errors import ValidationError
from ..manager import SandboxManager
from .access_log import log, setup_logging
from .app import DEFAULT_MAX_BODY, create_app
from .notify import notify


@dataclass(frozen=True)
class Listen:
    host: str | None = None
    port: int | None = None
    unix: str | None = None

    @property
    def is_local(self) -> bool:
        """A unix socket or a loopback address: the only places a worker without a token may listen."""
        if self.unix is not None:
            return True
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host or "").is_loopback
        except ValueError:
            return False


def parse_listen(text: str) -> Listen:
    """HOST:PORT, [IPv6]:PORT, or unix:/path."""
    if text.startswith("unix:"):
        path = text[5:]
        if not path.startswith("/"):
            raise ValidationError("unix socket path must be absolute: unix:/run/isolate/worker.sock")
        return Listen(unix=path)
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValidationError(f"--listen wants HOST:PORT or unix:/path, not {text!r}")
    return Listen(host=host.strip("[]"), port=int(port))


@dataclass(frozen=True)
class WorkerOptions:
    listen: Listen
    token: str | None = None
    max_body: int = DEFAULT_MAX_BODY
    threads: int = 256  # blocking sandbox calls (streams included) run in this many threads at most
    shutdown_timeout: float = 20.0  # seconds in-flight requests get after SIGTERM


class NotifyingServer(uvicorn.Server):
    """uvicorn, telling systemd when it accepts requests and when it begins to stop."""

    async def startup(self, sockets: Any = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            notify("READY=1\nSTATUS=accepting requests")
            log("ready")

    def handle_exit(self, sig: int, frame: Any) -> None:
        """Begin a graceful stop. Unlike uvicorn's own handler, the signal is not raised again
        once serving ends: the sandboxes are stopped first, and the exit status is 0."""
        if self.should_exit:
            self.force_exit = sig == signal.SIGINT
            return
        notify("STOPPING=1")
        log("stopping", signal=signal.Signals(sig).name)
        self.should_exit = True


def recover(manager: SandboxManager) -> dict[str, list[str]]:
    """What an earlier run left: its jails are stopped and its spares removed, then stale cgroups
    and folders; the warm pool is then filled anew in the background."""
    stopped = [name for name in manager.names() if manager.is_running(name)]
    for name in stopped:
        manager.stop(name)
    manager.pool.drain()
    removed = manager.clean_leftovers()
    manager.pool.refill_soon()
    return {"stopped": stopped, "removed": removed}


def remove_stale_socket(path: str) -> None:
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass


async def serve(manager: SandboxManager, options: WorkerOptions) -> None:
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(max_workers=options.threads, thread_name_prefix="isolate-call"))
    found = await asyncio.to_thread(recover, manager)
    log("recovered", **found)
    app = create_app(manager, token=options.token, max_body=options.max_body)
    listen = options.listen
    if listen.unix:
        remove_stale_socket(listen.unix)
        Path(listen.unix).parent.mkdir(parents=True, exist_ok=True)
    config = uvicorn.Config(app, host=listen.host or "127.0.0.1", port=listen.port or 0, uds=listen.unix, log_config=None,
                            access_log=False, timeout_graceful_shutdown=options.shutdown_timeout, lifespan="off",
                            server_header=False, timeout_keep_alive=30)
    server = NotifyingServer(config)
    try:
        await server.serve()
    finally:
        stopped = await app.fastapi.state.sandboxes.stop_all()
        await asyncio.to_thread(manager.pool.drain)
        log("stopped", sandboxes=len(stopped))
        if listen.unix:
            remove_stale_socket(listen.unix)


def run(manager: SandboxManager, options: WorkerOptions) -> int:
    setup_logging()
    if options.token is None and not options.listen.is_local:
        log("refusing to listen beyond loopback without a token (set ISOLATE_TOKEN or --token-file)", 40,
            listen=options.listen.host)
        return 2
    asyncio.run(serve(manager, options))
    return 0
