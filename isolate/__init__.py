"""isolate: named, persistent, strongly isolated Linux sandboxes for untrusted code.

    from isolate import get_sandbox
    sb = get_sandbox("my-sandbox")
    print(sb.exec("ls", ["-la"]).stdout)
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from .config import Settings
from .errors import (
    ExecError,
    FileSystemError,
    GitError,
    HostError,
    InvalidNameError,
    IsolateError,
    SandboxError,
    ValidationError,
)
from .manager import SandboxManager
from .net.policy import NetworkPolicy
from .sandbox import AsyncSandbox, ExecStream, GitCheckoutStream, Sandbox
from .types import (
    ExecEvent,
    ExecResult,
    ExposedPort,
    FileEntry,
    GitCheckoutEvent,
    GitCheckoutResult,
    Limits,
    ReadFileResult,
    ResourceUsage,
    SandboxInfo,
)

__version__ = "0.1.0"
__all__ = [
    "AsyncSandbox", "ExecError", "ExecEvent", "ExecResult", "ExecStream", "ExposedPort", "FileEntry", "FileSystemError",
    "GitCheckoutEvent", "GitCheckoutResult", "GitCheckoutStream", "GitError", "HostError", "InvalidNameError", "IsolateError",
    "Limits", "NetworkPolicy", "ReadFileResult", "ResourceUsage", "Sandbox", "SandboxError", "SandboxInfo", "SandboxManager",
    "Settings", "ValidationError", "destroy_sandbox", "get_async_sandbox", "get_sandbox", "list_sandboxes",
]

_default: SandboxManager | None = None
_default_lock = threading.Lock()


def default_manager() -> SandboxManager:
    """The process-wide manager, on the state folder from ISOLATE_STATE_DIR (default /var/lib/isolate)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = SandboxManager()
        return _default


def get_sandbox(name: str, *, manager: SandboxManager | None = None, **options: Any) -> Sandbox:
    """The sandbox called `name`, created on first use with `options` (backend, image, limits, policy, env, network)."""
    manager = manager or default_manager()
    return Sandbox(manager, manager.open(name, **options))


async def get_async_sandbox(name: str, **options: Any) -> AsyncSandbox:
    return AsyncSandbox(await asyncio.to_thread(get_sandbox, name, **options))


def list_sandboxes(*, manager: SandboxManager | None = None) -> list[SandboxInfo]:
    return (manager or default_manager()).list()


def destroy_sandbox(name: str, *, manager: SandboxManager | None = None) -> bool:
    return (manager or default_manager()).destroy(name)
