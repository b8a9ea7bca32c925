"""The Sandbox API over HTTP: code written against `get_sandbox` moves to a remote worker by one line.

    from isolate.client import get_sandbox          # instead of: from isolate import get_sandbox
    sb = get_sandbox("my-sandbox", url="http://127.0.0.1:8080", token="...")  # or ISOLATE_URL / ISOLATE_TOKEN

Results, events and errors are the embedded API's own types. `url` may be `unix:/path`.
For asyncio, wrap it: `AsyncSandbox(get_sandbox(...))` (from isolate) gives the same async API.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx

from .errors import IsolateError, ValidationError, error_from_code
from .net.policy import NetworkPolicy
from .types import (
    ExecEvent,
    ExecResult,
    ExposedPort,
    FileEntry,
    GitCheckoutEvent,
    GitCheckoutResult,
    ProcessEvent,
    ProcessInfo,
    ProcessLogs,
    ReadFileResult,
    ResourceUsage,
    SandboxInfo,
)


def get_sandbox(name: str, *, url: str | None = None, token: str | None = None, timeout: float = 600.0) -> RemoteSandbox:
    """The sandbox `name` on the worker at `url` (default ISOLATE_URL), created on first use."""
    url = url or os.environ.get("ISOLATE_URL")
    if not url:
        raise ValidationError("no worker URL: pass url= or set ISOLATE_URL")
    return RemoteSandbox(name, Connection(url, token if token is not None else os.environ.get("ISOLATE_TOKEN"), timeout))


class Connection:
    """One pooled HTTP client per worker."""

    def __init__(self, url: str, token: str | None, timeout: float):
        transport = httpx.HTTPTransport(uds=url[5:]) if url.startswith("unix:") else None
        self.http = httpx.Client(base_url="http://worker" if transport else url, transport=transport, timeout=timeout,
                                 headers={"X-Isolate-Token": token} if token else {})

    def close(self) -> None:
        self.http.close()


def _raise_for(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict) or not isinstance(body.get("code"), str):
        raise IsolateError(f"worker answered HTTP {response.status_code}", code="INTERNAL_ERROR")
    raise error_from_code(body["code"], str(body.get("message")), body.get("context") if isinstance(body.get("context"), dict) else None)


def _exec_result(body: dict[str, Any], stdout: str | None = None, stderr: str | None = None) -> ExecResult:
    usage = body.get("usage") or {}
    return ExecResult(
        command=body.get("command", ""), args=list(body.get("args") or []), exit_code=int(body.get("exitCode", 0)),
        stdout=body.get("stdout", "") if stdout is None else stdout, stderr=body.get("stderr", "") if stderr is None else stderr,
        reason=body.get("reason", "exited"), signal=body.get("signal"), duration=float(body.get("duration", 0)) / 1000,
        timestamp=body.get("timestamp", ""), truncated=bool(body.get("truncated")),
        usage=ResourceUsage(cpu_time=usage.get("cpuTime", 0.0), wall_time=usage.get("wallTime", 0.0), memory_peak=usage.get("memoryPeak", 0)),
    )


def _process(body: dict[str, Any]) -> ProcessInfo:
    return ProcessInfo(id=body["id"], pid=body["pid"], command=body["command"], status=body["status"], start_time=body["startTime"],
                       end_time=body.get("endTime"), exit_code=body.get("exitCode"))


class RemoteStream(Iterator[Any]):
    """Server-sent events turned into the embedded API's events; `cancel()` works from any thread."""

    def __init__(self, events: Iterator[Any], response: httpx.Response):
        self._events, self._response = events, response
        self._lock = threading.Lock()
        self.result: ExecResult | GitCheckoutResult | None = None

    def __iter__(self) -> RemoteStream:
        return self

    def __next__(self) -> Any:
        event = next(self._events)
        if isinstance(event, (ExecEvent, GitCheckoutEvent)) and event.result is not None:
            self.result = event.result
        return event

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._events.close()  # type: ignore[attr-defined]
        self._response.close()

    def cancel(self) -> None:
        with self._lock:
            self._response.close()


class RemoteSandbox:
    """The same methods as `isolate.Sandbox`, served by a worker."""

    def __init__(self, name: str, connection: Connection, session: str | None = None):
        self.name, self._connection, self.id = name, connection, session

    def __repr__(self) -> str:
        return f"RemoteSandbox({self.name!r}" + (f", session={self.id!r})" if self.id else ")")

    def _headers(self) -> dict[str, str]:
        headers = {"X-Sandbox-Id": self.name}
        if self.id:
            headers["X-Session-Id"] = self.id
        return headers

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, str] | None = None) -> dict[str, Any]:
        response = self._connection.http.request(method, path, json=body, params=params, headers=self._headers())
        _raise_for(response)
        return response.json()

    def _sse(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[Iterator[dict[str, Any]], httpx.Response]:
        request = self._connection.http.build_request(method, path, json=body, headers=self._headers())
        response = self._connection.http.send(request, stream=True)
        if response.status_code >= 400:
            response.read()
            response.close()
            _raise_for(response)

        def events() -> Iterator[dict[str, Any]]:
            try:
                for line in response.iter_lines():
                    if line.startswith("data: "):
                        yield json.loads(line[6:])
            finally:
                response.close()

        return events(), response

    # --- exec ---

    def exec(self, command: str, args: list[str] | None = None, *, stream: bool = False, env: dict[str, str] | None = None,
             cwd: str | None = None, timeout: float | None = None, stdin: str | None = None) -> Any:
        body: dict[str, Any] = {"command": command, "args": args, "env": env, "cwd": cwd, "stdin": stdin,
                                "timeoutMs": int(timeout * 1000) if timeout is not None else None}
        body = {k: v for k, v in body.items() if v is not None}
        if not stream:
            try:
                return _exec_result(self._request("POST", "/api/execute", body))
            except IsolateError as exc:
                if exc.code == "COMMAND_EXECUTION_ERROR" and isinstance(exc.context.get("result"), dict):
                    return _exec_result(exc.context["result"])  # a timeout: a result, as in the embedded API
                raise
        raw, response = self._sse("POST", "/api/execute/stream", body)

        def events() -> Iterator[ExecEvent]:
            collected: dict[str, list[str]] = {"stdout": [], "stderr": []}
            for event in raw:
                kind = event.get("type")
                if kind == "start":
                    yield ExecEvent("start", timestamp=event.get("timestamp", ""))
                elif kind in collected:
                    collected[kind].append(event.get("data", ""))
                    yield ExecEvent(kind, data=event.get("data", ""), timestamp=event.get("timestamp", ""))
                elif kind == "complete" or (kind == "error" and isinstance(event.get("result"), dict)):
                    summary = event if kind == "complete" else event["result"]
                    result = _exec_result(summary, "".join(collected["stdout"]), "".join(collected["stderr"]))
                    yield ExecEvent("complete", result=result, timestamp=summary.get("timestamp", ""))
                elif kind == "error":
                    raise error_from_code(str(event.get("code", "INTERNAL_ERROR")), str(event.get("error")))

        return RemoteStream(events(), response)

    # --- files ---

    def write_file(self, path: str, content: str | bytes, *, encoding: str | None = None) -> str:
        if isinstance(content, bytes):
            content, encoding = base64.b64encode(content).decode(), "base64"
        return self._request("POST", "/api/write", {"path": path, "content": content, "encoding": encoding})["path"]

    def read_file(self, path: str, *, encoding: str | None = None) -> ReadFileResult:
        body = self._request("POST", "/api/read", {"path": path, "encoding": "base64" if encoding == "bytes" else encoding})
        content: str | bytes = body["content"]
        if encoding == "bytes":
            content = base64.b64decode(body["content"])
        return ReadFileResult(path=body["path"], content=content, encoding=encoding if encoding == "bytes" else body["encoding"],
                              is_binary=body["isBinary"], mime_type=body["mimeType"], size=body["size"])

    def mkdir(self, path: str, *, recursive: bool = False) -> str:
        return self._request("POST", "/api/mkdir", {"path": path, "recursive": recursive})["path"]

    def delete_file(self, path: str) -> str:
        return self._request("POST", "/api/delete", {"path": path})["path"]

    def rename_file(self, old_path: str, new_path: str) -> str:
        return self._request("POST", "/api/rename", {"oldPath": old_path, "newPath": new_path})["newPath"]

    def move_file(self, source_path: str, destination_path: str) -> str:
        return self._request("POST", "/api/move", {"sourcePath": source_path, "destinationPath": destination_path})["newPath"]

    def exists(self, path: str) -> bool:
        return bool(self._request("POST", "/api/exists", {"path": path})["exists"])

    def list_files(self, path: str = ".", *, recursive: bool = False, include_hidden: bool = False) -> list[FileEntry]:
        body = self._request("POST", "/api/list-files", {"path": path, "options": {"recursive": recursive, "includeHidden": include_hidden}})
        return [FileEntry(name=f["name"], absolute_path=f["absolutePath"], relative_path=f["relativePath"], type=f["type"], size=f["size"],
                          modified_at=f["modifiedAt"], mode=f["mode"], readable=f["permissions"]["readable"],
                          writable=f["permissions"]["writable"], executable=f["permissions"]["executable"]) for f in body["files"]]

    def git_checkout(self, repo_url: str, branch: str | None = None, target_dir: str | None = None, depth: int | None = None,
                     timeout: float | None = None, *, stream: bool = False, submodules: bool = False) -> Any:
        body = {"repoUrl": repo_url, "branch": branch, "targetDir": target_dir, "depth": depth,
                "timeoutMs": int(timeout * 1000) if timeout is not None else None, "submodules": submodules or None}
        body = {k: v for k, v in body.items() if v is not None}
        started = time.monotonic()
        if not stream:
            reply = self._request("POST", "/api/git/checkout", body)
            return GitCheckoutResult(reply["repoUrl"], reply["branch"], reply["targetDir"], time.monotonic() - started)
        raw, response = self._sse("POST", "/api/git/checkout/stream", body)

        def events() -> Iterator[GitCheckoutEvent]:
            for event in raw:
                kind = event.get("type")
                if kind == "progress":
                    yield GitCheckoutEvent("progress", phase=event.get("phase", ""), percent=event.get("percent"), text=event.get("text", ""))
                elif kind == "complete":
                    result = GitCheckoutResult(event["repoUrl"], event["branch"], event["targetDir"], time.monotonic() - started)
                    yield GitCheckoutEvent("complete", result=result)
                elif kind == "error":
                    raise error_from_code(str(event.get("code", "INTERNAL_ERROR")), str(event.get("error")))

        return RemoteStream(events(), response)

    # --- network ---

    @property
    def network(self) -> NetworkPolicy:
        return NetworkPolicy.parse(self._request("GET", "/api/sandbox/network")["network"])

    def set_network(self, network: str | dict[str, Any] | NetworkPolicy) -> NetworkPolicy:
        value = network.to_dict() if isinstance(network, NetworkPolicy) else network
        return NetworkPolicy.parse(self._request("PUT", "/api/sandbox/network", {"network": value})["network"])

    def expose_port(self, port: int) -> ExposedPort:
        reply = self._request("POST", "/api/expose-port", {"port": port})
        return ExposedPort(port=reply["port"], host=reply["host"], url=reply["url"])

    def unexpose_port(self, port: int) -> None:
        self._request("DELETE", f"/api/exposed-ports/{port}")

    def exposed_ports(self) -> list[ExposedPort]:
        return [ExposedPort(port=p["port"], host=p["host"], url=p["url"]) for p in self._request("GET", "/api/exposed-ports")["ports"]]

    # --- sessions ---

    def create_session(self, session_id: str | None = None, *, env: dict[str, str] | None = None, cwd: str | None = None,
                       command_timeout: float | None = None) -> RemoteSandbox:
        body = {"id": session_id, "env": env, "cwd": cwd, "commandTimeoutMs": int(command_timeout * 1000) if command_timeout else None}
        reply = self._request("POST", "/api/session/create", {k: v for k, v in body.items() if v is not None})
        return RemoteSandbox(self.name, self._connection, reply["id"])

    def get_session(self, session_id: str) -> RemoteSandbox:
        return RemoteSandbox(self.name, self._connection, session_id)

    def list_sessions(self) -> list[str]:
        return list(self._request("GET", "/api/session/list")["data"])

    def delete_session(self, session_id: str) -> None:
        self._request("POST", "/api/session/delete", {"sessionId": session_id})

    # --- background processes ---

    def start_process(self, command: str, *, process_id: str | None = None, env: dict[str, str] | None = None, cwd: str | None = None,
                      timeout: float | None = None) -> ProcessInfo:
        body = {"command": command, "processId": process_id, "env": env, "cwd": cwd, "timeoutMs": int(timeout * 1000) if timeout else None}
        return _process(self._request("POST", "/api/process/start", {k: v for k, v in body.items() if v is not None})["process"])

    def list_processes(self, status: str | None = None) -> list[ProcessInfo]:
        body = self._request("GET", "/api/process/list", params={"status": status} if status else None)
        return [_process(p) for p in body["processes"]]

    def get_process(self, process_id: str) -> ProcessInfo:
        return _process(self._request("GET", f"/api/process/{process_id}")["process"])

    def kill_process(self, process_id: str) -> ProcessInfo:
        return _process(self._request("DELETE", f"/api/process/{process_id}")["process"])

    def kill_all_processes(self) -> int:
        return int(self._request("DELETE", "/api/process/kill-all")["cleanedCount"])

    def get_process_logs(self, process_id: str) -> ProcessLogs:
        body = self._request("GET", f"/api/process/{process_id}/logs")
        return ProcessLogs(process_id=process_id, stdout=body["stdout"], stderr=body["stderr"])

    def stream_process_logs(self, process_id: str) -> RemoteStream:
        raw, response = self._sse("GET", f"/api/process/{process_id}/stream")

        def events() -> Iterator[ProcessEvent]:
            for event in raw:
                kind = event.get("type")
                if kind in ("stdout", "stderr"):
                    yield ProcessEvent(kind, data=event.get("data", ""))
                elif kind == "exit":
                    yield ProcessEvent("exit", process=self.get_process(process_id))
                elif kind == "error":
                    raise error_from_code(str(event.get("code", "INTERNAL_ERROR")), str(event.get("error")))

        return RemoteStream(events(), response)

    # --- lifecycle ---

    def ping(self) -> str:
        return str(self._request("GET", "/api/ping")["message"])

    def info(self) -> SandboxInfo:
        body = self._request("GET", "/api/sandbox")
        return SandboxInfo(name=body["name"], backend=body["backend"], state=body["state"], created_at=body["createdAt"],
                           disk_bytes=body["diskBytes"], memory_bytes=body["memoryBytes"])

    def stop(self) -> None:
        self._request("POST", "/api/sandbox/stop")

    def destroy(self) -> None:
        self._request("DELETE", "/api/sandbox")
