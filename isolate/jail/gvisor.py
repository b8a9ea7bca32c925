"""The gVisor backend: the same sandbox (overlay root, agent as PID 1, door, cgroups) under runsc.

How a sandbox starts:
1. `launch.start_supervisor` mounts the sandbox's disk image (when the layer has a quota)
   and the overlay root, the same writable layer as nsjail's (`userxattr`), at the sandbox's
   `root` folder, in a mount namespace of the jail's own: nothing is ever mounted in the
   host's namespace, and the kernel unmounts it all when runsc's processes end, however
   they end.
2. Its supervisor (`isolate-enter`, root) joins the sandbox's cgroups, so runsc's own
   processes (the Sentry, the gofer and the systrap stubs) are charged and limited (runsc
   is told to leave cgroups alone, `--ignore-cgroups`).
3. `runsc run --detach` boots the OCI bundle written here: the agent as PID 1, root
   inside mapped to the sandbox's own host uid (so files in the upper layer belong to it,
   as with nsjail), no capabilities, no_new_privs, rlimits, no network but loopback,
   the project's seccomp policy rendered for the Sentry, and runsc's own in-memory rootfs
   overlay turned off (`--overlay2=none`) so every write lands in the upper folder.
   The door comes in with `--pass-fd`, and so does a memory file with the agent's code.
   A host-wide bound limits how many gVisor sandboxes run at once (see `Slots`).

The host limits leave room for the Sentry: gVisor's own threads count against a host pids
limit (hitting it makes the Sentry panic) and its memory against the host memory limit
(hitting it ends the whole sandbox, which is then reported as an OOM). Inside, the sandbox's
pids limit is RLIMIT_NPROC, which the Sentry enforces for the sandbox's processes. gVisor
keeps no CPU quota of its own, so the host quota (with its burst, see `cgroups.cpu_quota_us`)
is the one CPU limit, shared with the Sentry.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from .. import kafel, policy, rootfs
from ..agent import agent_argv, agent_code_file
from ..errors import HostError, IsolateError, SandboxError
from ..rootfs import MOUNT_POINT
from ..types import Limits
from . import AGENT_ENV, JailSpec, disk_mount, log_tail
from .launch import Mount, start_supervisor
from .runsc import best_platform, cache_path, find_runsc

DOOR_FD, CODE_FD = 3, 4  # where the agent finds them inside
SENTRY_MEMORY_MB = 64  # the Sentry (~16 MiB idle), the gofer (~7 MiB) and their buffers, beside the sandbox's own memory
SENTRY_PIDS = 512  # host threads of the Sentry and gofer, plus one stub per sandbox process
SLOTS_DIR = Path("/run/isolate/gvisor-running")
MAX_VARIABLE, WAIT_VARIABLE = "ISOLATE_GVISOR_MAX", "ISOLATE_GVISOR_WAIT"
DEFAULT_WAIT = 30.0
START_TIMEOUT = 60.0


def default_max_sandboxes() -> int:
    """Each idle systrap sandbox costs 2-3 % of a CPU (measured): 8 per CPU keeps a host responsive."""
    return 8 * (os.cpu_count() or 1)


def container_id(name: str) -> str:
    """Fixed width, because runsc resolves ids by prefix (`sc1` would also match `sc10`)."""
    return "isolate-" + hashlib.sha256(name.encode()).hexdigest()[:24]


class Slots:
    """A host-wide bound on running gVisor sandboxes, counted from their cgroups.

    A gVisor sandbox being started registers its cgroup (a link in SLOTS_DIR); its slot is
    held while that cgroup has processes, so it is freed exactly when the sandbox's processes
    end, however they end, and nothing of the host reaches inside to hold it. Registration
    happens under a guard lock, kept until the new sandbox's supervisor is in its cgroup, so
    two processes starting sandboxes at the same moment cannot both take the last slot.
    """

    def __init__(self, folder: Path = SLOTS_DIR, limit: int | None = None, wait: float | None = None):
        self.folder = folder
        self.limit = limit if limit is not None else int(os.environ.get(MAX_VARIABLE, default_max_sandboxes()))
        self.wait = wait if wait is not None else float(os.environ.get(WAIT_VARIABLE, DEFAULT_WAIT))

    @contextlib.contextmanager
    def claim(self, cgroup_folder: Path) -> Iterator[None]:
        """Register the sandbox whose cgroup is `cgroup_folder`; the guard is held until the block ends
        (by then the sandbox must have a process in that cgroup). RESOURCE_BUSY after `wait` seconds."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        link = self.folder / hashlib.sha256(str(cgroup_folder).encode()).hexdigest()[:24]
        deadline = time.monotonic() + self.wait
        while True:
            with self._guard():
                live = self.holders(prune=True)
                if len(live) < self.limit:
                    link.unlink(missing_ok=True)
                    link.symlink_to(cgroup_folder)
                    yield
                    return
            if time.monotonic() >= deadline:
                raise IsolateError(f"{len(live)} gVisor sandboxes already run on this host, the bound ({MAX_VARIABLE}={self.limit}); "
                                   "stop one or raise the bound", code="RESOURCE_BUSY")
            time.sleep(0.1)

    def holders(self, *, prune: bool = False) -> list[Path]:
        """The cgroups of the registered sandboxes that have processes (with `prune`, the others are forgotten)."""
        live = []
        for link in self.folder.glob("*") if self.folder.is_dir() else ():
            if link.name == "guard":
                continue
            try:
                target = Path(os.readlink(link))
                running = bool((target / "cgroup.procs").read_text().split())
            except OSError:
                running = False
            if running:
                live.append(target)
            elif prune:
                link.unlink(missing_ok=True)
        return live

    def in_use(self) -> int:
        return len(self.holders())

    def forget_ended(self) -> None:
        """Drop the registrations of sandboxes whose processes ended (else the next claim would)."""
        if self.folder.is_dir():
            with self._guard():
                self.holders(prune=True)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        fd = os.open(self.folder / "guard", os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _in_image(spec: JailSpec, path: str) -> bool:
    relative = path.lstrip("/")
    return os.path.lexists(spec.rootfs.lower / relative) or os.path.lexists(spec.rootfs.upper / relative)


def _to_init(call: str) -> dict[str, object]:
    return {"names": [call], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM,
            "args": [{"index": 0, "value": 0xFFFFFFFF, "valueTwo": 1, "op": "SCMP_CMP_MASKED_EQ"}]}


# Linux lets nothing inside a pid namespace stop or kill its init (the agent) with a signal it does
# not handle; gVisor's kernel does (a command could freeze the agent with SIGSTOP). Signals aimed
# at pid 1 are refused in front of the policy's own rules. (A signal aimed at one of the agent's
# other threads by its thread id still reaches it: that sandbox stops answering, until stopped.)
PROTECT_INIT = [_to_init(call) for call in ("kill", "tgkill", "tkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo", "pidfd_open")]


@functools.lru_cache(maxsize=8)
def oci_seccomp(policy_text: str) -> kafel.Rendering:
    """The policy rendered for runsc, behind PROTECT_INIT (once per policy text: rendering costs milliseconds)."""
    rendering = kafel.to_oci(kafel.parse(policy_text))
    profile = {**rendering.profile, "syscalls": [*PROTECT_INIT, *rendering.profile["syscalls"]]}  # type: ignore[list-item]
    return kafel.Rendering(profile, rendering.skipped)


def _rlimit(kind: str, value: int) -> dict[str, object]:
    return {"type": kind, "hard": value, "soft": value}


def render_spec(spec: JailSpec, rootfs_dir: Path) -> dict[str, object]:
    """The OCI runtime config of a sandbox."""
    limits = spec.limits
    mounts: list[dict[str, object]] = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "nodev", "noexec"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "noexec", "mode=755", "size=1m"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "nodev", "mode=1777", "size=64m"]},
        # runsc mounts its own sysfs when none is named; named, it is at least read-only
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["ro", "nosuid", "nodev", "noexec"]},
        # named explicitly, or runsc puts a memory-backed tmpfs over /tmp: it stays in the upper layer, as with nsjail
        {"destination": "/tmp", "type": "bind", "source": str(rootfs_dir / "tmp"), "options": ["rbind", "rw", "nosuid", "nodev"]},
    ]
    mounts += [{"destination": folder, "type": "bind", "source": folder, "options": ["rbind", "ro", "nosuid", "nodev"]}
               for folder in spec.rootfs.read_only_binds]
    # like nsjail's `mandatory: false`: an image without the target file goes without (runsc could not make it)
    mounts += [{"destination": target, "type": "bind", "source": source, "options": ["bind", "ro", "nosuid", "nodev", "noexec"]}
               for source, target in spec.files if _in_image(spec, target)]
    no_capabilities: dict[str, list[str]] = {"bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []}
    return {
        "ociVersion": "1.0.2",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": agent_argv(DOOR_FD, spec.idle_timeout, CODE_FD),
            "env": [f"{key}={value}" for key, value in {**AGENT_ENV, **spec.env}.items()],
            "cwd": "/",
            "capabilities": no_capabilities,
            "noNewPrivileges": True,
            "rlimits": [
                _rlimit("RLIMIT_NOFILE", limits.open_files),
                _rlimit("RLIMIT_FSIZE", limits.file_size_mb * 1024 * 1024),
                _rlimit("RLIMIT_NPROC", limits.pids),
                _rlimit("RLIMIT_CORE", 0),
            ],
        },
        "root": {"path": str(rootfs_dir), "readonly": False},
        "hostname": spec.hostname,
        "mounts": mounts,
        "linux": {
            # with the sandbox's own network namespace (entered before runsc starts) the Sentry serves sockets
            # from it (--network=host): a "network" entry here would make runsc create an empty one instead
            "namespaces": [{"type": kind} for kind in ("pid", "ipc", "uts", "mount", "user", *(() if spec.netns else ("network",)))],
            "uidMappings": [{"containerID": 0, "hostID": spec.uid, "size": 1}],
            "gidMappings": [{"containerID": 0, "hostID": spec.uid, "size": 1}],
            "seccomp": oci_seccomp(policy.load(spec.policy)).profile,
        },
    }


class GvisorBackend:
    name = "gvisor"

    def __init__(self, libexec_dir: Path, slots: Slots | None = None):
        self.libexec_dir = libexec_dir
        self.slots = slots or Slots()

    def check(self, policy_text: str) -> None:
        """runsc must be there, and the policy must render for it (a PolicyError says why not)."""
        find_runsc()
        oci_seccomp(policy_text)

    def host_limits(self, limits: Limits) -> Limits:
        """The sandbox's limits plus gVisor's own share of memory and threads (see the module's docstring)."""
        return replace(limits, memory_mb=limits.memory_mb + SENTRY_MEMORY_MB, pids=limits.pids + SENTRY_PIDS)

    def start(self, spec: JailSpec) -> int:
        binary = find_runsc()
        platform = best_platform(cache_path(self.libexec_dir))
        plan = spec.rootfs
        state, bundle, rootfs_dir = spec.run_dir / "runsc", spec.run_dir / "bundle", plan.mount_point
        self._clear(spec.run_dir, plan.mount_point.parent)  # what a sandbox that ended left (runsc's record of it)
        bundle.mkdir(mode=0o700)
        rootfs_dir.mkdir(mode=0o755)
        (bundle / "config.json").write_text(json.dumps(render_spec(spec, rootfs_dir)))
        overlay = Mount("overlay", rootfs_dir, "overlay", f"lowerdir={plan.lower},upperdir={plan.upper},workdir={plan.work},userxattr")
        pid_file = spec.run_dir / "sentry.pid"
        runsc = [str(binary), f"--root={state}", f"--platform={platform}", f"--network={'host' if spec.netns else 'none'}",
                 "--overlay2=none", "--ignore-cgroups", "--oci-seccomp", "run", "--detach", f"--bundle={bundle}",
                 f"--pid-file={pid_file}", f"--pass-fd={spec.door_fd}:{DOOR_FD}"]
        code = agent_code_file()
        try:
            argv = [*runsc, f"--pass-fd={code}:{CODE_FD}", container_id(spec.name)]
            with self.slots.claim(spec.cgroup.folders[0]), open(spec.run_dir / "jail.log", "ab") as log:
                process = start_supervisor(argv, uid=None, cgroup_procs=spec.cgroup.procs_files(), disk=disk_mount(spec),
                                           prepare=lambda: (rootfs.hand_over(plan, spec.uid), overlay.make()), netns_path=spec.netns,
                                           pass_fds=(spec.door_fd, code), env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
                                           stderr=log.fileno(), libexec_dir=self.libexec_dir)
        finally:
            os.close(code)
        return self._sentry(process, pid_file, spec)

    @staticmethod
    def _sentry(process: subprocess.Popen[bytes], pid_file: Path, spec: JailSpec) -> int:
        """Wait for `runsc run --detach` (it returns once the agent is started: the wait costs the
        cold start nothing) and return the Sentry's pid, the process that stays in the sandbox's
        cgroup and network namespace while it runs (how live network changes find it)."""
        try:
            status = process.wait(timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            spec.cgroup.kill()
            process.wait()
            raise HostError(f"runsc did not start the sandbox within {START_TIMEOUT:.0f} s (see isolate doctor)") from None
        if status != 0:
            raise SandboxError(f"runsc could not start the sandbox: {log_tail(spec.run_dir / 'jail.log')}")
        return int(pid_file.read_text())

    def cleanup(self, run_dir: Path, sandbox_dir: Path) -> None:
        """What `_clear` removes, and the slot's registration (a start's claim forgets ended ones itself)."""
        self._clear(run_dir, sandbox_dir)
        self.slots.forget_ended()

    @staticmethod
    def _clear(run_dir: Path, sandbox_dir: Path) -> None:
        """runsc's state folder, the bundle and the root mount point; processes ended with the
        sandbox's cgroup, and the overlay with them (it was only mounted in their namespace).

        The mount point is only ever rmdir'ed, never walked: were the overlay somehow mounted
        there in this namespace, a recursive delete would erase the sandbox's files.
        """
        mount_point = sandbox_dir / MOUNT_POINT
        rootfs.unmount_under(sandbox_dir)
        for folder in (run_dir / "runsc", run_dir / "bundle"):
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(folder)
        with contextlib.suppress(FileNotFoundError):
            mount_point.rmdir()
