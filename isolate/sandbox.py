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
import secrets
import shlex
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from . import git
from .agent.client import Cancel
from .errors import FileSystemError, GitError, IsolateError, SandboxError, ValidationError
from .manager import SandboxManager, SandboxRecord
from .net.policy import NetworkPolicy
from .types import (
    PROCESS_STATUSES,
    ExecEvent,
    ExecResult,
    ExposedPort,
    FileEntry,
    GitCheckoutEvent,
    GitCheckoutResult,
    MiB,
    ProcessEvent,
    ProcessInfo,
    ProcessLogs,
    ReadFileResult,
    ResourceUsage,
    SandboxInfo,
    now_iso,
)
from .validation import check_process_id, check_session_id, resolve_path

T = TypeVar("T")
DEFAULT_CWD = "/workspace"
MAX_READ_BYTES = 32 * MiB  # Cloudflare's cap on buffered reads
MAX_WRITE_BYTES = 256 * MiB
PROCESS_LOG_BYTES = 1 * MiB  # output kept per background process (the most recent)
BASE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "USER": "root",
    "LANG": "C.UTF-8",
    "TERM": "xterm",
    "HOSTNAME": "sandbox",
}


def _number(reply: dict[str, Any], key: str, kind: type = float) -> Any:
    """A numeric field of an untrusted reply, or 0."""
    value = reply.get(key)
    return kind(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else kind(0)


def _ended_by_oom(frames: Iterator[tuple[dict[str, Any], bytes]], cgroup: Any, ooms_before: int) -> Iterator[tuple[dict[str, Any], bytes]]:
    """The agent's frames; if the agent died mid-exec because the host's OOM killer ended the
    sandbox (gVisor: the Sentry holds all of its memory), a final SIGKILL exit frame instead."""
    try:
        yield from frames
    except SandboxError:
        if cgroup.oom_kills() <= ooms_before:
            raise
        yield {"ev": "exit", "reason": "signaled", "signal": signal.SIGKILL, "exit_code": 128 + signal.SIGKILL}, b""


def _iso(epoch: object) -> str | None:
    if not isinstance(epoch, (int, float)) or isinstance(epoch, bool):
        return None
    try:
        return datetime.fromtimestamp(float(epoch), UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return None


def _process_info(raw: object) -> ProcessInfo:
    """A process description from the (untrusted) agent."""
    if not isinstance(raw, dict):
        raise SandboxError("sandbox agent sent a malformed process description")
    status = raw.get("status")
    exit_code = raw.get("exitCode")
    return ProcessInfo(
        id=str(raw.get("id")),
        pid=_number(raw, "pid", int),
        command=str(raw.get("command")),
        status=status if status in PROCESS_STATUSES else "error",  # type: ignore[arg-type]
        start_time=_iso(raw.get("startTime")) or "",
        end_time=_iso(raw.get("endTime")),
        exit_code=exit_code if isinstance(exit_code, int) and not isinstance(exit_code, bool) else None,
    )


class Stream(Iterator[T]):
    """Events of a call as they happen. `close()` stops it from this thread, `cancel()` from any other."""

    def __init__(self, events: Iterator[T], cancel: Cancel):
        self._events = events
        self._cancel = cancel

    def __iter__(self) -> Stream[T]:
        return self

    def __next__(self) -> T:
        event = next(self._events)
        self._seen(event)
        return event

    def _seen(self, event: T) -> None:
        """Hook for subclasses that keep something of what went by."""

    def close(self) -> None:
        """Stop reading; a command still running is killed."""
        close = getattr(self._events, "close", None)
        if close is not None:
            close()

    def cancel(self) -> None:
        """Like close(), but safe while another thread is blocked in next()."""
        self._cancel()


class ExecStream(Stream[ExecEvent]):
    """A streamed exec: iterate for events as they happen; `result` once it completed."""

    def __init__(self, events: Iterator[ExecEvent], cancel: Cancel):
        super().__init__(events, cancel)
        self.result: ExecResult | None = None

    def _seen(self, event: ExecEvent) -> None:
        if event.result is not None:
            self.result = event.result


class GitCheckoutStream(Stream[GitCheckoutEvent]):
    """A streamed git_checkout: progress events as git prints them, then `complete`; `result` once done.

    A failed clone raises its GitError from the iteration."""

    def __init__(self, events: Iterator[GitCheckoutEvent], cancel: Callable[[], None]):
        super().__init__(events, cancel)  # type: ignore[arg-type]
        self.result: GitCheckoutResult | None = None

    def _seen(self, event: GitCheckoutEvent) -> None:
        if event.result is not None:
            self.result = event.result


def _looks_binary(head: bytes) -> bool:
    """NUL bytes or invalid UTF-8 in the first bytes (a character cut at the end is fine)."""
    if b"\x00" in head[:8192]:
        return True
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head[:65536], final=False)
    except UnicodeDecodeError:
        return True
    return False


class FileStream(Iterator[bytes]):
    """A file read in pieces: its metadata, then its bytes as they are read."""

    def __init__(self, path: str, size: int, is_binary: bool, mime_type: str | None, pieces: Iterator[bytes]):
        self.path, self.size, self.is_binary = path, size, is_binary
        self.mime_type = mime_type or ("application/octet-stream" if is_binary else "text/plain")
        self._pieces = pieces

    def __iter__(self) -> FileStream:
        return self

    def __next__(self) -> bytes:
        return next(self._pieces)


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
        request = self._exec_request(command, args, env, cwd, timeout)
        data = stdin.encode() if isinstance(stdin, str) else stdin
        request["stdin"] = data is not None
        return self._run_exec(request, data or b"", command, args, stream)

    def _run_exec(self, request: dict[str, Any], data: bytes, command: str, args: list[str] | None, stream: bool) -> Any:
        cancel = Cancel()
        events = self._exec_events(request, data, command, args, cancel)
        if stream:
            return ExecStream(events, cancel)
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
        merged = self._environment(env)
        workdir = self._path(cwd) if cwd is not None else self.cwd
        merged["PWD"] = workdir
        return {"op": "exec", "argv": argv, "env": merged, "cwd": workdir, "timeout": self._timeout(timeout),
                "output_limit": self._record.limits.output_bytes}

    def _timeout(self, timeout: float | None) -> float:
        if timeout is None:
            timeout = self._record.limits.exec_timeout
        if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or not 0 < timeout < 1e9:
            raise ValidationError("timeout must be a positive number of seconds")
        return float(timeout)

    def _environment(self, env: dict[str, str] | None, base: dict[str, str] | None = None) -> dict[str, str]:
        """The sandbox's environment with `env` on top, checked."""
        if env is not None and not isinstance(env, dict):
            raise ValidationError("env must be a mapping of names to strings")
        merged = {**(base if base is not None else {**BASE_ENV, **self._record.env}), **(env or {})}
        for key, value in merged.items():
            if not isinstance(key, str) or not isinstance(value, str) or not key or "=" in key or "\x00" in key + value:
                raise ValidationError(f"bad environment variable {key!r}")
        return merged

    def _exec_events(self, request: dict[str, Any], data: bytes, command: str, args: list[str] | None,
                     cancel: Cancel) -> Iterator[ExecEvent]:
        cgroup = self._manager.cgroup(self._record)
        client = self._manager.client(self.name)

        def generate() -> Iterator[ExecEvent]:
            ooms_before = cgroup.oom_kills()
            started = time.monotonic()
            decoders = {1: codecs.getincrementaldecoder("utf-8")("replace"), 2: codecs.getincrementaldecoder("utf-8")("replace")}
            collected: dict[int, list[str]] = {1: [], 2: []}
            received = {1: 0, 2: 0}
            frames = client.exchange(request, data, max_payload=1 << 20, timeout=float(request["timeout"]) + 30, cancel=cancel)
            for reply, chunk in _ended_by_oom(frames, cgroup, ooms_before):
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

    def read_file_stream(self, path: str, *, chunk_size: int = 1 * MiB) -> FileStream:
        """Read a file of any size in pieces (no 32 MiB cap); the first piece is read at once, so
        errors and the file's metadata are known before iterating."""
        target = self._path(path)
        client = self._manager.client(self.name)

        def piece(offset: int) -> tuple[dict[str, Any], bytes]:
            return client.call({"op": "read", "path": target, "max_bytes": chunk_size, "offset": offset}, max_payload=chunk_size)

        reply, first = piece(0)
        size = max(_number(reply, "size", int), len(first))

        def pieces() -> Iterator[bytes]:
            data, offset = first, 0
            while data:
                yield data
                offset += len(data)
                if len(data) < chunk_size:
                    return
                data = piece(offset)[1]

        return FileStream(target, size, _looks_binary(first), mimetypes.guess_type(target)[0], pieces())

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

    # --- network ---

    @property
    def network(self) -> NetworkPolicy:
        """The network policy in force: mode "none", "open" or "allowlist" (with `allow`)."""
        return self._current_record().network

    def _current_record(self) -> SandboxRecord:
        record = self._manager.load(self.name)
        if record is None:
            raise IsolateError(f"sandbox {self.name!r} does not exist", code="SANDBOX_NOT_FOUND")
        self._record = record
        return record

    def set_network(self, network: str | dict[str, Any] | NetworkPolicy) -> NetworkPolicy:
        """"none", "open" or {"allow": ["host", "host:port", "CIDR", ...]}: in force at once, nothing restarts."""
        self._record = self._manager.set_network(self.name, network)
        return self._record.network

    def expose_port(self, port: int) -> ExposedPort:
        """Make a service listening on `port` inside reachable from the host, at the returned loopback address."""
        return self._manager.expose_port(self.name, port)

    def unexpose_port(self, port: int) -> None:
        self._manager.unexpose_port(self.name, port)

    def exposed_ports(self) -> list[ExposedPort]:
        record = self._current_record()
        return [self._manager.exposed_port(record, port) for port in record.exposed_ports]

    # --- git ---

    def git_checkout(self, repo_url: str, branch: str | None = None, target_dir: str | None = None, depth: int | None = None,
                     timeout: float | None = None, *, stream: bool = False, submodules: bool = False) -> Any:
        """Clone a repository into the sandbox (default /workspace/<repo name>); git runs inside, with the sandbox's network.

        Returns a GitCheckoutResult, or with `stream=True` a GitCheckoutStream of progress events.
        The sandbox's policy must let it reach the repository's host (GIT_NETWORK_ERROR says so otherwise).
        """
        settings = self._manager.settings
        source = git.parse_url(repo_url, settings.git_schemes)
        branch = git.check_branch(branch) if branch is not None else None
        depth = git.check_depth(depth) if depth is not None else None
        target = self._path(target_dir if target_dir is not None else f"{DEFAULT_CWD}/{source.name}")
        policy = self._current_record().network
        context = {"repoUrl": source.display, "branch": branch, "targetDir": target}
        if not self._manager.networks.reaches(policy, source.host, source.port):
            raise GitError(
                f"sandbox {self.name!r} cannot reach {source.host}:{source.port} (network {policy.mode!r}); git runs inside the sandbox, "
                f"so it needs egress to the repository's host: sb.set_network({{'allow': ['{source.host}:{source.port}']}}) "
                "or add that entry to its allowlist",
                code="GIT_NETWORK_ERROR",
                context={**context, "host": source.host, "port": source.port, "network": policy.mode},
            )
        existed = self.exists(target)
        if existed and self._occupied(target):
            raise FileSystemError(f"git checkout target {target} exists and is not an empty folder", code="FILE_EXISTS", context=context)
        argv, env = git.clone_command(source, target, branch=branch, depth=depth, submodules=submodules, progress=stream,
                                      schemes=settings.git_schemes)
        run = self.exec(argv[0], argv[1:], stream=True, env=env, cwd="/", timeout=timeout)
        checkout = GitCheckoutStream(self._checkout_events(run, source, target, existed, branch, env, context), run.cancel)
        if stream:
            return checkout
        for _ in checkout:
            pass
        if checkout.result is None:
            raise SandboxError("git checkout ended without a result")
        return checkout.result

    def _occupied(self, target: str) -> bool:
        try:
            return bool(self.list_files(target, include_hidden=True))
        except FileSystemError:
            return True  # a file, or something that is not a folder

    def _checkout_events(self, run: ExecStream, source: git.GitSource, target: str, existed: bool, branch: str | None,
                         env: dict[str, str], context: dict[str, Any]) -> Iterator[GitCheckoutEvent]:
        started = time.monotonic()
        reader, stderr = git.ProgressReader(), []
        try:
            for event in run:
                if event.type == "stderr":
                    stderr.append(event.data)
                    yield from reader.feed(event.data)
        finally:
            run.close()  # a consumer that stops early ends the clone
        yield from reader.feed("", final=True)
        result = run.result
        if result is None or not result.success:
            # what a killed clone left (git cleans up after its own failures); a folder that was there stays, empty
            self.exec("find", [target, "-mindepth", "1", "-delete"] if existed else [target, "-delete"])
            text = "".join(stderr)
            if result is not None and result.reason == "timeout":
                raise GitError(f"git clone of {source.display} timed out after {result.duration:.0f} s", code="GIT_NETWORK_ERROR", context=context)
            if result is not None and result.exit_code == 127:
                raise GitError("git is not installed in this sandbox's image", code="GIT_CLONE_FAILED", context=context)
            code = git.classify(text)
            raise error_from_git(code, git.failure_message(code, source, branch, text), {**context, "stderr": text[-2000:]})
        if branch is None:
            branch = self.exec("git", ["-C", target, "symbolic-ref", "--short", "-q", "HEAD"], env=env).stdout.strip()
        yield GitCheckoutEvent("complete", result=GitCheckoutResult(repo_url=source.display, branch=branch, target_dir=target,
                                                                    duration=time.monotonic() - started))

    # --- sessions: persistent shells ---

    def create_session(self, session_id: str | None = None, *, env: dict[str, str] | None = None, cwd: str | None = None,
                       command_timeout: float | None = None) -> ExecutionSession:
        """Start a persistent shell: `cd`, `export` and variables persist between its commands,
        which run one at a time. SESSION_ALREADY_EXISTS if the id is taken."""
        session = self.get_session("session-" + secrets.token_hex(8) if session_id is None else session_id, env=env, cwd=cwd, command_timeout=command_timeout)
        self._call({"op": "session_create", **session._defaults()})
        return session

    def get_session(self, session_id: str, *, env: dict[str, str] | None = None, cwd: str | None = None,
                    command_timeout: float | None = None) -> ExecutionSession:
        """A handle on session `session_id`; its shell starts, with these settings, at its first command if it has none yet."""
        check_session_id(session_id)
        workdir = self._path(cwd) if cwd is not None else DEFAULT_CWD
        return ExecutionSession(self, session_id, self._environment(env), workdir,
                                self._timeout(command_timeout) if command_timeout is not None else None)

    def list_sessions(self) -> list[str]:
        reply, _ = self._call({"op": "session_list"})
        return [str(s) for s in reply.get("sessions") or [] if isinstance(s, str)]

    def delete_session(self, session_id: str) -> None:
        """End a session's shell and everything it started; SESSION_NOT_FOUND if there is none."""
        self._call({"op": "session_delete", "id": check_session_id(session_id)})

    # --- background processes ---

    def start_process(self, command: str, *, process_id: str | None = None, env: dict[str, str] | None = None,
                      cwd: str | None = None, timeout: float | None = None) -> ProcessInfo:
        """Start `command` (a shell string) in the background; it never blocks other calls.

        Its output is kept (the last MiB) for `get_process_logs` and `stream_process_logs`;
        `timeout` (seconds) kills it, none by default. A running process keeps the sandbox awake.
        """
        return self._start_process(command, process_id, self._environment(env), cwd, timeout, None)

    def _start_process(self, command: str, process_id: str | None, env: dict[str, str], cwd: str | None,
                       timeout: float | None, session: str | None) -> ProcessInfo:
        if not isinstance(command, str) or not command.strip() or "\x00" in command:
            raise ValidationError("command must be a non-empty string without NUL bytes")
        process_id = check_process_id(process_id) if process_id is not None else "proc-" + secrets.token_hex(8)
        workdir = self._path(cwd) if cwd is not None else self.cwd
        request = {"op": "process_start", "id": process_id, "command": command, "env": {**env, "PWD": workdir}, "cwd": workdir,
                   "cwd_given": cwd is not None, "timeout": self._timeout(timeout) if timeout is not None else 0.0,
                   "log_limit": PROCESS_LOG_BYTES, "session": session}
        reply, _ = self._call(request)
        return _process_info(reply.get("process"))

    def list_processes(self, status: str | None = None) -> list[ProcessInfo]:
        """Background processes, running and finished (the most recent 256 finished ones), optionally of one status."""
        if status is not None and status not in PROCESS_STATUSES:
            raise ValidationError(f"unknown process status {status!r} (known: {', '.join(PROCESS_STATUSES)})")
        reply, _ = self._call({"op": "process_list"})
        items = [_process_info(raw) for raw in reply.get("processes") or []]
        return [p for p in items if status is None or p.status == status]

    def get_process(self, process_id: str) -> ProcessInfo:
        reply, _ = self._call({"op": "process_get", "id": check_process_id(process_id)})
        return _process_info(reply.get("process"))

    def kill_process(self, process_id: str) -> ProcessInfo:
        """Kill the process and its whole tree: SIGTERM, then SIGKILL for what is left after 5 s."""
        reply, _ = self._call({"op": "process_kill", "id": check_process_id(process_id)})
        return _process_info(reply.get("process"))

    def kill_all_processes(self) -> int:
        """Kill every running background process (each with its tree); returns how many there were."""
        reply, _ = self._call({"op": "process_kill_all"})
        return _number(reply, "count", int)

    def get_process_logs(self, process_id: str) -> ProcessLogs:
        reply, data = self._call({"op": "process_logs", "id": check_process_id(process_id)}, max_payload=4 * PROCESS_LOG_BYTES)
        split = min(max(_number(reply, "stdout_bytes", int), 0), len(data))
        return ProcessLogs(process_id=process_id, stdout=data[:split].decode("utf-8", "replace"),
                           stderr=data[split:].decode("utf-8", "replace"))

    def stream_process_logs(self, process_id: str) -> Stream[ProcessEvent]:
        """Output as it comes, what was written before replayed first, then one `exit` event."""
        request = {"op": "process_stream", "id": check_process_id(process_id)}
        cancel = Cancel()
        frames = self._manager.client(self.name).exchange(request, max_payload=1 << 20, timeout=None, cancel=cancel)

        def generate() -> Iterator[ProcessEvent]:
            decoders = {1: codecs.getincrementaldecoder("utf-8")("replace"), 2: codecs.getincrementaldecoder("utf-8")("replace")}
            for reply, chunk in frames:
                kind = reply.get("ev")
                if kind == "out" and reply.get("fd") in (1, 2):
                    text = decoders[reply["fd"]].decode(chunk)
                    if text:
                        yield ProcessEvent("stdout" if reply["fd"] == 1 else "stderr", data=text)
                elif kind == "exit":
                    yield ProcessEvent("exit", process=_process_info(reply.get("process")))

        return Stream(generate(), cancel)

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


class ExecutionSession(Sandbox):
    """A persistent shell in a sandbox, after Cloudflare's ExecutionSession.

    `cd`, `export` and shell variables persist between its commands, which run one at a
    time in order; relative paths resolve against the shell's current folder. A command
    that ends the shell (`exit 3`) raises SESSION_TERMINATED; the next one gets a fresh shell.
    Files, sessions and processes are the sandbox's own, shared with every session.
    """

    def __init__(self, sandbox: Sandbox, session_id: str, env: dict[str, str], cwd: str, command_timeout: float | None):
        super().__init__(sandbox._manager, sandbox._record, cwd)
        self.id = session_id
        self.env = env
        self.command_timeout = command_timeout

    def __repr__(self) -> str:
        return f"ExecutionSession({self.name!r}, id={self.id!r})"

    def _defaults(self) -> dict[str, Any]:
        return {"id": self.id, "env": {**self.env, "PWD": self.cwd}, "cwd": self.cwd}

    def _path(self, path: str) -> str:
        if isinstance(path, str) and path.startswith("/"):
            return resolve_path(path, self.cwd)
        reply, _ = self._call({"op": "session_cwd", "id": self.id})
        current = reply.get("cwd")
        return resolve_path(path, current if isinstance(current, str) and current.startswith("/") else self.cwd)

    def exec(self, command: str, args: list[str] | None = None, *, stream: bool = False, env: dict[str, str] | None = None,
             cwd: str | None = None, timeout: float | None = None, stdin: str | bytes | None = None) -> Any:
        """Run a command in this shell, after its earlier ones. `env` and `cwd` apply to this command only."""
        if stdin is not None:
            raise ValidationError("a session command reads no stdin; use Sandbox.exec for that")
        if not isinstance(command, str) or not command.strip() or "\x00" in command:
            raise ValidationError("command must be a non-empty string without NUL bytes")
        if args is not None:
            if not isinstance(args, (list, tuple)) or not all(isinstance(a, str) and "\x00" not in a for a in args):
                raise ValidationError("args must be a list of strings without NUL bytes")
            text = shlex.join([command, *args])
        else:
            text = command
        extra = self._environment(env, base={}) if env else {}
        request = {"op": "session_exec", **{"id": self.id}, "command": text, "env": extra,
                   "cwd": self._path(cwd) if cwd is not None else None,
                   "timeout": self._timeout(timeout if timeout is not None else self.command_timeout),
                   "output_limit": self._record.limits.output_bytes, "defaults": self._defaults()}
        return self._run_exec(request, b"", command, args, stream)

    def start_process(self, command: str, *, process_id: str | None = None, env: dict[str, str] | None = None,
                      cwd: str | None = None, timeout: float | None = None) -> ProcessInfo:
        """A background process started in this session's current folder, with its environment."""
        return self._start_process(command, process_id, self._environment(env, base=self.env), cwd, timeout, self.id)


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
            return _aiter_in_thread(await self._run(self.sync.exec, command, args, stream=True, **options))
        return await self._run(self.sync.exec, command, args, **options)

    async def create_session(self, session_id: str | None = None, **options: Any) -> AsyncSandbox:
        return AsyncSandbox(await self._run(self.sync.create_session, session_id, **options))

    def get_session(self, session_id: str, **options: Any) -> AsyncSandbox:
        return AsyncSandbox(self.sync.get_session(session_id, **options))

    async def git_checkout(self, repo_url: str, *, stream: bool = False, **options: Any) -> Any:
        """A GitCheckoutResult, or with `stream=True` an async iterator of GitCheckoutEvents."""
        if stream:
            return _aiter_in_thread(await self._run(self.sync.git_checkout, repo_url, stream=True, **options))
        return await self._run(self.sync.git_checkout, repo_url, **options)

    @property
    def network(self) -> NetworkPolicy:
        return self.sync.network

    async def set_network(self, network: str | dict[str, Any] | NetworkPolicy) -> NetworkPolicy:
        return await self._run(self.sync.set_network, network)

    async def expose_port(self, port: int) -> ExposedPort:
        return await self._run(self.sync.expose_port, port)

    async def unexpose_port(self, port: int) -> None:
        await self._run(self.sync.unexpose_port, port)

    async def exposed_ports(self) -> list[ExposedPort]:
        return await self._run(self.sync.exposed_ports)

    async def list_sessions(self) -> list[str]:
        return await self._run(self.sync.list_sessions)

    async def delete_session(self, session_id: str) -> None:
        await self._run(self.sync.delete_session, session_id)

    async def start_process(self, command: str, **options: Any) -> ProcessInfo:
        return await self._run(self.sync.start_process, command, **options)

    async def list_processes(self, status: str | None = None) -> list[ProcessInfo]:
        return await self._run(self.sync.list_processes, status)

    async def get_process(self, process_id: str) -> ProcessInfo:
        return await self._run(self.sync.get_process, process_id)

    async def kill_process(self, process_id: str) -> ProcessInfo:
        return await self._run(self.sync.kill_process, process_id)

    async def kill_all_processes(self) -> int:
        return await self._run(self.sync.kill_all_processes)

    async def get_process_logs(self, process_id: str) -> ProcessLogs:
        return await self._run(self.sync.get_process_logs, process_id)

    async def stream_process_logs(self, process_id: str) -> AsyncIterator[ProcessEvent]:
        return _aiter_in_thread(await self._run(self.sync.stream_process_logs, process_id))

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


def error_from_git(code: str, message: str, context: dict[str, Any]) -> IsolateError:
    if code == "FILE_EXISTS":
        return FileSystemError(message, code=code, context=context)
    return GitError(message, code=code, context=context)


async def _aiter_in_thread(stream: Stream[T]) -> AsyncIterator[T]:
    """Iterate a blocking stream from asyncio. If the consumer stops while a thread waits
    on the agent, the stream is cancelled (its socket shut down), so the thread ends too."""
    done = object()
    waiting = False
    try:
        while True:
            waiting = True
            item = await asyncio.to_thread(next, stream, done)
            waiting = False
            if item is done:
                return
            yield item  # type: ignore[misc]
    finally:
        if waiting:
            stream.cancel()
        else:
            stream.close()
