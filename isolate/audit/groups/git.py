"""git: hostile repository URLs and branch names (ext:: commands, file:// to host paths,
values starting with `-` that git would read as options) reach nothing outside the sandbox
and run nothing.

The cases go through `Sandbox.git_checkout` when the API has it, otherwise through git run
inside the sandbox the way an API would run it (`git clone -- URL`); nothing here names a
remote host, so nothing leaves the machine.
"""

from __future__ import annotations

from ...errors import IsolateError
from ..battery import Audit, case

GROUP = "git"


def _checkout(audit: Audit, url: str, branch: str | None = None) -> str:
    """Check `url` out; "refused" when it failed and the marker it tries to create is nowhere inside."""
    sandbox = audit.sandbox(GROUP)
    marker = f"/tmp/{audit.canaries.marker}"
    if hasattr(sandbox, "git_checkout"):
        try:
            sandbox.git_checkout(url.replace("MARKER", marker), branch=branch, target_dir="/workspace/checkout")
            outcome = "checked out"
        except IsolateError:
            outcome = "refused"
    else:
        args = ["clone", "--quiet", *(["--branch", branch] if branch else []), "--", url.replace("MARKER", marker), "/workspace/checkout"]
        outcome = "refused" if audit.exec(sandbox, "git", args, timeout=20).exit_code != 0 else "checked out"
    if audit.exec(sandbox, "test", ["-e", marker]).exit_code == 0:
        audit.exec(sandbox, "rm", ["-rf", marker])
        return f"{outcome}, and the injected command ran (inside)"
    audit.exec(sandbox, "rm", ["-rf", "/workspace/checkout"])
    return outcome


def _local_repository(audit: Audit) -> str:
    """A real repository inside the sandbox, so a hostile branch name is the only thing wrong."""

    def make():
        sandbox = audit.sandbox(GROUP)
        audit.exec(sandbox, "git init -q -b main /workspace/repo && cd /workspace/repo && "
                            "git -c user.name=a -c user.email=a@b commit -q --allow-empty -m init")
        if _checkout(audit, "file:///workspace/repo", branch="main") != "checked out":  # the control: it is a real repository
            raise RuntimeError("a clone of the sandbox's own repository failed")
        return "/workspace/repo"

    return str(audit.memo("git-repository", make))


@case(GROUP, "ext-transport", "refused")
def ext_transport(audit: Audit) -> str:
    """An `ext::` URL, which makes git run a command of the URL's choosing."""
    return _checkout(audit, "ext::sh -c touch% MARKER")


@case(GROUP, "file-url-to-host-path", "refused")
def file_url_to_host_path(audit: Audit) -> str:
    """A file:// URL naming the host's canary folder (a host path, absent inside)."""
    return _checkout(audit, f"file://{audit.canaries.folder}")


@case(GROUP, "plain-host-path", "refused")
def plain_host_path(audit: Audit) -> str:
    """A bare host path as the URL."""
    return _checkout(audit, str(audit.canaries.folder))


@case(GROUP, "url-is-an-option", "refused")
def url_is_an_option(audit: Audit) -> str:
    """A URL starting with `-`: `--upload-pack=<command>` would run the command if read as an option."""
    return _checkout(audit, "--upload-pack=touch MARKER")


@case(GROUP, "url-is-a-config-option", "refused")
def url_is_a_config_option(audit: Audit) -> str:
    """A URL that is git's `--config` option, setting core.sshCommand to a command."""
    return _checkout(audit, "--config=core.sshCommand=touch MARKER")


@case(GROUP, "branch-is-an-option", "refused")
def branch_is_an_option(audit: Audit) -> str:
    """A valid repository, with a branch name that is an option running a command."""
    return _checkout(audit, "file://" + _local_repository(audit), branch="--upload-pack=touch MARKER")


@case(GROUP, "ext-behind-a-valid-path", "refused")
def ext_behind_valid_path(audit: Audit) -> str:
    """An ext:: URL with git's protocol allowance turned on through an injected `-c` argument."""
    return _checkout(audit, "-c protocol.ext.allow=always ext::sh -c touch% MARKER")


@case(GROUP, "ssh-host-is-an-option", "refused")
def ssh_host_is_an_option(audit: Audit) -> str:
    """An ssh:// URL whose host is an ssh option running a command (`-oProxyCommand=...`)."""
    return _checkout(audit, "ssh://-oProxyCommand=touch${IFS}MARKER/repository")
