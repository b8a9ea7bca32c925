"""git: hostile repository URLs and branch names (ext:: commands, file:// to host paths,
values starting with `-` that git would read as options) reach nothing outside the sandbox
and run nothing.

The cases go through `Sandbox.git_checkout` when the API has it, otherwise through git run
inside the sandbox the way an API would run it (`git clone -- URL`); nothing here names a
remote host, so nothing leaves the machine.
"""

from __future__ import annotations

from functools import partial

from ...errors import IsolateError
from ..battery import Audit, add

GROUP = "git"


def _checkout(audit: Audit, url: str, branch: str | None = None) -> str:
    """Check `url` out; "refused" when it failed and the marker it tries to create is nowhere inside."""
    sandbox = audit.sandbox(GROUP)
    marker = f"/tmp/{audit.canaries.marker}"
    if branch is not None:
        branch = branch.replace("MARKER", marker)
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


# name -> (URL, branch, what it attempts); MARKER is a path the injected command would create.
HOSTILE_CHECKOUTS = {
    "ext-transport": ("ext::sh -c touch% MARKER", None, "An `ext::` URL, which makes git run a command of the URL's choosing."),
    "ext-behind-a-config-argument": ("-c protocol.ext.allow=always ext::sh -c touch% MARKER", None,
                                     "An ext:: URL with git's protocol allowance turned on through an injected `-c` argument."),
    "file-url-to-host-path": ("file://{folder}", None, "A file:// URL naming the host's canary folder (a host path, absent inside)."),
    "plain-host-path": ("{folder}", None, "A bare host path as the URL."),
    "url-is-an-option": ("--upload-pack=touch MARKER", None,
                         "A URL starting with `-`: `--upload-pack=<command>` would run the command if read as an option."),
    "url-is-a-config-option": ("--config=core.sshCommand=touch MARKER", None,
                               "A URL that is git's `--config` option, setting core.sshCommand to a command."),
    "ssh-host-is-an-option": ("ssh://-oProxyCommand=touch${IFS}MARKER/repository", None,
                              "An ssh:// URL whose host is an ssh option running a command (`-oProxyCommand=...`)."),
    "branch-is-an-option": ("REPOSITORY", "--upload-pack=touch MARKER", "A valid repository, with a branch name that is an option running a command."),
}


def _hostile_checkout(audit: Audit, url: str, branch: str | None) -> str:
    url = url.replace("{folder}", str(audit.canaries.folder))
    if url == "REPOSITORY":
        url = "file://" + _local_repository(audit)
    return _checkout(audit, url, branch)


for _name, (_url, _branch, _doc) in HOSTILE_CHECKOUTS.items():
    add(GROUP, _name, "refused", partial(_hostile_checkout, url=_url, branch=_branch), _doc)
