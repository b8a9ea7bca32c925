"""Request bodies of the API, after Cloudflare's container API; malformed ones become 400 VALIDATION_FAILED.

Unknown fields are ignored (the client sends some this worker has no use for, such as `origin`).
Fields marked "isolate" are this worker's additions; Cloudflare's client never sends them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Path = Field(min_length=1, max_length=4096)
PositiveMs = Field(default=None, gt=0, le=86_400_000)


class Body(BaseModel):
    model_config = ConfigDict(extra="ignore")
    sessionId: str | None = Field(default=None, max_length=128)


class ExecuteRequest(Body):
    command: str = Field(min_length=1, max_length=1 << 20)
    background: bool = False
    timeoutMs: int | None = PositiveMs
    env: dict[str, str] | None = None
    cwd: str | None = Field(default=None, min_length=1, max_length=4096)
    args: list[str] | None = Field(default=None, description="isolate: run `command` with these arguments, without a shell")
    stdin: str | None = Field(default=None, description="isolate: text fed to the command's stdin (not in a session)")


class SessionCreateRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | None = Field(default=None, max_length=128)
    env: dict[str, str] | None = None
    cwd: str | None = Field(default=None, min_length=1, max_length=4096)
    commandTimeoutMs: int | None = PositiveMs


class SessionDeleteRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    sessionId: str = Field(min_length=1, max_length=128)


class PathRequest(Body):
    path: str = Path


class ReadRequest(PathRequest):
    encoding: Literal["utf-8", "utf8", "base64"] | None = None


class WriteRequest(PathRequest):
    content: str
    encoding: Literal["utf-8", "utf8", "base64"] | None = None


class RenameRequest(Body):
    oldPath: str = Path
    newPath: str = Path


class MoveRequest(Body):
    sourcePath: str = Path
    destinationPath: str = Path


class MkdirRequest(PathRequest):
    recursive: bool = False


class ListOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    recursive: bool = False
    includeHidden: bool = False


class ListFilesRequest(PathRequest):
    options: ListOptions = Field(default_factory=ListOptions)


class GitCheckoutRequest(Body):
    repoUrl: str = Field(min_length=1, max_length=4096)
    branch: str | None = Field(default=None, min_length=1, max_length=255)
    targetDir: str | None = Field(default=None, min_length=1, max_length=4096)
    depth: int | None = Field(default=None, gt=0)
    timeoutMs: int | None = PositiveMs
    submodules: bool = Field(default=False, description="isolate: clone submodules too")


class NetworkRequest(BaseModel):
    """isolate: a sandbox's network policy: "none", "open" or {"allow": ["host", "host:port", "CIDR", ...]}."""

    model_config = ConfigDict(extra="ignore")
    network: str | dict[str, Any]


class ExposePortRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    port: int = Field(gt=0, lt=65536)
    name: str | None = Field(default=None, max_length=128)


class ProcessStartRequest(Body):
    command: str = Field(min_length=1, max_length=1 << 20)
    processId: str | None = Field(default=None, max_length=128)
    timeoutMs: int | None = PositiveMs
    env: dict[str, str] | None = None
    cwd: str | None = Field(default=None, min_length=1, max_length=4096)
    encoding: str | None = None
    autoCleanup: bool | None = None
