"""The sandbox API, after Cloudflare's Sandbox SDK: exec and files, sync and async.

Paths are normalized here (pure string work) and resolved by the agent inside the
sandbox; the host never opens a path in a sandbox's tree.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import codecs
import mimetypes
import posixpath
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from .errors import FileSystemError, SandboxError, ValidationError
from .manager import SandboxManager, SandboxRecord
from .types import ExecEvent, ExecResult, FileEntry, MiB, ReadFileResult, ResourceUsage, SandboxInfo
from .validation import resolve_path

T = TypeVar("T")
DEFAULT_CWD = "/workspace"
MAX_READ_BYTES = 32 * MiB  # Cloudflare's cap on buffered reads
MAX_WRITE_BYTES = 256 * MiB
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "USER": "root",
    "LANG": "C.UTF-8",
    "TERM": "xterm",
    "HOSTNAME": "sandbox",
}


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _number(reply: dict[str, Any], key: str, kind: type = float) -> Any:
    """A numeric field of an untrusted reply, or 0."""
    value = reply.get(key)
    return kind(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else kind(0)


class ExecStream:
    """A streamed exec: iterate for events as they happen; `result` once it completed."""

    def __init__(self, events: Iterator[ExecEvent]):
        self._events = events
        self.result: ExecResult | None = None

    def __iter__(self) -> Iterator[ExecEvent]:
        for event in self._events:
            if event.result is not None:
                self.result = event.result
            yield event

    def close(self) -> None:
        """Stop reading; the command is killed if it still runs."""
        close = getattr(self._events, "close", None)
        if close is not None:
            close()


class Sandbox:
    """One named sandbox. Obtain it with `get_sandbox(name)`."""

    def __init__(self, manager: SandboxManager, record: SandboxRecord, cwd: str = DEFAULT_CWD):
        self._manager = manager
        self._record = record
        self.cwd = cwd

    @property
    def name(self) -> str:
        return self._record.name

    @property
    def backend(self) -> str:
        return self._record.backend

    def __repr__(self) -> str:
        return f"Sandbox({self.name!r}, backend={self.backend!r})"

    def _call(self, message: dict[str, Any], payload: bytes = b"", *, max_payload: int = 1 << 20) -> tuple[dict[str, Any], bytes]:
        return self._manager.client(self.name).call(message, payload, max_payload=max_payload)

    def _path(self, path: str) -> str:
        return resolve_path(path, self.cwd)

    # --- exec ---

    def exec(
        self,
        command: str,
        args: list[str] | None = None,
        *,
        stream: bool = False,
        env: dict[str, str] | None = None,
        cwd: str | None = None,
        timeout: float | None = None,
        stdin: str | bytes | None = None,
    ) -> Any:
        """Run a command. With `args` it is an argv (no shell); without, a shell string for `sh -c`.

        Returns an ExecResult, or with `stream=True` an ExecStream of ExecEvents.
        """
        events = self._exec_events(command, args, env=env, cwd=cwd, timeout=timeout, stdin=stdin)
        if stream:
            return ExecStream(events)
        for event in events:
            if event.result is not None:
                return event.result
        raise SandboxError("exec ended without a result")

    def _exec_request(self, command: str, args: list[str] | None, env: dict[str, str] | None, cwd: str | None,
                      timeout: float | None) -> dict[str, Any]:
        if not isinstance(command, str) or not command.strip() or "\x00" in command:
            raise ValidationError("command must be a non-empty string without NUL bytes")
        if args is not None and (not isinstance(args, (list, tuple)) or not all(isinstance(a, str) and "\x00" not in a for a in args)):
            raise ValidationError("args must be a list of strings without NUL bytes")
        argv = [command, *args] if args is not None else ["/bin/sh", "-c", command]
        limits = self._record.limits
        if timeout is None:
            timeout = limits.exec_timeout
        if not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValidationError("timeout must be a positive number of seconds")
        merged = {**BASE_ENV, **self._record.env, **(env or {})}
        for key, value in merged.items():
            if not isinstance(key, str) or not isinstance(value, str) or not key or "=" in key or "\x00" in key + value:
                raise ValidationError(f"bad environment variable {key!r}")
        workdir = self._path(cwd) if cwd is not None else self.cwd
        merged["PWD"] = workdir
        request = {"op": "exec", "argv": argv, "env": merged, "cwd": workdir, "timeout": float(timeout),
                   "output_limit": limits.output_bytes}
        return request

    def _exec_events(self, command: str, args: list[str] | None, *, env: dict[str, str] | None, cwd: str | None,
                     timeout: float | None, stdin: str | bytes | None) -> Iterator[ExecEvent]:
        request = self._exec_request(command, args, env, cwd, timeout)
        data = stdin.encode() if isinstance(stdin, str) else stdin
        request["stdin"] = data is not None
        cgroup = self._manager.cgroup(self.name)
        client = self._manager.client(self.name)

        def generate() -> Iterator[ExecEvent]:
            ooms_before = cgroup.oom_kills()
            started = time.monotonic()
            decoders = {1: codecs.getincrementaldecoder("utf-8")("replace"), 2: codecs.getincrementaldecoder("utf-8")("replace")}
            collected: dict[int, list[str]] = {1: [], 2: []}
            received = {1: 0, 2: 0}
            frames = client.exchange(request, data or b"", max_payload=1 << 20, timeout=float(request["timeout"]) + 30)
            for reply, chunk in frames:
                kind = reply.get("ev")
                if kind == "start":
                    yield ExecEvent("start", timestamp=now_iso())
                elif kind == "out" and reply.get("fd") in (1, 2):
                    received[reply["fd"]] += len(chunk)
                    if received[reply["fd"]] > request["output_limit"]:  # the agent cuts at the limit: this one lies
                        frames.close()
                        raise SandboxError("sandbox agent sent more output than the limit allows")
                    text = decoders[reply["fd"]].decode(chunk)
                    collected[reply["fd"]].append(text)
                    if text:
                        yield ExecEvent("stdout" if reply["fd"] == 1 else "stderr", data=text, timestamp=now_iso())
                elif kind == "exit":
                    for fd in (1, 2):
                        collected[fd].append(decoders[fd].decode(b"", final=True))
                    yield ExecEvent("complete", result=self._result(command, args, reply, collected, started, ooms_before, cgroup),
                                    timestamp=now_iso())

        return generate()

    def _result(self, command: str, args: list[str] | None, reply: dict[str, Any], collected: dict[int, list[str]],
                started: float, ooms_before: int, cgroup: Any) -> ExecResult:
        reason = reply.get("reason") if reply.get("reason") in ("exited", "signaled", "timeout", "output_limit") else "exited"
        sig = reply.get("signal") if isinstance(reply.get("signal"), int) else None
        if sig == signal.SIGKILL and reason == "signaled" and cgroup.oom_kills() > ooms_before:
            reason = "oom"
        return ExecResult(
            command=command,
            args=list(args or []),
            exit_code=_number(reply, "exit_code", int),
            stdout="".join(collected[1]),
            stderr="".join(collected[2]),
            reason=reason,
            signal=sig,
            duration=time.monotonic() - started,
            timestamp=now_iso(),
            usage=ResourceUsage(cpu_time=_number(reply, "cpu"), wall_time=_number(reply, "wall"), memory_peak=_number(reply, "maxrss", int)),
            truncated=bool(reply.get("truncated")),
        )

    # --- files ---

    def write_file(self, path: str, content: str | bytes, *, encoding: Literal["utf-8", "base64"] | None = None) -> str:
        """Write a file (parent folders are created); `encoding="base64"` decodes a base64 string first."""
        target = self._path(path)
        if isinstance(content, str):
            if encoding == "base64":
                try:
                    data = base64.b64decode(content, validate=True)
                except (binascii.Error, ValueError):
                    raise ValidationError("content is not valid base64") from None
            else:
                data = content.encode()
        elif isinstance(content, (bytes, bytearray, memoryview)):
            data = bytes(content)
        else:
            raise ValidationError("content must be str or bytes")
        if len(data) > MAX_WRITE_BYTES:
            raise FileSystemError(f"content is larger than {MAX_WRITE_BYTES} bytes", code="FILE_TOO_LARGE")
        self._call({"op": "write", "path": target}, data)
        return target

    def read_file(self, path: str, *, encoding: Literal["utf-8", "base64", "bytes"] | None = None) -> ReadFileResult:
        """Read a file: text comes back as UTF-8, binary as base64, unless `encoding` says otherwise."""
        target = self._path(path)
        _, data = self._call({"op": "read", "path": target, "max_bytes": MAX_READ_BYTES}, max_payload=MAX_READ_BYTES)
        is_binary = b"\x00" in data[:8192]
        if not is_binary:
            try:
                text = data.decode("utf-8")
            except UnicodeDecodeError:
                is_binary = True
        mime = mimetypes.guess_type(target)[0] or ("application/octet-stream" if is_binary else "text/plain")
        content: str | bytes
        if encoding == "bytes":
            content, used = data, "bytes"
        elif encoding == "base64" or (encoding is None and is_binary):
            content, used = base64.b64encode(data).decode(), "base64"
        else:
            content, used = (text if not is_binary else data.decode("utf-8", "replace")), "utf-8"
        return ReadFileResult(path=target, content=content, encoding=used, is_binary=is_binary, mime_type=mime, size=len(data))  # type: ignore[arg-type]

    def mkdir(self, path: str, *, recursive: bool = False) -> str:
        target = self._path(path)
        self._call({"op": "mkdir", "path": target, "recursive": bool(recursive)})
        return target

    def delete_file(self, path: str) -> str:
        target = self._path(path)
        self._call({"op": "delete", "path": target})
        return target

    def rename_file(self, old_path: str, new_path: str) -> str:
        reply, _ = self._call({"op": "rename", "old": self._path(old_path), "new": self._path(new_path)})
        return str(reply.get("path"))

    def move_file(self, source_path: str, destination_path: str) -> str:
        reply, _ = self._call({"op": "move", "source": self._path(source_path), "destination": self._path(destination_path)})
        return str(reply.get("path"))

    def exists(self, path: str) -> bool:
        reply, _ = self._call({"op": "exists", "path": self._path(path)})
        return reply.get("exists") is True

    def list_files(self, path: str = ".", *, recursive: bool = False, include_hidden: bool = False) -> list[FileEntry]:
        root = self._path(path)
        reply, _ = self._call({"op": "list", "path": root, "recursive": bool(recursive), "include_hidden": bool(include_hidden)},
                              max_payload=0)
        entries = []
        for item in reply.get("entries") or []:
            if not (isinstance(item, list) and len(item) == 8 and isinstance(item[0], str)):
                continue
            full, kind, size, mtime, mode, readable, writable, executable = item
            entries.append(
                FileEntry(
                    name=posixpath.basename(full),
                    absolute_path=full,
                    relative_path=posixpath.relpath(full, root),
                    type=kind if kind in ("file", "directory", "symlink", "other") else "other",
                    size=int(size) if isinstance(size, int) else 0,
                    modified_at=datetime.fromtimestamp(float(mtime) if isinstance(mtime, (int, float)) else 0, UTC)
                    .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                    mode=oct(mode & 0o7777)[2:] if isinstance(mode, int) else "0",
                    readable=readable is True,
                    writable=writable is True,
                    executable=executable is True,
                )
            )
        entries.sort(key=lambda e: e.absolute_path)
        return entries

    # --- lifecycle ---

    def ping(self) -> str:
        self._call({"op": "ping"})
        return "pong"

    def info(self) -> SandboxInfo:
        return self._manager.info(self.name)

    def stop(self) -> None:
        """Stop every process; files stay, and the next call starts the sandbox again."""
        self._manager.stop(self.name)

    def destroy(self) -> None:
        """Remove the sandbox with its processes, mounts, cgroups and files."""
        self._manager.destroy(self.name)


class AsyncSandbox:
    """The same API for asyncio; each call runs the one sync implementation in a worker thread."""

    def __init__(self, sandbox: Sandbox):
        self.sync = sandbox

    @property
    def name(self) -> str:
        return self.sync.name

    async def _run(self, method: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(method, *args, **kwargs)

    async def exec(self, command: str, args: list[str] | None = None, *, stream: bool = False, **options: Any) -> Any:
        if stream:
            return _aiter_in_thread(iter(self.sync.exec(command, args, stream=True, **options)))
        return await self._run(self.sync.exec, command, args, **options)

    async def write_file(self, path: str, content: str | bytes, **options: Any) -> str:
        return await self._run(self.sync.write_file, path, content, **options)

    async def read_file(self, path: str, **options: Any) -> ReadFileResult:
        return await self._run(self.sync.read_file, path, **options)

    async def mkdir(self, path: str, *, recursive: bool = False) -> str:
        return await self._run(self.sync.mkdir, path, recursive=recursive)

    async def delete_file(self, path: str) -> str:
        return await self._run(self.sync.delete_file, path)

    async def rename_file(self, old_path: str, new_path: str) -> str:
        return await self._run(self.sync.rename_file, old_path, new_path)

    async def move_file(self, source_path: str, destination_path: str) -> str:
        return await self._run(self.sync.move_file, source_path, destination_path)

    async def exists(self, path: str) -> bool:
        return await self._run(self.sync.exists, path)

    async def list_files(self, path: str = ".", **options: Any) -> list[FileEntry]:
        return await self._run(self.sync.list_files, path, **options)

    async def ping(self) -> str:
        return await self._run(self.sync.ping)

    async def info(self) -> SandboxInfo:
        return await self._run(self.sync.info)

    async def stop(self) -> None:
        await self._run(self.sync.stop)

    async def destroy(self) -> None:
        await self._run(self.sync.destroy)


async def _aiter_in_thread(iterator: Iterator[T]) -> AsyncIterator[T]:
    done = object()
    try:
        while True:
            item = await asyncio.to_thread(next, iterator, done)
            if item is done:
                return
            yield item  # type: ignore[misc]
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
