"""Typed results and options, in the spirit of `subprocess.CompletedProcess`."""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

ExitReason = Literal["exited", "signaled", "timeout", "oom", "output_limit"]
EventType = Literal["start", "stdout", "stderr", "complete", "error"]
FileType = Literal["file", "directory", "symlink", "other"]
ProcessStatus = Literal["starting", "running", "completed", "failed", "killed", "error"]
PROCESS_STATUSES = ("starting", "running", "completed", "failed", "killed", "error")

MiB = 1024 * 1024


def now_iso() -> str:
    """UTC time as ISO-8601 with milliseconds and a Z, as Cloudflare's API writes timestamps."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Limits:
    """Per-sandbox resource limits. nsjail's own defaults (1 MiB files, 32 fds) are far too small."""

    memory_mb: int = 512
    pids: int = 256
    cpu_percent: int = 100  # of one core
    exec_timeout: float = 300.0  # seconds of wall time per exec
    output_bytes: int = 16 * MiB  # per stream per exec; excess is cut and the run ends as output_limit
    disk_mb: int | None = 2048  # None: no quota, the layer is a plain folder on the host's disk
    open_files: int = 1024
    file_size_mb: int = 1024

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Limits:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class ResourceUsage:
    cpu_time: float = 0.0  # user + system seconds
    wall_time: float = 0.0
    memory_peak: int = 0  # bytes, largest resident set of the process tree


@dataclass(frozen=True)
class ExecResult:
    command: str
    args: list[str]
    exit_code: int
    stdout: str
    stderr: str
    reason: ExitReason = "exited"
    signal: int | None = None
    duration: float = 0.0
    timestamp: str = ""
    usage: ResourceUsage = field(default_factory=ResourceUsage)
    truncated: bool = False

    @property
    def success(self) -> bool:
        return self.reason == "exited" and self.exit_code == 0


@dataclass(frozen=True)
class ExecEvent:
    """One event of a streamed exec: start, stdout/stderr chunks as they come, then complete."""

    type: EventType
    data: str = ""
    result: ExecResult | None = None  # set on `complete`
    timestamp: str = ""


@dataclass(frozen=True)
class ReadFileResult:
    path: str
    content: str | bytes
    encoding: Literal["utf-8", "base64", "bytes"]
    is_binary: bool
    mime_type: str
    size: int

    @property
    def data(self) -> bytes:
        """The file's raw bytes, whatever encoding `content` carries."""
        if isinstance(self.content, bytes):
            return self.content
        if self.encoding == "base64":
            return base64.b64decode(self.content)
        return self.content.encode()


@dataclass(frozen=True)
class FileEntry:
    name: str
    absolute_path: str
    relative_path: str
    type: FileType
    size: int
    modified_at: str
    mode: str
    readable: bool
    writable: bool
    executable: bool


@dataclass(frozen=True)
class SandboxInfo:
    name: str
    backend: str
    state: Literal["running", "stopped"]
    created_at: str
    disk_bytes: int
    memory_bytes: int


@dataclass(frozen=True)
class ExposedPort:
    """A port of a sandbox reachable from the host: `host`:`port` (a loopback address of the sandbox's own)."""

    port: int
    host: str
    url: str


@dataclass(frozen=True)
class GitCheckoutResult:
    repo_url: str  # credentials, if the URL carried any, are masked
    branch: str
    target_dir: str
    duration: float


@dataclass(frozen=True)
class GitCheckoutEvent:
    """A streamed checkout: `progress` lines as git prints them ("Receiving objects", 45), then `complete` with the result."""

    type: Literal["progress", "complete"]
    phase: str = ""
    percent: int | None = None
    text: str = ""
    result: GitCheckoutResult | None = None


@dataclass(frozen=True)
class ProcessInfo:
    """A background process started with `start_process`."""

    id: str
    pid: int
    command: str
    status: ProcessStatus
    start_time: str
    end_time: str | None = None
    exit_code: int | None = None


@dataclass(frozen=True)
class ProcessLogs:
    """What a background process wrote (its last MiB of output when it wrote more)."""

    process_id: str
    stdout: str
    stderr: str


@dataclass(frozen=True)
class ProcessEvent:
    """One event of `stream_process_logs`: output as it comes (earlier output replayed first), then `exit`."""

    type: Literal["stdout", "stderr", "exit"]
    data: str = ""
    process: ProcessInfo | None = None  # set on `exit`
