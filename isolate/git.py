"""git checkout inside a sandbox: `git clone` runs in the sandbox itself, its failures mapped to stable codes.

Sandboxes have no network interface but `lo` unless one is given to them, so a remote
URL fails as a network error there; `file://` URLs of repositories inside the sandbox work.
"""

from __future__ import annotations

import posixpath
import re
from typing import TYPE_CHECKING

from .errors import GitError, ValidationError

if TYPE_CHECKING:
    from .sandbox import Sandbox

URL_PATTERN = re.compile(r"(?:https?|git|ssh|file)://[^\s]+|[A-Za-z0-9._-]+@[A-Za-z0-9.-]+:[^\s]+")
# (pattern in git's stderr, code), the first match wins
FAILURES = (
    (re.compile(r"Remote branch .* not found|couldn't find remote ref|Could not find remote branch", re.I), "GIT_BRANCH_NOT_FOUND"),
    (re.compile(r"Authentication failed|could not read Username|Permission denied \(publickey", re.I), "GIT_AUTH_FAILED"),
    (re.compile(r"not found|does not exist|does not appear to be a git repository|not a git repository", re.I), "GIT_REPOSITORY_NOT_FOUND"),
    (re.compile(r"Could not resolve host|unable to access|Network is unreachable|Connection (refused|timed out)|resolve", re.I),
     "GIT_NETWORK_ERROR"),
)


def repo_name(url: str) -> str:
    """The folder `git clone` would make: the URL's last component without `.git`."""
    tail = url.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
    name = tail[:-4] if tail.endswith(".git") else tail
    return name or "repository"


def checkout(sandbox: Sandbox, repo_url: str, *, branch: str | None = None, target_dir: str | None = None,
             depth: int | None = None, timeout: float | None = None) -> tuple[str, str]:
    """Clone `repo_url` into `target_dir` (default /workspace/<repo name>); returns (branch, target folder)."""
    if not isinstance(repo_url, str) or not URL_PATTERN.fullmatch(repo_url) or repo_url.startswith("-"):
        raise GitError(f"not a git URL: {str(repo_url)[:200]!r}", code="INVALID_GIT_URL")
    if depth is not None and (not isinstance(depth, int) or isinstance(depth, bool) or depth <= 0):
        raise ValidationError("depth must be a positive integer")
    if branch is not None and (not isinstance(branch, str) or not branch or branch.startswith("-") or "\x00" in branch):
        raise ValidationError("branch must be a non-empty name not starting with '-'")
    target = sandbox._path(target_dir if target_dir is not None else posixpath.join("/workspace", repo_name(repo_url)))
    argv = ["clone", "--quiet"]
    if branch:
        argv += ["--branch", branch]
    if depth:
        argv += ["--depth", str(depth)]
    argv += ["--", repo_url, target]
    result = sandbox.exec("git", argv, timeout=timeout, env={"GIT_TERMINAL_PROMPT": "0"})
    if result.reason == "timeout":
        raise GitError(f"git clone timed out: {repo_url}", code="GIT_CLONE_FAILED", context={"repoUrl": repo_url})
    if result.exit_code != 0:
        code = next((code for pattern, code in FAILURES if pattern.search(result.stderr)), "GIT_CLONE_FAILED")
        raise GitError(result.stderr.strip()[-2000:] or f"git clone failed with status {result.exit_code}", code=code,
                       context={"repoUrl": repo_url, "exitCode": result.exit_code})
    if not branch:
        head = sandbox.exec("git", ["-C", target, "rev-parse", "--abbrev-ref", "HEAD"])
        branch = head.stdout.strip() or "HEAD"
    return branch, target
