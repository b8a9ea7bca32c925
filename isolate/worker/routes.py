"""The API: Cloudflare's sandbox container routes, plus isolate's own under /api/sandbox."""

from __future__ import annotations

import asyncio
import base64
import codecs
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from .. import __version__
from ..errors import ExecError, IsolateError
from ..sandbox import AsyncSandbox, FileStream
from ..types import ExecResult, ExposedPort, FileEntry, GitCheckoutResult, ProcessInfo, now_iso
from . import models
from .metrics import CONTENT_TYPE
from .sandboxes import Sandboxes
from .sse import stream_response

router = APIRouter()
SSE_CHUNK = 65536


def ok(**fields: Any) -> dict[str, Any]:
    return {"success": True, **fields, "timestamp": now_iso()}


def sandboxes(request: Request) -> Sandboxes:
    return request.app.state.sandboxes


def seconds(ms: int | None) -> float | None:
    return ms / 1000 if ms is not None else None


def count_outcome(request: Request, outcome: str) -> None:
    request.app.state.metrics.exec_outcome(outcome)


# --- utility ---

@router.get("/api/ping")
async def ping(request: Request) -> dict[str, Any]:
    """The worker is up; with X-Sandbox-Id, that sandbox's agent answered too (it is started if need be)."""
    if request.headers.get("x-sandbox-id") is not None:
        await (await sandboxes(request).of(request)).ping()
    return ok(status="healthy", message="pong")


@router.get("/api/version")
async def version() -> dict[str, Any]:
    return ok(version=__version__)


# --- sessions ---

@router.post("/api/session/create")
async def session_create(body: models.SessionCreateRequest, request: Request) -> dict[str, Any]:
    sandbox = await sandboxes(request).of(request)
    session = await sandbox.create_session(body.id, env=body.env, cwd=body.cwd, command_timeout=seconds(body.commandTimeoutMs))
    data = {"id": session.sync.id, "sessionId": session.sync.id, "cwd": session.sync.cwd}  # type: ignore[attr-defined]
    return ok(data=data, id=data["id"], sessionId=data["id"])


@router.get("/api/session/list")
async def session_list(request: Request) -> dict[str, Any]:
    ids = await (await sandboxes(request).of(request)).list_sessions()
    return ok(data=ids, sessions=ids)


@router.post("/api/session/delete")
async def session_delete(body: models.SessionDeleteRequest, request: Request) -> dict[str, Any]:
    await (await sandboxes(request).of(request)).delete_session(body.sessionId)
    return ok(sessionId=body.sessionId)


# --- commands ---

def exec_body(result: ExecResult, session_id: str | None) -> dict[str, Any]:
    return {
        "success": result.success, "exitCode": result.exit_code, "stdout": result.stdout, "stderr": result.stderr,
        "command": result.command, "args": result.args, "duration": round(result.duration * 1000, 3), "timestamp": result.timestamp,
        "sessionId": session_id, "reason": result.reason, "signal": result.signal, "truncated": result.truncated,
        "usage": {"cpuTime": result.usage.cpu_time, "wallTime": result.usage.wall_time, "memoryPeak": result.usage.memory_peak},
    }


def timeout_error(result: ExecResult, session_id: str | None) -> ExecError:
    """Cloudflare reports a command's timeout as an error; the full result rides in its context."""
    return ExecError(f"Command timed out after {result.usage.wall_time:.3f}s: {result.command[:200]}",
                     context={"reason": "timeout", "result": exec_body(result, session_id)})


def exec_options(body: models.ExecuteRequest) -> dict[str, Any]:
    options: dict[str, Any] = {"env": body.env, "cwd": body.cwd, "timeout": seconds(body.timeoutMs)}
    if body.stdin is not None:
        options["stdin"] = body.stdin
    return options


@router.post("/api/execute")
async def execute(body: models.ExecuteRequest, request: Request) -> Any:
    target = await sandboxes(request).target(request, body.sessionId)
    session_id = getattr(target.sync, "id", None)
    if body.background:
        process = await target.start_process(body.command, env=body.env, cwd=body.cwd, timeout=seconds(body.timeoutMs))
        return ok(processId=process.id, pid=process.pid, command=process.command)
    try:
        result: ExecResult = await target.exec(body.command, body.args, **exec_options(body))
    except IsolateError:
        count_outcome(request, "error")
        raise
    count_outcome(request, result.reason)
    if result.reason == "timeout":
        raise timeout_error(result, session_id)
    return exec_body(result, session_id)


@router.post("/api/execute/stream")
async def execute_stream(body: models.ExecuteRequest, request: Request) -> Response:
    target = await sandboxes(request).target(request, body.sessionId)
    session_id = getattr(target.sync, "id", None)
    events = await target.exec(body.command, body.args, stream=True, **exec_options(body))
    try:
        await anext(events)  # the start: errors before it (bad cwd, ...) are plain HTTP errors
    except IsolateError:
        count_outcome(request, "error")
        raise

    async def sse() -> AsyncIterator[dict[str, Any]]:
        yield {"type": "start", "command": body.command, "timestamp": now_iso()}
        try:
            async for event in events:
                if event.type in ("stdout", "stderr"):
                    yield {"type": event.type, "data": event.data, "timestamp": event.timestamp}
                elif event.type == "complete" and event.result is not None:
                    result = event.result
                    count_outcome(request, result.reason)
                    if result.reason == "timeout":
                        error = timeout_error(result, session_id)
                        yield {"type": "error", "error": error.message, "data": error.message, "code": error.code, "result": exec_body(result, session_id)}
                    else:
                        summary = {k: v for k, v in exec_body(result, session_id).items() if k not in ("stdout", "stderr")}
                        yield {**summary, "type": "complete"}
        except IsolateError as exc:
            count_outcome(request, "error")
            yield {"type": "error", "error": exc.message, "data": exc.message, "code": exc.code}

    return stream_response(sse())


# --- files ---

@router.post("/api/read")
async def read(body: models.ReadRequest, request: Request) -> dict[str, Any]:
    target = await sandboxes(request).target(request, body.sessionId)
    encoding = "utf-8" if body.encoding == "utf8" else body.encoding
    result = await target.read_file(body.path, encoding=encoding)
    return ok(path=result.path, content=result.content, encoding=result.encoding, isBinary=result.is_binary,
              mimeType=result.mime_type, size=result.size)


async def pieces(stream: FileStream) -> AsyncIterator[bytes]:
    done = b""
    while True:
        piece = await asyncio.to_thread(next, stream, done)
        if not piece:
            return
        yield piece


@router.post("/api/read/stream")
async def read_stream(body: models.ReadRequest, request: Request) -> Response:
    target = await sandboxes(request).target(request, body.sessionId)
    stream: FileStream = await asyncio.to_thread(target.sync.read_file_stream, body.path)
    binary = stream.is_binary if body.encoding is None else body.encoding == "base64"

    async def sse() -> AsyncIterator[dict[str, Any]]:
        yield {"type": "metadata", "mimeType": stream.mime_type, "size": stream.size, "isBinary": binary,
               "encoding": "base64" if binary else "utf-8"}
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        total = 0
        try:
            async for piece in pieces(stream):
                total += len(piece)
                for start in range(0, len(piece), SSE_CHUNK):
                    part = piece[start:start + SSE_CHUNK]
                    data = base64.b64encode(part).decode() if binary else decoder.decode(part)
                    if data:
                        yield {"type": "chunk", "data": data}
            tail = "" if binary else decoder.decode(b"", final=True)
            if tail:
                yield {"type": "chunk", "data": tail}
            yield {"type": "complete", "bytesRead": total}
        except IsolateError as exc:
            yield {"type": "error", "error": exc.message, "code": exc.code}

    return stream_response(sse())


@router.post("/api/write")
async def write(body: models.WriteRequest, request: Request) -> dict[str, Any]:
    target = await sandboxes(request).target(request, body.sessionId)
    path = await target.write_file(body.path, body.content, encoding="base64" if body.encoding == "base64" else None)
    return ok(path=path)


@router.post("/api/delete")
async def delete(body: models.PathRequest, request: Request) -> dict[str, Any]:
    target = await sandboxes(request).target(request, body.sessionId)
    return ok(path=await target.delete_file(body.path))


@router.post("/api/rename")
async def rename(body: models.RenameRequest, request: Request) -> dict[str, Any]:
    target = await sandboxes(request).target(request, body.sessionId)
    new_path = await target.rename_file(body.oldPath, body.newPath)
    return ok(path=body.oldPath, newPath=new_path)


@router.post("/api/move")
async def move(body: models.MoveRequest, request: Request) -> dict[str, Any]:
    target = await sandboxes(request).target(request, body.sessionId)
    new_path = await target.move_file(body.sourcePath, body.destinationPath)
    return ok(path=body.sourcePath, newPath=new_path)


@router.post("/api/mkdir")
async def mkdir(body: models.MkdirRequest, request: Request) -> dict[str, Any]:
    target = await sandboxes(request).target(request, body.sessionId)
    return ok(path=await target.mkdir(body.path, recursive=body.recursive), recursive=body.recursive)


def file_body(entry: FileEntry) -> dict[str, Any]:
    return {"name": entry.name, "absolutePath": entry.absolute_path, "relativePath": entry.relative_path, "type": entry.type,
            "size": entry.size, "modifiedAt": entry.modified_at, "mode": entry.mode,
            "permissions": {"readable": entry.readable, "writable": entry.writable, "executable": entry.executable}}


@router.post("/api/list-files")
async def list_files(body: models.ListFilesRequest, request: Request) -> dict[str, Any]:
    target = await sandboxes(request).target(request, body.sessionId)
    entries = await target.list_files(body.path, recursive=body.options.recursive, include_hidden=body.options.includeHidden)
    files = [file_body(entry) for entry in entries]
    return ok(path=body.path, files=files, count=len(files))


@router.post("/api/exists")
async def exists(body: models.PathRequest, request: Request) -> dict[str, Any]:
    target = await sandboxes(request).target(request, body.sessionId)
    return ok(path=body.path, exists=await target.exists(body.path))


def checkout_options(body: models.GitCheckoutRequest) -> dict[str, Any]:
    return {"branch": body.branch, "target_dir": body.targetDir, "depth": body.depth, "timeout": seconds(body.timeoutMs),
            "submodules": body.submodules}


@router.post("/api/git/checkout")
async def git_checkout(body: models.GitCheckoutRequest, request: Request) -> dict[str, Any]:
    """git runs inside the sandbox, with its network: the sandbox's policy must let it reach the repository's host."""
    target = await sandboxes(request).target(request, body.sessionId)
    result: GitCheckoutResult = await target.git_checkout(body.repoUrl, **checkout_options(body))
    return ok(repoUrl=result.repo_url, branch=result.branch, targetDir=result.target_dir)


@router.post("/api/git/checkout/stream")
async def git_checkout_stream(body: models.GitCheckoutRequest, request: Request) -> Response:
    """isolate: the same, with git's progress as events: `progress` (phase, percent, text), then `complete` or `error`."""
    target = await sandboxes(request).target(request, body.sessionId)
    events = await target.git_checkout(body.repoUrl, stream=True, **checkout_options(body))  # a refused URL or policy: plain HTTP error

    async def sse() -> AsyncIterator[dict[str, Any]]:
        try:
            async for event in events:
                if event.result is not None:
                    result = event.result
                    yield {"type": "complete", "repoUrl": result.repo_url, "branch": result.branch, "targetDir": result.target_dir,
                           "timestamp": now_iso()}
                else:
                    yield {"type": "progress", "phase": event.phase, "percent": event.percent, "text": event.text, "timestamp": now_iso()}
        except IsolateError as exc:
            yield {"type": "error", "error": exc.message, "code": exc.code}

    return stream_response(sse())


# --- isolate's own: network policy and exposed ports ---

def exposed_body(port: ExposedPort, name: str | None = None) -> dict[str, Any]:
    return {"port": port.port, "url": port.url, "host": port.host, "name": name}


@router.get("/api/sandbox/network")
async def network_get(request: Request) -> dict[str, Any]:
    sandbox = await sandboxes(request).of(request)
    return ok(network=sandbox.network.to_dict())


@router.put("/api/sandbox/network")
async def network_set(body: models.NetworkRequest, request: Request) -> dict[str, Any]:
    """Applies live: nothing in the sandbox restarts."""
    sandbox = await sandboxes(request).of(request)
    return ok(network=(await sandbox.set_network(body.network)).to_dict())


@router.post("/api/expose-port")
async def expose_port(body: models.ExposePortRequest, request: Request) -> dict[str, Any]:
    """A service listening on `port` inside becomes reachable from this host at the returned loopback address."""
    exposed = await (await sandboxes(request).of(request)).expose_port(body.port)
    return ok(**exposed_body(exposed, body.name))


@router.get("/api/exposed-ports")
async def exposed_ports(request: Request) -> dict[str, Any]:
    ports = await (await sandboxes(request).of(request)).exposed_ports()
    return ok(ports=[exposed_body(port) for port in ports])


@router.delete("/api/exposed-ports/{port}")
async def unexpose_port(port: int, request: Request) -> dict[str, Any]:
    await (await sandboxes(request).of(request)).unexpose_port(port)
    return ok(port=port)


# --- background processes ---

def process_body(process: ProcessInfo) -> dict[str, Any]:
    return {"id": process.id, "pid": process.pid, "command": process.command, "status": process.status,
            "startTime": process.start_time, "endTime": process.end_time, "exitCode": process.exit_code}


@router.post("/api/process/start")
async def process_start(body: models.ProcessStartRequest, request: Request) -> dict[str, Any]:
    target = await sandboxes(request).target(request, body.sessionId)
    process = await target.start_process(body.command, process_id=body.processId, env=body.env, cwd=body.cwd,
                                         timeout=seconds(body.timeoutMs))
    return ok(processId=process.id, pid=process.pid, command=process.command, process=process_body(process))


@router.get("/api/process/list")
async def process_list(request: Request, status: str | None = None) -> dict[str, Any]:
    processes = await (await sandboxes(request).of(request)).list_processes(status)
    return ok(processes=[process_body(p) for p in processes])


@router.delete("/api/process/kill-all")
async def process_kill_all(request: Request) -> dict[str, Any]:
    return ok(cleanedCount=await (await sandboxes(request).of(request)).kill_all_processes())


@router.get("/api/process/{process_id}")
async def process_get(process_id: str, request: Request) -> dict[str, Any]:
    process = await (await sandboxes(request).of(request)).get_process(process_id)
    return ok(process=process_body(process))


@router.delete("/api/process/{process_id}")
async def process_kill(process_id: str, request: Request) -> dict[str, Any]:
    process = await (await sandboxes(request).of(request)).kill_process(process_id)
    return ok(processId=process_id, process=process_body(process))


@router.get("/api/process/{process_id}/logs")
async def process_logs(process_id: str, request: Request) -> dict[str, Any]:
    logs = await (await sandboxes(request).of(request)).get_process_logs(process_id)
    return ok(processId=process_id, stdout=logs.stdout, stderr=logs.stderr)


@router.get("/api/process/{process_id}/stream")
async def process_stream(process_id: str, request: Request) -> Response:
    sandbox: AsyncSandbox = await sandboxes(request).of(request)
    info = await sandbox.get_process(process_id)  # an unknown id is a plain 404
    events = await sandbox.stream_process_logs(process_id)

    async def sse() -> AsyncIterator[dict[str, Any]]:
        yield {"type": "process_info", "processId": info.id, "command": info.command, "status": info.status, "timestamp": now_iso()}
        try:
            async for event in events:
                if event.type == "exit" and event.process is not None:
                    yield {"type": "exit", "processId": info.id, "exitCode": event.process.exit_code, "status": event.process.status,
                           "timestamp": now_iso()}
                else:
                    yield {"type": event.type, "data": event.data, "processId": info.id, "timestamp": now_iso()}
        except IsolateError as exc:
            yield {"type": "error", "error": exc.message, "code": exc.code}

    return stream_response(sse())


# --- isolate's own: the sandbox itself ---

@router.get("/api/sandbox")
async def sandbox_info(request: Request) -> dict[str, Any]:
    info = await (await sandboxes(request).of(request)).info()
    return ok(name=info.name, backend=info.backend, state=info.state, createdAt=info.created_at, diskBytes=info.disk_bytes,
              memoryBytes=info.memory_bytes)


@router.post("/api/sandbox/stop")
async def sandbox_stop(request: Request) -> dict[str, Any]:
    sandbox = await sandboxes(request).of(request)
    await sandbox.stop()
    return ok(name=sandbox.name)


@router.delete("/api/sandbox")
async def sandbox_destroy(request: Request) -> dict[str, Any]:
    sandbox = await sandboxes(request).of(request)
    await sandbox.destroy()
    sandboxes(request).forget(sandbox.name)
    return ok(name=sandbox.name)


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    body = await asyncio.to_thread(request.app.state.metrics.render)
    return Response(body, media_type=CONTENT_TYPE)

