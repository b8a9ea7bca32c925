"""Starting a jail's supervisor in a mount namespace of its own, which holds the sandbox's disk.

What a jail needs mounted before its backend runs (the sandbox's disk image, nsjail's work
folder, gVisor's overlay root) must not appear in the host's mount namespace, and must go
away with the jail however it ends. A short-lived thread of this process does it with system
calls: it leaves the host's mount namespace (only that thread moves), attaches the disk image
to a loop device, makes the mounts and starts the supervisor from there. The mounts then
live exactly as long as the jail's processes do.

(Doing this with `unshare` and `mount -o loop` cost three program starts, and mount(8)
first looks at every loop device on the host, so it grew slower with every sandbox running.)

The supervisor begins as `isolate-enter` (enter.c, built once with the host's C compiler),
still root: a process can only be moved whole into a cgroup v2, so it moves itself into the
sandbox's cgroups, then drops to the sandbox's uid if asked, and runs the backend's command,
which is charged and limited from its first instruction. Where no compiler is, `sh` and
`setpriv` do the same in ~2.4 ms more of every start.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import os
import shutil
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import syscalls
from ..errors import HostError
from ..net import netns

ENTER_SOURCE = Path(__file__).with_name("enter.c")
JOIN_CGROUPS = r"""
count=$1
shift
while [ "$count" -gt 0 ]; do
  echo $$ > "$1" || exit 97
  shift
  count=$((count - 1))
done
exec "$@"
"""
LOOP_CTL_GET_FREE, LOOP_CONFIGURE = 0x4C82, 0x4C0A
LO_FLAGS_AUTOCLEAR = 4
# struct loop_config: fd, block_size, then struct loop_info64 (lo_flags at byte 52 of it), then reserved
LOOP_CONFIG_SIZE, LOOP_FLAGS_OFFSET = 304, 8 + 52
ATTACH_ATTEMPTS = 8  # another process may take the free device between asking and configuring it
JOIN_WITHIN = 10.0  # seconds a supervisor may take to join its cgroups (it is its first act)


@dataclass(frozen=True)
class Mount:
    source: str
    target: Path
    fstype: str
    data: str = ""
    flags: int = syscalls.MS_NOSUID | syscalls.MS_NODEV

    def make(self, source: str | None = None) -> None:
        syscalls.mount(source or self.source, self.target, self.fstype, self.flags, self.data or None)


@dataclass(frozen=True)
class Disk:
    """A disk image to mount through a loop device; `record` remembers which device serves it."""

    mount: Mount
    record: Path


def serving_loop_device(disk: Disk) -> str | None:
    """The loop device that still serves the image (a jail of it going away), if any: mounting
    that same device gives the same file system, never a second one on the same file. The
    device is the one recorded at the last start: a look at every loop device costs ~1 ms."""
    try:
        device = disk.record.read_text()
        with open(f"/sys/block/{Path(device).name}/loop/backing_file") as handle:
            return device if handle.read().rstrip("\n") == disk.mount.source else None
    except OSError:
        return None


def attach_loop_device(disk: Disk) -> tuple[str, int]:
    """A loop device now serving the disk's image, and an open descriptor that holds it until
    the mount does; the device detaches itself once nothing has it open or mounted (autoclear)."""
    existing = serving_loop_device(disk)
    if existing is not None:
        return existing, os.open(existing, os.O_RDWR | os.O_CLOEXEC)
    image = Path(disk.mount.source)
    backing = os.open(image, os.O_RDWR | os.O_CLOEXEC)
    try:
        config = bytearray(LOOP_CONFIG_SIZE)
        struct.pack_into("I", config, 0, backing)
        struct.pack_into("I", config, LOOP_FLAGS_OFFSET, LO_FLAGS_AUTOCLEAR)
        control = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
        try:
            for _ in range(ATTACH_ATTEMPTS):
                path = f"/dev/loop{fcntl.ioctl(control, LOOP_CTL_GET_FREE)}"
                device = os.open(path, os.O_RDWR | os.O_CLOEXEC)
                try:
                    fcntl.ioctl(device, LOOP_CONFIGURE, bytes(config))
                except OSError:
                    os.close(device)  # taken meanwhile: ask again
                    continue
                disk.record.write_text(path)
                return path, device
            raise HostError(f"no free loop device for {image}")
        finally:
            os.close(control)
    finally:
        os.close(backing)


def c_compiler() -> str | None:
    """The host's C compiler, which builds isolate-enter; None where there is none."""
    return shutil.which("cc") or shutil.which("gcc")


@functools.lru_cache(maxsize=4)
def enter_helper(libexec_dir: Path) -> Path | None:
    """isolate-enter, built from enter.c once per version of it; None where no C compiler is."""
    source = ENTER_SOURCE.read_bytes()
    target = libexec_dir / f"isolate-enter-{hashlib.sha256(source).hexdigest()[:12]}"
    if target.exists():
        return target
    compiler = c_compiler()
    if compiler is None:
        return None
    libexec_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{os.getpid()}")
    try:
        for static in (["-static"], []):  # static starts fastest; a host without libc.a gets it dynamic
            if subprocess.run([compiler, "-O2", *static, "-o", str(temp), str(ENTER_SOURCE)], capture_output=True).returncode == 0:
                temp.chmod(0o755)
                os.replace(temp, target)
                return target
        return None
    finally:
        temp.unlink(missing_ok=True)


def supervisor_argv(argv: list[str], uid: int | None, cgroup_procs: list[str], libexec_dir: Path) -> list[str]:
    """`argv` behind what joins the cgroups and, unless `uid` is None, drops to that uid."""
    helper = enter_helper(libexec_dir)
    if helper is not None:
        return [str(helper), str(len(cgroup_procs)), *cgroup_procs, "-" if uid is None else str(uid), *argv]
    drop = [] if uid is None else ["/usr/bin/setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]
    return ["/bin/sh", "-c", JOIN_CGROUPS, "isolate-supervisor", str(len(cgroup_procs)), *cgroup_procs, *drop, *argv]


def start_supervisor(argv: list[str], *, uid: int | None, cgroup_procs: list[str], disk: Disk | None, prepare: Callable[[], object],
                     netns_path: Path | None, pass_fds: tuple[int, ...], env: dict[str, str], stderr: int,
                     libexec_dir: Path, release: Callable[[], object] | None = None) -> subprocess.Popen[bytes]:
    """Start `argv` as the jail's supervisor: in its own mount namespace holding `disk` (a disk
    image, mounted through a loop device) and what `prepare` then makes there, inside
    `netns_path` if given, in the cgroups whose `cgroup.procs` files are listed, and as `uid`
    (None: as root).

    With `release`, the supervisor is started first and the mounts are made while it loads
    (in the namespace it shares with this thread); `release` then lets it go on (nsjail waits
    for its config on a pipe). Should the mounts fail, it is killed before it reads a thing."""
    outcome: list[subprocess.Popen[bytes] | BaseException] = []
    full_argv = supervisor_argv(argv, uid, cgroup_procs, libexec_dir)

    def mount() -> None:
        if disk is not None:
            path, device = attach_loop_device(disk)
            try:
                disk.mount.make(path)
            finally:
                os.close(device)
        prepare()

    def launch() -> None:
        try:
            syscalls.unshare(syscalls.CLONE_NEWNS)
            syscalls.mount("none", "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
            if release is None:
                mount()
            with netns.entered(netns_path) if netns_path else contextlib.nullcontext():
                process = subprocess.Popen(full_argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                                           pass_fds=pass_fds, start_new_session=True, env=env)
            if release is not None:
                try:
                    mount()
                    release()
                except BaseException:
                    process.kill()
                    process.wait()
                    raise
            outcome.append(process)
        except OSError as exc:
            outcome.append(HostError(f"cannot start the jail: {exc}"))
        except BaseException as exc:  # handed to the caller's thread
            outcome.append(exc)

    # a thread of its own: the mount namespace it leaves for is never the caller's
    thread = threading.Thread(target=launch, name="isolate-launch")
    thread.start()
    thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    wait_until_joined(outcome[0], cgroup_procs)
    return outcome[0]


def wait_until_joined(process: subprocess.Popen[bytes], cgroup_procs: list[str], within: float = JOIN_WITHIN) -> None:
    """Return once the supervisor is in its cgroups (the last one it joins lists it), or has
    ended: from then on the sandbox's pids include it (a live network change looks for it there,
    gVisor's bound counts sandboxes by them). Under nsjail it joined while the mounts were made."""
    if not cgroup_procs:
        return
    last, pid = Path(cgroup_procs[-1]), str(process.pid)
    deadline = time.monotonic() + within
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if pid in last.read_text().split():
                return
        except OSError:
            return  # the cgroup went away: the sandbox is being stopped
        time.sleep(0.001)
