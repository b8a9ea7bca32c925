"""git_checkout's host-side half: check the URL and branch, build a hardened `git clone`, read its verdict.

git itself runs inside the sandbox (its network namespace, its files, its uid), never on the
host. The URL is checked here first: only the configured schemes (https, http, git, ssh by
default) with a host, never `ext::`, `file://`, a local path or a remote-helper form, nothing
that starts with '-'; and it reaches git after `--`. The clone ignores every git config file
(the sandbox's included), runs no hook, no fsmonitor, no credential helper, follows no
submodule unless asked, never prompts, and git's own protocol allowlist repeats the schemes.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from .errors import GitError, ValidationError
from .types import GitCheckoutEvent

DEFAULT_PORTS = {"https": 443, "http": 80, "git": 9418, "ssh": 22}
MAX_URL = 2048
MAX_BRANCH = 255
MAX_DEPTH = 1 << 31
# Forbidden in a ref name by git-check-ref-format, plus anything that is not printable ASCII.
BAD_REF = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]|\.\.|@\{|//|/\.|\.lock(/|$)|^\.|^/|/$|\.$|^@$")
PROGRESS = re.compile(r"^(?:remote: )?([A-Za-z][A-Za-z ]+?):\s+(\d+)%")
HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class GitSource:
    """A checked repository URL, and what the sandbox must reach to clone it."""

    url: str
    scheme: str
    host: str
    port: int
    name: str  # the repository's name: the default target is /workspace/<name>

    @property
    def display(self) -> str:
        """The URL without any credentials it carries, for messages."""
        parts = urlsplit(self.url)
        if "@" not in parts.netloc:
            return self.url
        return parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()


def invalid(message: str, url: object) -> GitError:
    shown = url if isinstance(url, str) else repr(url)
    if isinstance(url, str) and "@" in url:
        shown = re.sub(r"//[^/@]*@", "//***@", url)
    return GitError(message, code="INVALID_GIT_URL", context={"repoUrl": shown[:200]})


def parse_url(url: object, schemes: tuple[str, ...]) -> GitSource:
    if not isinstance(url, str) or not url:
        raise invalid("repository URL must be a non-empty string", url)
    if len(url) > MAX_URL or not url.isascii() or not url.isprintable() or " " in url:
        raise invalid(f"repository URL must be printable ASCII without spaces, at most {MAX_URL} characters", url)
    if url.startswith("-"):
        raise invalid("repository URL must not start with '-'", url)
    scheme, sep, _ = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in schemes or "::" in url.split("://", 1)[0]:
        raise invalid(f"repository URL must start with one of {', '.join(s + '://' for s in schemes)} "
                      "(no ext::, file://, local paths or scp-like host:path)", url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise invalid(f"repository URL is malformed: {exc}", url) from None
    host = (parts.hostname or "").lower()
    if not host or host.startswith("-") or not (_is_ipv4(host) or all(HOST_LABEL.fullmatch(label) for label in host.split("."))):
        raise invalid("repository URL needs a host name or IPv4 address (IPv6 is not supported)", url)
    if parts.username is not None and parts.username.startswith("-"):
        raise invalid("repository URL user must not start with '-'", url)
    name = posixpath.basename(unquote(parts.path).rstrip("/")).removesuffix(".git")
    if not name or name in (".", "..") or name.startswith("-") or "\x00" in name:
        raise invalid("repository URL must name a repository (https://host/owner/name.git)", url)
    return GitSource(url=url, scheme=scheme, host=host, port=port or DEFAULT_PORTS[scheme], name=name)


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
        return True
    except ValueError:
        return False


def check_branch(branch: object) -> str:
    """A branch or tag name git would accept, and that cannot be read as an option."""
    if not isinstance(branch, str) or not branch or len(branch) > MAX_BRANCH or not branch.isascii():
        raise ValidationError(f"branch must be a non-empty ASCII string of at most {MAX_BRANCH} characters", context={"branch": repr(branch)[:100]})
    if branch.startswith("-") or BAD_REF.search(branch):
        raise ValidationError(f"not a valid branch name: {branch!r}", context={"branch": branch[:100]})
    return branch


def check_depth(depth: object) -> int:
    if not isinstance(depth, int) or isinstance(depth, bool) or not 0 < depth < MAX_DEPTH:
        raise ValidationError(f"depth must be a positive integer, not {depth!r}")
    return depth


def clone_command(source: GitSource, target: str, *, branch: str | None, depth: int | None, submodules: bool, progress: bool,
                  schemes: tuple[str, ...]) -> tuple[list[str], dict[str, str]]:
    """argv and environment of the hardened clone (run inside the sandbox)."""
    config = {
        "core.hooksPath": "/dev/null",
        "core.fsmonitor": "false",
        "credential.helper": "",
        "protocol.allow": "never",
        **{f"protocol.{scheme}.allow": "always" for scheme in schemes},
        "protocol.ext.allow": "never",
        "protocol.file.allow": "never",
        "submodule.recurse": "true" if submodules else "false",
    }
    argv = ["git"]
    for key, value in config.items():
        argv += ["-c", f"{key}={value}"]
    argv.append("clone")
    if progress:
        argv.append("--progress")
    if depth is not None:
        argv += ["--depth", str(depth)]
    if branch is not None:
        argv += ["--branch", branch]
    argv += ["--recurse-submodules", "--shallow-submodules"] if submodules and depth else ["--recurse-submodules"] if submodules else []
    argv += ["--", source.url, target]
    env = {
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "/bin/false",
        "SSH_ASKPASS": "/bin/false",
        "GIT_ALLOW_PROTOCOL": ":".join(schemes),
        "GIT_PROTOCOL_FROM_USER": "0",
        "GIT_SSH_COMMAND": "ssh -o BatchMode=yes -o StrictHostKeyChecking=accept-new",
        "LC_ALL": "C",
        "HOME": "/root",
    }
    return argv, env


# git's messages (LC_ALL=C) -> the shared API's codes; the first match wins.
VERDICTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("FILE_EXISTS", ("already exists and is not an empty directory",)),
    ("GIT_BRANCH_NOT_FOUND", ("remote branch", "could not find remote branch")),
    ("GIT_AUTH_FAILED", ("authentication failed", "could not read username", "could not read password", "permission denied (publickey",
                         "terminal prompts disabled", "the requested url returned error: 401", "the requested url returned error: 403",
                         "host key verification failed", "access denied:")),
    ("GIT_REPOSITORY_NOT_FOUND", ("repository not found", "not found", "does not appear to be a git repository",
                                  "access denied or repository not exported", "no such repository", "the requested url returned error: 404")),
    ("GIT_NETWORK_ERROR", ("could not resolve host", "unable to access", "connection refused", "connection timed out", "timed out",
                           "network is unreachable", "no route to host", "unable to connect", "unable to look up", "connection reset",
                           "the remote end hung up unexpectedly", "early eof", "ssl", "tls", "gnutls", "could not connect")),
)


def classify(stderr: str) -> str:
    """The API code for a failed clone, from git's own words."""
    text = stderr.lower()
    for code, needles in VERDICTS:
        if any(needle in text for needle in needles):
            return code
    return "GIT_CLONE_FAILED"


def failure_message(code: str, source: GitSource, branch: str | None, stderr: str) -> str:
    lines = [line.strip() for line in stderr.replace("\r", "\n").splitlines() if line.strip().lower().startswith(("fatal", "error", "warning"))]
    detail = lines[-1] if lines else (stderr.strip().splitlines() or ["git said nothing"])[-1]
    detail = detail.replace(source.url, source.display)
    what = {
        "FILE_EXISTS": "the target folder exists and is not empty",
        "GIT_BRANCH_NOT_FOUND": f"branch {branch!r} not found",
        "GIT_AUTH_FAILED": "authentication failed (no host credentials are ever used)",
        "GIT_REPOSITORY_NOT_FOUND": "repository not found",
        "GIT_NETWORK_ERROR": "network error",
    }.get(code, "clone failed")
    return f"git clone of {source.display}: {what}: {detail[:500]}"


class ProgressReader:
    """git's progress lines ("Receiving objects:  45% (450/1000)") out of its stderr, chunk by chunk."""

    def __init__(self) -> None:
        self._partial = ""

    def feed(self, text: str, *, final: bool = False) -> list[GitCheckoutEvent]:
        lines = (self._partial + text).replace("\r", "\n").split("\n")
        self._partial = "" if final else lines.pop()
        events = []
        for raw in lines:
            line = raw.strip()
            if line:
                match = PROGRESS.match(line)
                events.append(GitCheckoutEvent("progress", phase=match.group(1) if match else "message",
                                               percent=int(match.group(2)) if match else None, text=line))
        return events
