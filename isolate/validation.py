"""Checks on what callers hand in: sandbox names and paths. Pure string work, no file access."""

from __future__ import annotations

import posixpath
import re

from .errors import FileSystemError, InvalidNameError, ValidationError

NAME_PATTERN = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
MAX_PATH = 4096
MAX_COMPONENT_BYTES = 255


def check_name(name: object) -> str:
    """Cloudflare's rule for sandbox ids: 1-63 of [a-z0-9-], not starting or ending with '-'."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidNameError(
            f"invalid sandbox name {name!r}: use 1-63 lower-case letters, digits and '-', not at either end",
            context={"name": repr(name)[:100]},
        )
    return name


def resolve_path(path: object, cwd: str = "/workspace") -> str:
    """An absolute, normalized path inside the sandbox; relative paths start at `cwd`.

    `..` cannot climb above `/` here, and the agent resolves the result inside the
    sandbox's own root, so no input can name a host file.
    """
    if not isinstance(path, str) or not path:
        raise ValidationError("path must be a non-empty string", context={"path": repr(path)[:100]})
    if "\x00" in path:
        raise ValidationError("path contains a NUL byte", context={"path": repr(path)[:100]})
    if len(path) > MAX_PATH:
        raise ValidationError(f"path is longer than {MAX_PATH} characters", context={"length": len(path)})
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("path is not valid UTF-8", context={"path": repr(path)[:100]}) from None
    joined = posixpath.join(cwd, path)
    normal = posixpath.normpath(joined)
    if normal.startswith("//"):
        normal = "/" + normal.lstrip("/")
    for part in normal.split("/"):
        if len(part.encode()) > MAX_COMPONENT_BYTES:
            raise FileSystemError(f"file name too long: {part[:40]}...", code="NAME_TOO_LONG", context={"path": path[:200]})
    return normal


ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")


def _check_id(value: object, what: str) -> str:
    if not isinstance(value, str) or not ID_PATTERN.fullmatch(value):
        raise ValidationError(f"invalid {what} id {value!r}: use 1-128 letters, digits and '_.:-', starting with a letter or digit",
                              context={what + "Id": repr(value)[:100]})
    return value


def check_session_id(value: object) -> str:
    """Session ids travel in headers and bodies; they name a shell inside the sandbox."""
    return _check_id(value, "session")


def check_process_id(value: object) -> str:
    """Process ids appear in URL paths (/api/process/{id}), so they stay URL-safe."""
    return _check_id(value, "process")
