"""One small error hierarchy; every error carries a stable code shared with the HTTP API.

The codes are those of Cloudflare's sandbox container API, so the worker can pass
them through unchanged and the real client maps them to its own error classes.
"""

from __future__ import annotations

from typing import Any

# code -> HTTP status; the single source of truth for both the library and the worker.
HTTP_STATUS: dict[str, int] = {
    "VALIDATION_FAILED": 400,
    "INVALID_NAME": 400,
    "IS_DIRECTORY": 400,
    "NOT_DIRECTORY": 400,
    "NAME_TOO_LONG": 400,
    "INVALID_GIT_URL": 400,
    "UNAUTHORIZED": 401,
    "GIT_AUTH_FAILED": 401,
    "PERMISSION_DENIED": 403,
    "READ_ONLY": 403,
    "FILE_NOT_FOUND": 404,
    "SANDBOX_NOT_FOUND": 404,
    "PROCESS_NOT_FOUND": 404,
    "SESSION_NOT_FOUND": 404,
    "GIT_REPOSITORY_NOT_FOUND": 404,
    "GIT_BRANCH_NOT_FOUND": 404,
    "FILE_EXISTS": 409,
    "SESSION_ALREADY_EXISTS": 409,
    "RESOURCE_BUSY": 409,
    "SESSION_TERMINATED": 410,
    "FILE_TOO_LARGE": 413,
    "COMMAND_EXECUTION_ERROR": 500,
    "FILESYSTEM_ERROR": 500,
    "NO_SPACE": 500,
    "GIT_CLONE_FAILED": 500,
    "INTERNAL_ERROR": 500,
    "SANDBOX_START_FAILED": 500,
    "HOST_NOT_READY": 500,
    "GIT_NETWORK_ERROR": 502,
}


class IsolateError(Exception):
    """Base of every error the library raises on purpose."""

    code = "INTERNAL_ERROR"

    def __init__(self, message: str, *, code: str | None = None, context: dict[str, Any] | None = None):
        super().__init__(message)
        if code is not None:
            self.code = code if code in HTTP_STATUS else "INTERNAL_ERROR"
        self.message = message
        self.context = context or {}

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.code]

    def to_dict(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "context": self.context, "httpStatus": self.http_status}

    def __reduce__(self):  # keep code and context across pickling (multiprocessing, to_thread)
        return (_rebuild, (type(self), self.message, self.code, self.context))


def _rebuild(cls: type[IsolateError], message: str, code: str, context: dict[str, Any]) -> IsolateError:
    return cls(message, code=code, context=context)


class ValidationError(IsolateError):
    """The caller's input is malformed; nothing was touched."""

    code = "VALIDATION_FAILED"


class InvalidNameError(ValidationError):
    code = "INVALID_NAME"


class FileSystemError(IsolateError):
    """A file operation inside the sandbox failed (see `code` for why)."""

    code = "FILESYSTEM_ERROR"


class ExecError(IsolateError):
    code = "COMMAND_EXECUTION_ERROR"


class ProcessNotFoundError(IsolateError):
    code = "PROCESS_NOT_FOUND"


class SessionError(IsolateError):
    code = "SESSION_NOT_FOUND"


class SandboxError(IsolateError):
    """The sandbox itself could not be created, started or reached."""

    code = "SANDBOX_START_FAILED"


class HostError(IsolateError):
    """The host lacks something the sandbox needs (run `isolate doctor`)."""

    code = "HOST_NOT_READY"


class GitError(IsolateError):
    code = "GIT_CLONE_FAILED"


# Codes a file operation inside the sandbox may report; anything else becomes FILESYSTEM_ERROR.
FILE_ERROR_CODES = frozenset(
    {
        "FILE_NOT_FOUND",
        "IS_DIRECTORY",
        "NOT_DIRECTORY",
        "FILE_EXISTS",
        "PERMISSION_DENIED",
        "READ_ONLY",
        "NO_SPACE",
        "NAME_TOO_LONG",
        "FILE_TOO_LARGE",
        "RESOURCE_BUSY",
        "VALIDATION_FAILED",
        "FILESYSTEM_ERROR",
    }
)


def error_from_code(code: str, message: str, context: dict[str, Any] | None = None) -> IsolateError:
    """Rebuild a typed error from a code received from the agent or the worker."""
    if code in FILE_ERROR_CODES:
        return FileSystemError(message, code=code, context=context)
    for cls in (ValidationError, InvalidNameError, ExecError, ProcessNotFoundError, SandboxError, HostError):
        if cls.code == code:
            return cls(message, context=context)
    if code.startswith("GIT_") or code == "INVALID_GIT_URL":
        return GitError(message, code=code, context=context)
    if code.startswith("SESSION_"):
        return SessionError(message, code=code, context=context)
    return IsolateError(message, code=code, context=context)
