"""Jail backends: what confines a sandbox's process tree. nsjail is the default; each backend
gets a JailSpec and starts the agent as the sandbox's long-lived main process."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..cgroups import SandboxCgroup
from ..errors import ValidationError
from ..rootfs import RootfsPlan
from ..types import Limits


@dataclass(frozen=True)
class JailSpec:
    name: str
    uid: int  # the host uid the sandbox's root maps to
    rootfs: RootfsPlan
    limits: Limits
    cgroup: SandboxCgroup
    run_dir: Path  # host-only folder for this sandbox's logs
    listen_fd: int  # the agent's listening socket, inherited into the jail
    agent_argv: list[str]
    policy: str = "default"
    hostname: str = "sandbox"
    env: dict[str, str] = field(default_factory=dict)
    # The network namespace to run in (made by isolate.net, `lo` up; a path valid while `start` runs):
    # fork the jail from inside it (`net.netns.entered`, or `nsenter --net=`); make no namespace of its own.
    netns: Path | None = None
    # Host files bound read-only at a path inside (the sandbox's /etc/hosts and /etc/resolv.conf).
    files: tuple[tuple[str, str], ...] = ()


class Backend(Protocol):
    name: str

    def start(self, spec: JailSpec) -> int:
        """Start the jail detached from the caller; return the pid of its host-side supervisor."""

    def cleanup(self, name: str, run_dir: Path) -> None:
        """Remove what the backend keeps beside the cgroup (called after its processes are gone)."""


def get_backend(name: str, libexec_dir: Path) -> Backend:
    if name == "nsjail":
        from .nsjail import NsjailBackend

        return NsjailBackend(libexec_dir)
    raise ValidationError(f"unknown backend {name!r} (known: nsjail)")
