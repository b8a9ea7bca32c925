"""Jail backends: what confines a sandbox's process tree. nsjail is the default; each backend
gets a JailSpec and starts the agent as the sandbox's long-lived main process."""

from __future__ import annotations

import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..cgroups import SandboxCgroup
from ..errors import ValidationError
from ..rootfs import RootfsPlan
from ..syscalls import MS_NOATIME, MS_NODEV, MS_NOSUID
from ..types import Limits
from .launch import Disk, Mount

AGENT_ENV = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}


@dataclass(frozen=True)
class JailSpec:
    name: str
    uid: int  # the host uid the sandbox's root maps to
    rootfs: RootfsPlan
    limits: Limits
    cgroup: SandboxCgroup
    run_dir: Path  # host-only folder for this sandbox's logs
    door_fd: int  # the agent's door (a bound datagram socket), inherited into the jail
    idle_timeout: float  # the agent ends the sandbox after this long without calls
    policy: str = "default"
    hostname: str = "sandbox"
    env: dict[str, str] = field(default_factory=dict)
    # The network namespace to run in (made by isolate.net, `lo` up; a path valid while `start` runs):
    # fork the jail from inside it (`net.netns.entered`, or `nsenter --net=`); make no namespace of its own.
    netns: Path | None = None
    # Host files bound read-only at a path inside (the sandbox's /etc/hosts and /etc/resolv.conf).
    files: tuple[tuple[str, str], ...] = ()


def disk_mount(spec: JailSpec) -> Disk | None:
    """The ext4 image that holds the sandbox's writable layer (when it has a disk quota), mounted
    where the rootfs plan expects it."""
    plan = spec.rootfs
    if plan.disk_image is None or plan.disk_mount is None:
        return None
    return Disk(Mount(str(plan.disk_image), plan.disk_mount, "ext4", flags=MS_NOSUID | MS_NODEV | MS_NOATIME), spec.run_dir / "loop")


class Backend(Protocol):
    name: str

    def check(self, policy_text: str) -> None:
        """Raise (before anything is made) if this host cannot run a sandbox with this seccomp policy."""

    def host_limits(self, limits: Limits) -> Limits:
        """The limits for the sandbox's host cgroup (a backend may need room for its own processes)."""

    def start(self, spec: JailSpec) -> int:
        """Start the jail detached from the caller; return the pid of its host-side supervisor."""

    def cleanup(self, run_dir: Path, sandbox_dir: Path) -> None:
        """Remove what the backend keeps beside the cgroup (called after its processes are gone)."""


BACKENDS = ("nsjail", "gvisor")


def log_tail(log: Path, lines: int = 5) -> str:
    """The last warnings of a jail's log (nsjail marks them [W]/[E]/[F]), else its last lines."""
    try:
        text = log.read_text(errors="replace").splitlines()
    except OSError:
        return "no log"
    marked = [line for line in text if line.startswith(("[W]", "[E]", "[F]"))]
    return "\n".join((marked or [line for line in text if line.strip()])[-lines:]) or "the jail exited without a message"


def reap_in_background(process: subprocess.Popen[bytes]) -> None:
    """The jail outlives calls but not necessarily this process; reap its supervisor if it ends first."""
    threading.Thread(target=process.wait, name=f"reap-{process.pid}", daemon=True).start()


def get_backend(name: str, libexec_dir: Path) -> Backend:
    if name == "nsjail":
        from .nsjail import NsjailBackend

        return NsjailBackend(libexec_dir)
    if name == "gvisor":
        from .gvisor import GvisorBackend

        return GvisorBackend(libexec_dir)
    raise ValidationError(f"unknown backend {name!r} (known: {', '.join(BACKENDS)})")
