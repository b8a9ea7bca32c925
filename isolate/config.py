"""Where isolate keeps its state, and the defaults a sandbox starts with."""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import syscalls
from .net.policy import system_resolver
from .types import Limits

DEFAULT_STATE_DIR = "/var/lib/isolate"
DEFAULT_IDLE_TIMEOUT = 600.0
# Each sandbox's root maps to one host uid of its own, taken from this range.
DEFAULT_UID_BASE = 1_500_000_000
UID_SLOTS = 100_000
# Sandbox addresses: one /30 each from this private pool (shared by every state folder on the host).
DEFAULT_NETWORK_POOL = "10.213.0.0/16"
DEFAULT_GIT_SCHEMES = ("https", "http", "git", "ssh")


@functools.lru_cache(maxsize=1)
def runtime_root() -> Path:
    """/run where it is a tmpfs (as under systemd), else /dev/shm; ISOLATE_RUNTIME_ROOT overrides."""
    chosen = os.environ.get("ISOLATE_RUNTIME_ROOT")
    if chosen:
        return Path(chosen)
    run_is_tmpfs = any(target == "/run" and kind == "tmpfs" for _, target, kind, _ in syscalls.mount_table())
    return Path("/run" if run_is_tmpfs else "/dev/shm")


@dataclass(frozen=True)
class Settings:
    state_dir: Path = field(default_factory=lambda: Path(os.environ.get("ISOLATE_STATE_DIR", DEFAULT_STATE_DIR)))
    idle_timeout: float = field(default_factory=lambda: float(os.environ.get("ISOLATE_IDLE_TIMEOUT", DEFAULT_IDLE_TIMEOUT)))
    limits: Limits = field(default_factory=Limits)
    backend: str = field(default_factory=lambda: os.environ.get("ISOLATE_BACKEND", "nsjail"))
    policy: str = "default"
    warm_pool: int = field(default_factory=lambda: int(os.environ.get("ISOLATE_WARM_POOL", "0")))
    # Tune the host's cgroup2 mount for frequent moves (`cgroups.favor_dynamic_moves`): -7 ms per sandbox start.
    favor_cgroup_moves: bool = field(default_factory=lambda: os.environ.get("ISOLATE_FAVOR_CGROUP_MOVES", "1") != "0")
    network_pool: str = field(default_factory=lambda: os.environ.get("ISOLATE_NETWORK_POOL", DEFAULT_NETWORK_POOL))
    # How allowlisted host names become addresses (the host's resolver by default; tests pass their own).
    resolver: Callable[[str], list[str]] = system_resolver
    # Name servers an "open" sandbox uses; None: the host's own (from /etc/resolv.conf, loopback ones left out).
    nameservers: tuple[str, ...] | None = None
    git_schemes: tuple[str, ...] = field(
        default_factory=lambda: tuple(os.environ.get("ISOLATE_GIT_SCHEMES", ",".join(DEFAULT_GIT_SCHEMES)).split(",")))

    @property
    def sandboxes_dir(self) -> Path:
        return self.state_dir / "sandboxes"

    @property
    def runtime_dir(self) -> Path:
        """What lives only while jails run (agent doors, pids, logs, locks, runsc's state): on a
        tmpfs, where the dozen files a start makes cost ~7 ms less than on disk, and which a
        reboot empties together with the jails. Named per state folder, like the cgroups."""
        return runtime_root() / "isolate" / self.instance

    @property
    def run_dir(self) -> Path:
        return self.runtime_dir / "run"

    @property
    def images_dir(self) -> Path:
        return self.state_dir / "images"

    @property
    def libexec_dir(self) -> Path:
        return self.state_dir / "libexec"

    @property
    def locks_dir(self) -> Path:
        return self.runtime_dir / "locks"

    @property
    def uids_dir(self) -> Path:
        return self.state_dir / "uids"

    @property
    def instance(self) -> str:
        """Names this state folder in host-wide places (cgroups, uids), so two state folders never collide."""
        if str(self.state_dir) == DEFAULT_STATE_DIR:
            return "isolate"
        return "isolate-" + hashlib.sha256(str(self.state_dir).encode()).hexdigest()[:10]

    @property
    def uid_base(self) -> int:
        if self.instance == "isolate":
            return DEFAULT_UID_BASE
        # other state folders (tests, side-by-side installs) get a uid window of their own
        return DEFAULT_UID_BASE + UID_SLOTS * (1 + int(self.instance.split("-")[1], 16) % 5000)
