"""Resource exhaustion: fork, thread, memory, disk, descriptor and output bombs, processes
that ignore signals, and daemons that try to outlive their exec or their sandbox."""

from __future__ import annotations

import os
import time

from ...types import Limits
from .. import probes
from ..battery import AUDIT_LIMITS, Audit, case

GROUP = "resources"
SMALL = Limits(memory_mb=96, pids=48, exec_timeout=20, output_bytes=1 << 20, open_files=128, file_size_mb=16, cpu_percent=50)


def _answers(sandbox) -> bool:
    return sandbox.exec("echo", ["alive"]).stdout == "alive\n"


def _host_processes_of(audit: Audit, uid: int) -> list[int]:
    """Host pids running as `uid` (a sandbox's own uid: nothing else runs as it)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid and _state(int(entry)) != "Z":
                    found.append(int(entry))
            except OSError:
                continue
    return found


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


@case(GROUP, "fork-bomb", "contained, sandbox answers")
def fork_bomb(audit: Audit) -> str:
    """The shell fork bomb, left running for two seconds: the pids limit holds it (counted from the
    host while it runs), and afterwards the sandbox still answers."""
    sandbox = audit.fresh(SMALL)
    audit.background(sandbox, "bomb() { bomb | bomb & }; bomb", 2)
    peak, deadline = 0, time.monotonic() + 1.5
    while time.monotonic() < deadline:
        peak = max(peak, len(audit.host_pids(sandbox)))
        time.sleep(0.05)
    time.sleep(1.0)
    # the host's limit on the sandbox's cgroup (gVisor's adds room for the Sentry's own threads and stubs,
    # and enforces the sandbox's limit inside); the jail's supervisor sits in the cgroup too
    limit = audit.manager.backend(audit.backend).host_limits(SMALL).pids
    if peak > limit + 2:
        return f"{peak} processes"
    return f"contained, {'sandbox answers' if _answers(sandbox) else 'sandbox dead'}"


@case(GROUP, "thread-bomb", "stopped below the pids limit")
def thread_bomb(audit: Audit) -> str:
    """Start threads until something gives: thread creation fails at the pids limit."""
    sandbox = audit.fresh(SMALL)
    source = ("import threading, time\nn = 0\ntry:\n    while n < 100000:\n"
              "        threading.Thread(target=time.sleep, args=(30,), daemon=True).start(); n += 1\n"
              "except RuntimeError: pass\nprint(n)")
    out = audit.python(sandbox, source, timeout=15).stdout.strip()
    if not out.isdigit():
        return f"no count: {out[:40]}"
    return "stopped below the pids limit" if int(out) < SMALL.pids and _answers(sandbox) else f"{out} threads"


@case(GROUP, "memory-hog", "oom, sandbox answers")
def memory_hog(audit: Audit) -> str:
    """Allocate and touch 1 GiB in a 96 MiB sandbox."""
    sandbox = audit.fresh(SMALL)
    result = audit.python(sandbox, "x = bytearray(1 << 30)\nprint('survived')")
    return f"{result.reason}, {'sandbox answers' if _answers(sandbox) else 'sandbox dead'}"


@case(GROUP, "shared-memory-hog", "ENOSPC")
def shared_memory_hog(audit: Audit) -> str:
    """Fill /dev/shm (a tmpfs, so host memory) without end: it is capped."""
    source = ("block = b'x' * (1 << 20)\nfor n in range(4096):\n    with open('/dev/shm/fill%d' % n, 'wb') as f:\n"
              "        for _ in range(8): f.write(block)")
    result = audit.python(audit.sandbox(GROUP), probes.ERRNO_OF, f"exec({source!r})")
    audit.exec(audit.sandbox(GROUP), "rm -f /dev/shm/fill*")
    return result.stdout.strip() or result.reason


@case(GROUP, "file-size", "EFBIG")
def file_size(audit: Audit) -> str:
    """Write one file past the file-size limit (SIGXFSZ ignored, so the write itself fails)."""
    source = ("import signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\nf = open('/workspace/big', 'wb')\n"
              f"for _ in range({AUDIT_LIMITS.file_size_mb + 8}): f.write(b'x' * (1 << 20)); f.flush()")
    result = audit.python(audit.sandbox(GROUP), probes.ERRNO_OF, f"exec({source!r})").stdout.strip()
    audit.exec(audit.sandbox(GROUP), "rm", ["-f", "/workspace/big"])
    return result


SMALL_DISK = Limits(memory_mb=256, pids=128, exec_timeout=30, output_bytes=1 << 20, open_files=256, file_size_mb=64, disk_mb=16)


@case(GROUP, "disk-fill", "ENOSPC, sandbox answers")
def disk_fill(audit: Audit) -> str:
    """Write 4 MiB files until something gives, in a sandbox with a 16 MiB disk: its quota, not the host's disk."""
    sandbox = audit.fresh(SMALL_DISK)
    source = "n = 0\nwhile n < 10000:\n    with open('/workspace/fill%d' % n, 'wb') as f: f.write(b'x' * (4 << 20))\n    n += 1"
    seen = audit.python(sandbox, probes.ERRNO_OF, f"exec({source!r})").stdout.strip()
    return f"{seen}, {'sandbox answers' if _answers(sandbox) else 'sandbox dead'}"


@case(GROUP, "inode-bomb", "ENOSPC, sandbox answers")
def inode_bomb(audit: Audit) -> str:
    """Create empty files until something gives: the sandbox's own inode table runs out, not the host's."""
    sandbox = audit.fresh(SMALL_DISK)
    source = "n = 0\nwhile n < 1000000:\n    os.close(os.open('/workspace/i%d' % n, os.O_CREAT | os.O_WRONLY)); n += 1"
    seen = audit.python(sandbox, probes.ERRNO_OF, f"exec({source!r})", timeout=60).stdout.strip()
    return f"{seen}, {'sandbox answers' if _answers(sandbox) else 'sandbox dead'}"


@case(GROUP, "descriptor-bomb", "EMFILE")
def descriptor_bomb(audit: Audit) -> str:
    """Open /dev/null until something gives: the open-files limit."""
    source = "fds = []\nwhile len(fds) < 1000000: fds.append(os.open('/dev/null', os.O_RDONLY))"
    return audit.python(audit.sandbox(GROUP), probes.ERRNO_OF, f"exec({source!r})").stdout.strip()


@case(GROUP, "output-flood", "output_limit, 1 MiB kept")
def output_flood(audit: Audit) -> str:
    """`yes` without end: the exec stops at the output limit, the rest is cut."""
    result = audit.exec(audit.sandbox(GROUP), "yes", ["flood"])
    kept = len(result.stdout.encode())
    return f"{result.reason}, {'1 MiB kept' if kept == AUDIT_LIMITS.output_bytes else f'{kept} bytes kept'}"


@case(GROUP, "error-output-flood", "output_limit, 1 MiB kept")
def error_output_flood(audit: Audit) -> str:
    """The same on stderr."""
    result = audit.exec(audit.sandbox(GROUP), "yes flood >&2")
    kept = len(result.stderr.encode())
    return f"{result.reason}, {'1 MiB kept' if kept == AUDIT_LIMITS.output_bytes else f'{kept} bytes kept'}"


@case(GROUP, "signal-ignoring-process", "timeout, nothing left")
def signal_ignoring(audit: Audit) -> str:
    """A process group that ignores every catchable signal and spins: the deadline kills it all."""
    sandbox = audit.sandbox(GROUP)
    spinner = "trap '' HUP INT QUIT TERM USR1 USR2; while :; do :; done"
    result = audit.exec(sandbox, f"sh -c \"{spinner}\" spin-marker & sh -c \"{spinner}\" spin-marker", timeout=1.5)
    time.sleep(0.2)
    count = ("import os\nmarker = 'spin' + '-marker'\nprint(sum(1 for p in os.listdir('/proc') if p.isdigit() and "
             "marker.encode() in open('/proc/%s/cmdline' % p, 'rb').read()))")
    left = audit.python(sandbox, count).stdout.strip()
    return f"{result.reason}, {'nothing left' if left == '0' else f'{left} left'}"


@case(GROUP, "pipe-holding-daemon", "returns")
def pipe_holding_daemon(audit: Audit) -> str:
    """A command leaves a child holding its stdout and stderr open: the exec still returns."""
    started = time.monotonic()
    audit.exec(audit.sandbox(GROUP), "sleep 60 & echo started")
    elapsed = time.monotonic() - started
    return "returns" if elapsed < 5 else f"held the call {elapsed:.1f} s"


@case(GROUP, "daemon-outlives-exec", "survives the exec, dies with stop", backends=("nsjail",))
def daemon_outlives_exec(audit: Audit) -> str:
    """A double-forked daemon in its own session, ignoring SIGHUP and SIGTERM, may outlive its
    exec; stopping the sandbox ends it (seen from the host: nothing runs as its uid)."""
    sandbox = audit.fresh()
    audit.exec(sandbox, "setsid sh -c \"trap '' HUP TERM; sleep 600\" >/dev/null 2>&1 < /dev/null &")
    if "sleep 600" not in audit.exec(sandbox, "ps", ["-eo", "args"]).stdout:
        return "the daemon did not start"
    sandbox.stop()
    left = _host_processes_of(audit, audit.host_uid(sandbox))
    return "survives the exec, dies with stop" if not left else f"{len(left)} processes left after stop"


@case(GROUP, "daemon-outlives-sandbox", "nothing left", backends=("nsjail",))
def daemon_outlives_sandbox(audit: Audit) -> str:
    """Daemons and a fork bomb running when the sandbox is destroyed: no process, cgroup or folder remains."""
    sandbox = audit.fresh(SMALL)
    audit.exec(sandbox, "setsid sh -c \"trap '' HUP TERM; sleep 600\" >/dev/null 2>&1 < /dev/null & "
                        "(bomb() { bomb | bomb & }; bomb) >/dev/null 2>&1 & sleep 0.5")
    uid, folder, cgroup = audit.host_uid(sandbox), audit.sandbox_folder(sandbox), audit.manager.cgroup(sandbox._record)
    sandbox.destroy()
    left = []
    if _host_processes_of(audit, uid):
        left.append("processes")
    if any(path.exists() for path in cgroup.folders):
        left.append("cgroups")
    if folder.exists():
        left.append("files")
    return "nothing left" if not left else "left " + ", ".join(left)


@case(GROUP, "cpu-spinners", "held to its share")
def cpu_spinners(audit: Audit) -> str:
    """Three spinning processes in a sandbox allowed half a core use at most about half a core."""
    sandbox = audit.fresh(SMALL)
    result = audit.exec(sandbox, "for i in 1 2 3; do (while :; do :; done) & done; sleep 2; kill $(jobs -p)")
    ratio = result.usage.cpu_time / max(result.usage.wall_time, 0.001)
    return "held to its share" if ratio < SMALL.cpu_percent / 100 * 1.5 else f"used {ratio:.2f} cores"


@case(GROUP, "zombie-flood", "all reaped")
def zombie_flood(audit: Audit) -> str:
    """A parent that exits leaving 40 unreaped children: the agent, as init, reaps them all."""
    sandbox = audit.sandbox(GROUP)
    audit.python(sandbox, "import os, time\nfor _ in range(40):\n    if os.fork() == 0: os._exit(0)\ntime.sleep(0.3)\nos._exit(0)")
    time.sleep(0.3)
    zombies = audit.exec(sandbox, "ps -eo stat | grep -c '^Z' || true").stdout.strip()
    return "all reaped" if zombies in ("", "0") else f"{zombies} zombies"
