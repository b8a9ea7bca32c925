"""One cgroup per sandbox: limits on memory, pids and CPU, OOM accounting, and a kill switch.

isolate creates and owns these cgroups itself (rather than letting nsjail make
`NSJAIL.<pid>` ones): they survive the jail, so OOM kills can be counted after the
fact, and nothing leaks when a jail is SIGKILLed. The jail's supervisor joins them
before it creates any namespace, so `/proc/self/cgroup` inside shows `/`.

Hosts come in two kinds: cgroup v1 controllers at /sys/fs/cgroup/<controller> (often
with an empty v2 hierarchy at /sys/fs/cgroup/unified, still useful for `cgroup.kill`),
or a pure v2 hierarchy at /sys/fs/cgroup.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import syscalls
from .errors import HostError
from .types import Limits

ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000


def is_v2_host(root: Path = ROOT) -> bool:
    return (root / "cgroup.controllers").exists()


def v2_mount_point(root: Path = ROOT) -> Path | None:
    """Where the host's cgroup v2 hierarchy is mounted: `root` itself, or `root/unified` beside v1."""
    for candidate in (root, root / "unified"):
        if (candidate / "cgroup.procs").exists():
            return candidate
    return None


def favors_dynamic_moves(root: Path = ROOT) -> bool:
    """Whether moving a process between cgroups is cheap on this host (cgroup2's `favordynmods`)."""
    point = v2_mount_point(root)
    if point is None:
        return False
    return any(target == str(point) and "favordynmods" in options for _, target, _, options in syscalls.mount_table())


def favor_dynamic_moves(root: Path = ROOT) -> bool:
    """Make moving a process into a cgroup cheap; returns whether it now is.

    Every sandbox start moves its supervisor into the sandbox's cgroups. After a quiet spell
    the kernel makes each such move wait for an RCU grace period: 7 ms measured here, a
    sixth of a cold start. The cgroup2 mount option `favordynmods` (Linux 6.0+) removes that
    wait for every hierarchy, v1 included, at the cost of slightly dearer fork and exit (not
    measurable here: `true` 0.87 ms either way). It stays until the host reboots.
    """
    point = v2_mount_point(root)
    if point is None or favors_dynamic_moves(root):
        return point is not None
    subprocess.run(["mount", "-o", "remount,favordynmods", str(point)], capture_output=True, check=False)
    return favors_dynamic_moves(root)


def cpu_quota_us(limits: Limits) -> int:
    """CPU time per period; the same again may be saved up from quiet periods and spent in a
    burst (Linux 5.14+), so the long-run average stays at the share while a short spike is not
    throttled to a stop for the rest of its period. (gVisor's systrap needs that: its threads
    spin while they wait, so a loop of short commands takes ~1.1 cores; held to exactly one,
    the whole sandbox was stopped in a quarter to two thirds of the periods, +1.2 ms per warm
    exec.)"""
    return CPU_PERIOD_US * limits.cpu_percent // 100


def _write(path: Path, value: str) -> None:
    with open(path, "w") as handle:
        handle.write(value)


def _read_counter(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except OSError:
        pass
    return 0


@dataclass(frozen=True)
class SandboxCgroup:
    """The cgroup folders of one sandbox, under a parent named after the isolate instance."""

    parent: str
    name: str
    root: Path = ROOT

    @property
    def v2(self) -> bool:
        return is_v2_host(self.root)

    @property
    def folders(self) -> list[Path]:
        """Every folder a process must join to be inside the sandbox's cgroups."""
        if self.v2:
            return [self.root / self.parent / self.name]
        folders = [self.root / c / self.parent / self.name for c in V1_CONTROLLERS]
        if self._unified.exists():
            folders.append(self._unified / self.parent / self.name)
        return folders

    @property
    def _unified(self) -> Path:
        return self.root / "unified"

    @property
    def _kill_folder(self) -> Path | None:
        """A v2 folder whose `cgroup.kill` ends every process in the sandbox at once."""
        if self.v2:
            return self.root / self.parent / self.name
        if self._unified.exists():
            return self._unified / self.parent / self.name
        return None

    def create(self, limits: Limits) -> None:
        try:
            if self.v2:
                self._create_v2(limits)
            else:
                self._create_v1(limits)
        except OSError as exc:
            raise HostError(f"cannot set up cgroups under {self.root}: {exc}") from exc

    def _create_v1(self, limits: Limits) -> None:
        for folder in self.folders:
            folder.mkdir(parents=True, exist_ok=True)
        memory = self.root / "memory" / self.parent / self.name
        _write(memory / "memory.limit_in_bytes", str(limits.memory_mb * 1024 * 1024))
        _write(self.root / "pids" / self.parent / self.name / "pids.max", str(limits.pids))
        cpu = self.root / "cpu" / self.parent / self.name
        _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        quota = str(cpu_quota_us(limits))
        _write(cpu / "cpu.cfs_quota_us", quota)
        if (cpu / "cpu.cfs_burst_us").exists():
            _write(cpu / "cpu.cfs_burst_us", quota)

    def _create_v2(self, limits: Limits) -> None:
        parent = self.root / self.parent
        parent.mkdir(exist_ok=True)
        wanted = {"memory", "pids", "cpu"}
        enabled = set((self.root / "cgroup.subtree_control").read_text().split())
        for controller in wanted - enabled:
            _write(self.root / "cgroup.subtree_control", "+" + controller)
        _write(parent / "cgroup.subtree_control", " ".join("+" + c for c in sorted(wanted)))
        folder = parent / self.name
        folder.mkdir(exist_ok=True)
        _write(folder / "memory.max", str(limits.memory_mb * 1024 * 1024))
        if (folder / "memory.swap.max").exists():
            _write(folder / "memory.swap.max", "0")
        _write(folder / "pids.max", str(limits.pids))
        quota = str(cpu_quota_us(limits))
        _write(folder / "cpu.max", f"{quota} {CPU_PERIOD_US}")
        if (folder / "cpu.max.burst").exists():
            _write(folder / "cpu.max.burst", quota)

    def procs_files(self) -> list[str]:
        return [str(folder / "cgroup.procs") for folder in self.folders]

    def oom_kills(self) -> int:
        if self.v2:
            return _read_counter(self.root / self.parent / self.name / "memory.events", "oom_kill")
        return _read_counter(self.root / "memory" / self.parent / self.name / "memory.oom_control", "oom_kill")

    def pss_bytes(self) -> int:
        """Proportional set size of every host process in the sandbox: what it costs the host,
        pages shared with other processes split between them (under gVisor: the Sentry, the
        gofer and systrap's stubs, which hold all of the sandbox's memory)."""
        import psutil

        total = 0
        for pid in self.pids():
            with contextlib.suppress(psutil.Error):
                total += psutil.Process(pid).memory_full_info().pss
        return total

    def pids(self) -> list[int]:
        found: set[int] = set()
        for folder in self.folders:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (folder / "cgroup.procs").read_text().split())
        return sorted(found)

    def kill(self, timeout: float = 5.0) -> None:
        """End every process in the sandbox; returns once none is left (or the timeout passed)."""
        kill_folder = self._kill_folder
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            if not pids:
                return
            if kill_folder is not None and (kill_folder / "cgroup.kill").exists():
                with contextlib.suppress(OSError):
                    _write(kill_folder / "cgroup.kill", "1")
            else:
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)

    def remove(self) -> None:
        self.kill()
        for folder in self.folders:
            for _ in range(100):
                try:
                    folder.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise
                    time.sleep(0.01)  # the last exiting task is still being torn down


def list_sandbox_cgroups(parent: str, root: Path = ROOT) -> list[str]:
    """Names of the sandbox cgroups that exist under `parent` (for crash clean-up)."""
    base = root / parent if is_v2_host(root) else root / "pids" / parent
    try:
        return sorted(p.name for p in base.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []


def remove_parent(parent: str, root: Path = ROOT) -> None:
    """Remove the instance's parent folders once no sandbox cgroup is left in them."""
    for folder in SandboxCgroup(parent, "any", root).folders:
        with contextlib.suppress(OSError):
            folder.parent.rmdir()
