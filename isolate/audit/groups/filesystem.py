"""File-system escape: chroot tricks, /proc/*/root, leaked descriptors, handles, mounts,
device nodes, the agent's memory and binary, and what of the host the tree shows."""

from __future__ import annotations

import os
import stat
from functools import partial
from pathlib import Path

from .. import probes
from ..battery import Audit, add, case

GROUP = "filesystem"
NOT_WRITABLE = ("EROFS", "EACCES", "EPERM", "ENOENT")


def _errno(audit: Audit, statement: str, key: str = GROUP) -> str:
    return audit.python(audit.sandbox(key), probes.ERRNO_OF, statement).stdout.strip()


# Attempts that are one Python statement inside: name -> (expected errno, statement, what it attempts).
# "refused" stands for any errno that means the write never happened (EROFS, EACCES, EPERM, ENOENT).
ONE_STATEMENT = {
    "chroot-escape": ("EPERM", "fd = os.open('/', os.O_RDONLY); os.makedirs('/tmp/jail', exist_ok=True); os.chroot('/tmp/jail'); "
                               "os.fchdir(fd); [os.chdir('..') for _ in range(64)]; os.chroot('.')",
                      "The classic escape: chroot into a subfolder while keeping a descriptor of the old root."),
    "agent-descriptors-from-inside": ("EACCES", "[os.open('/proc/1/fd/' + fd, os.O_RDONLY) for fd in os.listdir('/proc/1/fd')]",
                                      "Reopen the agent's descriptors through /proc/1/fd (the agent is not dumpable)."),
    "agent-memory-write": ("refused", "open('/proc/1/mem', 'r+b').write(b'x')", "Overwrite the agent through /proc/1/mem."),
    "agent-memory-read": ("EACCES", "f = open('/proc/1/mem', 'rb'); f.seek(0x400000); f.read(16)",
                          "Read the agent's memory (earlier requests, their environments) through /proc/1/mem."),
    "runtime-binary-overwrite": ("refused", "open('/proc/1/exe', 'r+b').write(b'x')",
                                 "Overwrite the binary behind /proc/1/exe (the runc CVE-2019-5736 pattern)."),
    "unmask-proc": ("EPERM", "libc('umount2', b'/proc/kallsyms', 2)", "Unmount (MNT_DETACH) the empty file that covers /proc/kallsyms."),
    "bind-mount": ("EPERM", "libc('mount', b'/proc/self/root', b'/workspace', None, 0x1000 | 0x4000, None)",
                   "Bind-mount (MS_BIND | MS_REC) /proc/self/root over /workspace, as a mount-based escape would."),
    "block-device-node": ("EPERM", "os.mknod('/tmp/disk', 0o60600, os.makedev(8, 0))", "Make a node for the host's first disk, to read it raw."),
    "memory-device-node": ("EPERM", "os.mknod('/tmp/mem', 0o20600, os.makedev(1, 1))", "Make /dev/mem (1, 1) to read the host's physical memory."),
    "proc-sys-read-only": ("EROFS", "open('/proc/sys/vm/drop_caches', 'w').write('3')", "Write a kernel tunable: /proc/sys/vm/drop_caches."),
    "sysrq-trigger": ("refused", "open('/proc/sysrq-trigger', 'w').write('c')", "Write to /proc/sysrq-trigger (reboot or crash the host)."),
    "system-folders-read-only": ("EROFS", "open('/usr/bin/isolate-audit-planted', 'w')",
                                 "Plant a program in /usr/bin, which every sandbox (and the host) shares underneath."),
    "hard-link-to-system-file": ("EXDEV", "os.link('/usr/bin/env', '/workspace/env-link')",
                                 "Hard-link a shared system file into the writable layer, to change it from there."),
}


def _one_statement(audit: Audit, statement: str, expected: str) -> str:
    seen = _errno(audit, statement)
    return "refused" if expected == "refused" and seen in NOT_WRITABLE else seen


# Where gVisor's own kernel refuses with another errno (or inertly): name -> (what it shows, why).
GVISOR_ANSWERS = {
    "agent-descriptors-from-inside": ("ENXIO", "gVisor refuses to reopen the sockets and pipes behind /proc/1/fd"),
    "proc-sys-read-only": ("EACCES", "gVisor's own /proc/sys refuses the write before any read-only check"),
    "sysrq-trigger": ("ok", "gVisor's own /proc/sysrq-trigger: the buffered write fails at close (EIO); no host kernel is reached"),
    "system-folders-read-only": ("EACCES", "gVisor checks permission before the read-only mount"),
}

for _name, (_expected, _statement, _doc) in ONE_STATEMENT.items():
    add(GROUP, _name, _expected, partial(_one_statement, statement=_statement, expected=_expected), _doc,
        differs=(("gvisor", *GVISOR_ANSWERS[_name]),) if _name in GVISOR_ANSWERS else ())


@case(GROUP, "dotdot-above-root", "stays at /")
def dotdot_above_root(audit: Audit) -> str:
    """`..` a hundred times from /proc/self/cwd still names the sandbox's root."""
    source = ("import os\nos.chdir('/proc/self/cwd')\nfor _ in range(100): os.chdir('..')\n"
              "here, root = os.stat('.'), os.stat('/')\nprint((here.st_dev, here.st_ino) == (root.st_dev, root.st_ino))")
    out = audit.python(audit.sandbox(GROUP), source).stdout.strip()
    return "stays at /" if out == "True" else "left the root" if out == "False" else "probe failed"


@case(GROUP, "proc-pid-root", "every /proc/*/root is the sandbox root")
def proc_pid_root(audit: Audit) -> str:
    """/proc/<pid>/root of every visible process (the agent's included) leads to the sandbox's own root."""
    source = (
        "import os\nroot = os.stat('/')\nbad = []\n"
        "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
        "    try: st = os.stat('/proc/%s/root/.' % pid)\n"
        "    except OSError: continue\n"
        "    if (st.st_dev, st.st_ino) != (root.st_dev, root.st_ino): bad.append(pid)\n"
        "print(' '.join(bad) or 'none')"
    )
    out = audit.python(audit.sandbox(GROUP), source).stdout.strip()
    return "every /proc/*/root is the sandbox root" if out == "none" else f"other roots via pids {out}"


@case(GROUP, "descriptors-of-commands", "0 1 2")
def descriptors_of_commands(audit: Audit) -> str:
    """A command inherits stdin, stdout and stderr only: no descriptor of the agent or the host."""
    source = ("import os\nopen_now = []\nfor fd in sorted(map(int, os.listdir('/proc/self/fd'))):\n"
              "    try: os.fstat(fd)\n    except OSError: continue  # the listing's own, closed since\n"
              "    open_now.append(str(fd))\nprint(' '.join(open_now))")
    return audit.python(audit.sandbox(GROUP), source).stdout.strip()


@case(GROUP, "descriptors-of-agent", "null 0-2, then sockets and pipes only", backends=("nsjail",))
def descriptors_of_agent(audit: Audit) -> str:
    """Read from the host: the agent holds /dev/null on 0-2, its channel, connections and pipes; no file or folder."""
    sandbox = audit.sandbox(GROUP)
    audit.exec(sandbox, "true")
    agent = next(pid for pid in audit.host_pids(sandbox) if _ns_pid(pid) == 1)
    odd = []
    for fd in sorted(os.listdir(f"/proc/{agent}/fd"), key=int):
        target = os.readlink(f"/proc/{agent}/fd/{fd}")
        std = int(fd) <= 2 and Path(f"/proc/{agent}/fd/{fd}").stat().st_rdev == os.makedev(1, 3)
        if not (std or target.startswith(("socket:", "pipe:", "anon_inode:"))):
            odd.append(f"{fd}->{target}")
    return "null 0-2, then sockets and pipes only" if not odd else "holds " + " ".join(odd)


def _ns_pid(host_pid: int) -> int:
    for line in Path(f"/proc/{host_pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return 0


@case(GROUP, "mount-table", "only the sandbox's own mounts")
def mount_table(audit: Audit) -> str:
    """Every mount point inside is one the sandbox is meant to have; no old root, no staging folder."""
    allowed = ("/", "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/proc", "/dev", "/sys",
               "/etc/hosts", "/etc/resolv.conf")  # the last two: the sandbox's own name files, written by the host
    if audit.backend == "gvisor":
        allowed += ("/tmp",)  # bound from the sandbox's own writable layer (else runsc puts a tmpfs there)
    text = audit.exec(audit.sandbox(GROUP), "cat", ["/proc/self/mountinfo"]).stdout
    points = [line.split()[4] for line in text.splitlines() if len(line.split()) > 4]
    odd = [p for p in points if p not in allowed and not p.startswith(("/proc/", "/dev/", "/sys/"))]
    return "only the sandbox's own mounts" if points and not odd else "unexpected: " + " ".join(odd or ["no mounts listed"])


@case(GROUP, "old-root-detached", "no host folder mounted", backends=("nsjail",))
def old_root_detached(audit: Audit) -> str:
    """No mount inside shows a folder of the host's root file system (pivot_root's old root is gone);
    the only pieces of it are single files: the sandbox's own device nodes and name files."""
    host_root = os.stat("/").st_dev
    text = audit.exec(audit.sandbox(GROUP), "cat", ["/proc/self/mountinfo"]).stdout
    exposed = []
    for line in text.splitlines():
        fields = line.split()
        major, minor = (int(n) for n in fields[2].split(":"))
        if os.makedev(major, minor) != host_root:
            continue
        try:
            is_folder = stat.S_ISDIR(os.stat(fields[3]).st_mode)
        except OSError:
            is_folder = True  # cannot tell: count it
        if is_folder:
            exposed.append(f"{fields[3]} at {fields[4]}")
    return "no host folder mounted" if not exposed else "; ".join(exposed)


@case(GROUP, "device-list", "null zero full random urandom tty and terminals",
      differs=(("gvisor", "also fuse", "gVisor's own FUSE device: mounting is refused by the policy, so it serves nothing"),))
def device_list(audit: Audit) -> str:
    """/dev holds the minimal set only: no disk, memory, kmsg, or host terminal."""
    allowed = {"null", "zero", "full", "random", "urandom", "tty", "pts", "ptmx", "shm", "fd", "stdin", "stdout", "stderr",
               "console", "core", "mqueue"}
    names = set(audit.exec(audit.sandbox(GROUP), "ls", ["-A", "/dev"]).stdout.split())
    odd = sorted(names - allowed)
    return "null zero full random urandom tty and terminals" if not odd else "also " + " ".join(odd)


@case(GROUP, "nosuid-nodev-everywhere-writable", "nosuid,nodev",
      differs=(("gvisor", "/ /workspace /tmp /root /dev/shm /var/tmp /usr",
                "gVisor's statvfs reports no mount flags; setuid files stay inert (setuid-root-file-in-upper) and no device "
                "node can be made (block-device-node)"),))
def nosuid_nodev(audit: Audit) -> str:
    """The writable layer and the other writable places are mounted nosuid and nodev."""
    source = (
        "import os\nbad = []\n"
        "for path in ('/', '/workspace', '/tmp', '/root', '/dev/shm', '/var/tmp', '/usr'):\n"
        "    flags = os.statvfs(path).f_flag\n"
        "    if not (flags & os.ST_NOSUID and flags & os.ST_NODEV): bad.append(path)\n"
        "print(' '.join(bad) or 'nosuid,nodev')"
    )
    return audit.python(audit.sandbox(GROUP), source).stdout.strip()


@case(GROUP, "sys-absent", "absent or read-only")
def sys_absent(audit: Audit) -> str:
    """/sys (kernel tunables, devices, cgroups) is empty, or at most read-only."""
    source = "import os\nprint('absent or read-only' if not os.listdir('/sys') or os.statvfs('/sys').f_flag & os.ST_RDONLY else 'writable')"
    return audit.python(audit.sandbox(GROUP), source).stdout.strip()


@case(GROUP, "kernel-helper-paths", "refused")
def kernel_helper_paths(audit: Audit) -> str:
    """Point a kernel helper at a program of the sandbox's (the kernel runs it as host root):
    core_pattern, modprobe, uevent_helper, binfmt_misc."""
    paths = ("/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe", "/sys/kernel/uevent_helper",
             "/proc/sys/fs/binfmt_misc/register")
    seen = {_one_statement(audit, f"open({path!r}, 'w').write('|/workspace/evil')", "refused") for path in paths}
    return " ".join(sorted(seen))


@case(GROUP, "proc-kernel-entries", "empty or unreadable")
def proc_kernel_entries(audit: Audit) -> str:
    """kcore, keys, kallsyms, kmsg, timer_list, sched_debug, interrupts, kpage*: nothing to read."""
    source = (
        "import os\nleaks = []\n"
        "for name in ('kcore', 'keys', 'key-users', 'kallsyms', 'kmsg', 'timer_list', 'timer_stats', 'sched_debug',\n"
        "             'latency_stats', 'interrupts', 'kpagecount', 'kpageflags', 'kpagecgroup'):\n"
        "    try:\n"
        "        fd = os.open('/proc/' + name, os.O_RDONLY | os.O_NONBLOCK)\n"
        "        data = os.read(fd, 64)\n"
        "    except OSError: continue\n"
        "    if data: leaks.append(name)\n"
        "for name in ('acpi', 'asound', 'scsi', 'driver'):\n"
        "    try:\n"
        "        if os.listdir('/proc/' + name): leaks.append(name)\n"
        "    except OSError: pass\n"
        "print(' '.join(leaks) or 'empty or unreadable')"
    )
    return audit.python(audit.sandbox(GROUP), source).stdout.strip()


@case(GROUP, "host-sockets", "none")
def host_sockets(audit: Audit) -> str:
    """No unix socket of the host (docker, systemd, dbus, isolate's own agent socket) is in the tree."""
    result = audit.exec(audit.sandbox(GROUP), "find / -xdev -type s 2>/dev/null; find /run /tmp /var /dev -type s 2>/dev/null")
    found = sorted(set(result.stdout.split()))
    return " ".join(found[:5]) or "none"


@case(GROUP, "state-folder-invisible", "absent")
def state_folder_invisible(audit: Audit) -> str:
    """The host's state folder (every sandbox's layer, the agent sockets) is not in the tree,
    nor is this sandbox's own layer at the host path /proc/self/mountinfo names."""
    sandbox = audit.sandbox(GROUP)
    paths = [str(audit.manager.settings.state_dir), str(audit.sandbox_folder(sandbox)), str(audit.manager.socket_path(sandbox.name))]
    result = audit.exec(sandbox, "ls", ["-d", *paths])
    return "absent" if not result.stdout.strip() else "visible: " + result.stdout.strip()


@case(GROUP, "host-canary-by-path", "absent")
def host_canary_by_path(audit: Audit) -> str:
    """The host's canary file, named by its absolute host path, does not exist inside."""
    result = audit.exec(audit.sandbox(GROUP), "cat", [str(audit.canaries.file)])
    return "absent" if result.exit_code != 0 and not result.stdout else "read: " + result.stdout[:40]


@case(GROUP, "agent-start-files", "EACCES")
def agent_start_files(audit: Audit) -> str:
    """The files that steer how every program (the agent too) starts are the image's, not the
    sandbox's: /etc/ld.so.preload and /etc/ld.so.cache cannot be written. (The root folder
    itself is the sandbox's: see file-api/hostile-agent-* for what replacing /lib64 achieves.)"""
    seen = {_errno(audit, f"open({path!r}, 'a').write('/workspace/evil.so')") for path in ("/etc/ld.so.preload", "/etc/ld.so.cache")}
    return " ".join(sorted(seen))
