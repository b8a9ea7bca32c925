"""git: hostile repository URLs and branch names given to `Sandbox.git_checkout` (ext:: commands,
file:// and bare paths to host folders, remote helpers, values starting with `-` that git or ssh
would read as options) are refused, and nothing they would run runs, inside or out.

No URL here names a real host (`.invalid` never resolves), and a sandbox without egress is
refused before git starts, so nothing leaves the machine.
"""

from __future__ import annotations

from functools import partial

from ...errors import IsolateError
from ..battery import Audit, add

GROUP = "git"
# name -> (URL, branch, what it attempts); MARKER is a path the injected command would create.
HOSTILE_CHECKOUTS = {
    "ext-transport": ("ext::sh -c touch% MARKER", None, "An `ext::` URL, which makes git run a command of the URL's choosing."),
    "ext-behind-a-config-argument": ("-c protocol.ext.allow=always ext::sh -c touch% MARKER", None,
                                     "An ext:: URL with git's protocol allowance turned on through an injected `-c` argument."),
    "remote-helper": ("fd::3", None, "A remote-helper URL (`<transport>::<address>`), which runs a helper program."),
    "file-url-to-host-path": ("file://{folder}", None, "A file:// URL naming the host's canary folder."),
    "plain-host-path": ("{folder}", None, "A bare host path as the URL."),
    "url-is-an-option": ("--upload-pack=touch MARKER", None,
                         "A URL starting with `-`: `--upload-pack=<command>` would run the command if read as an option."),
    "url-is-a-config-option": ("--config=core.sshCommand=touch MARKER", None,
                               "A URL that is git's `--config` option, setting core.sshCommand to a command."),
    "ssh-host-is-an-option": ("ssh://-oProxyCommand=touch${IFS}MARKER/repository", None,
                              "An ssh:// URL whose host is an ssh option running a command (`-oProxyCommand=...`)."),
    "ssh-user-is-an-option": ("ssh://-oProxyCommand=touch${IFS}MARKER@git.invalid/repository", None,
                              "An ssh:// URL whose user is an ssh option running a command."),
    "scp-like-host-is-an-option": ("-oProxyCommand=touch${IFS}MARKER:repository", None, "An scp-like `host:path` whose host is an ssh option."),
    "branch-is-an-option": ("https://git.invalid/repository.git", "--upload-pack=touch MARKER",
                            "A well-formed URL, with a branch name that is an option running a command."),
    "branch-with-newline": ("https://git.invalid/repository.git", "main\n--upload-pack=touch MARKER",
                            "A branch name carrying a newline and an option after it."),
}


def _checkout(audit: Audit, url: str, branch: str | None) -> str:
    """"refused" when git_checkout refused and the marker its command would create is nowhere inside."""
    sandbox = audit.sandbox(GROUP)
    marker = f"/tmp/{audit.canaries.marker}"
    url = url.replace("{folder}", str(audit.canaries.folder)).replace("MARKER", marker)
    try:
        sandbox.git_checkout(url, branch=branch.replace("MARKER", marker) if branch else None, target_dir="/workspace/checkout")
        outcome = "checked out"
    except IsolateError:
        outcome = "refused"
    if audit.exec(sandbox, "test", ["-e", marker]).exit_code == 0:
        audit.exec(sandbox, "rm", ["-rf", marker])
        return f"{outcome}, and the injected command ran (inside)"
    return outcome


for _name, (_url, _branch, _doc) in HOSTILE_CHECKOUTS.items():
    add(GROUP, _name, "refused", partial(_checkout, url=_url, branch=_branch), _doc)
