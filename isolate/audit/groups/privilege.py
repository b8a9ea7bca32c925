"""Privilege: capabilities, setuid files, nested user namespaces, and every denied system call.

Each denied call is probed inside a sandbox with harmless arguments; on nsjail the host
also reads the filter the process runs under and checks its verdict for the same call,
since a privileged call fails with EPERM in a capability-less sandbox even unfiltered.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import struct
import subprocess
import sys
from functools import partial

from .. import probes, seccomp
from ..battery import Audit, NotApplicable, add, case

GROUP = "privilege"
NO_CAPABILITIES = "no capabilities"


def _syscall_results(audit: Audit) -> dict[str, str]:
    calls = [(label, nr, list(args)) for label, (nr, args) in probes.DENIED_SYSCALLS.items()]
    calls += [(label, nr, list(args)) for label, (nr, args, _) in probes.ARGUMENT_CHECKS.items()]
    result = audit.python(audit.sandbox(GROUP), probes.SYSCALL_PROBE, json.dumps(calls))
    if result.exit_code != 0:
        raise RuntimeError(f"syscall probe failed: {result.stderr[-300:]}")
    return json.loads(result.stdout)


def _filters(audit: Audit) -> list[seccomp.Program] | None:
    """The filters of a process in the privilege sandbox, read from the host (nsjail only)."""
    if audit.backend != "nsjail":
        return None
    sandbox = audit.sandbox(GROUP)
    argv = ["sleep", "30.25"]
    audit.exec(sandbox, "sleep 30.25 >/dev/null 2>&1 &")
    pid = audit.host_pid_of(sandbox, argv)
    try:
        return seccomp.read_filters(pid)
    finally:
        os.kill(pid, signal.SIGKILL)


def _denied(audit: Audit, label: str, nr: int, args: tuple[int, ...], expected: str, arch: int = seccomp.AUDIT_ARCH_X86_64) -> str:
    if platform.machine() != "x86_64":
        return "not x86_64"
    seen = audit.memo("syscalls", lambda: _syscall_results(audit))[label]  # type: ignore[index]
    filters = audit.memo("filters", lambda: _filters(audit))
    if filters is not None:
        verdict = seccomp.verdict(filters, nr, args, arch)  # type: ignore[arg-type]
        if str(verdict) != f"ERRNO({expected})":
            return f"{seen}, filter {verdict}"
    return seen


# gVisor answers these itself: it does not implement them (its filter table has no name for them either)
GVISOR_UNIMPLEMENTED = {"quotactl_fd", "process_madvise", "pidfd_getfd", "set_mempolicy_home_node", "open_tree_attr", "mount_setattr"}
# argument checks gVisor's own kernel answers (runsc's filter answers EPERM, and these rules are left to gVisor: kafel.py);
# families gVisor lacks (AF_ALG, AF_VSOCK) it refuses itself with EAFNOSUPPORT, the answer nsjail's filter gives
GVISOR_ARGUMENT_ANSWERS = {
    "clone3": ("EINVAL", "gVisor implements clone3 (the probe's arguments are invalid); namespaces made with it stay in gVisor's kernel"),
    "socket-af-packet": ("EPERM", "gVisor wants CAP_NET_RAW for packet sockets, which the sandbox lacks"),
    "socket-af-packet-high-bits": ("EPERM", "gVisor wants CAP_NET_RAW for packet sockets, which the sandbox lacks"),
    "socketpair-af-packet": ("EPERM", "runsc's filter refuses what the policy refuses, with EPERM"),
    "socket-sctp": ("EAFNOSUPPORT", "gVisor has no SCTP: nothing reaches the host kernel to load a module"),
    "socket-sctp-seqpacket": ("EAFNOSUPPORT", "gVisor has no SCTP: nothing reaches the host kernel to load a module"),
    "socket-dccp": ("EAFNOSUPPORT", "gVisor has no DCCP: nothing reaches the host kernel to load a module"),
    "socket-l2tp-ip": ("EAFNOSUPPORT", "gVisor has no L2TP: nothing reaches the host kernel to load a module"),
    "socket-protocol-high-bits": ("EAFNOSUPPORT", "gVisor has no such protocol: nothing reaches the host kernel"),
    "personality-read-implies-exec": ("EINVAL", "gVisor supports the plain Linux personality only"),
}
for _name, (_nr, _args) in probes.DENIED_SYSCALLS.items():
    _gvisor = ("gvisor", "ENOSYS", "gVisor does not implement it") if _name in GVISOR_UNIMPLEMENTED else None
    add(GROUP, f"syscall-{_name}", "EPERM", partial(_denied, label=_name, nr=_nr, args=_args, expected="EPERM"),
        f"{_name}() with harmless arguments fails with the policy's EPERM, and the loaded filter says so",
        differs=(_gvisor,) if _gvisor else ())
for _label, (_nr, _args, _errno) in probes.ARGUMENT_CHECKS.items():
    _differs = (("gvisor", *GVISOR_ARGUMENT_ANSWERS[_label]),) if _label in GVISOR_ARGUMENT_ANSWERS else ()
    add(GROUP, f"syscall-{_label}", _errno, partial(_denied, label=_label, nr=_nr, args=_args, expected=_errno),
        f"{_label}: the policy answers {_errno} (bits above 32 are ignored by the kernel, so by the filter too)", differs=_differs)


@case(GROUP, "syscall-i386-abi", "SIGSYS", differs=(("gvisor", "exited 0 returned -38", "gVisor has no i386 ABI: ENOSYS"),))
def i386_abi(audit: Audit) -> str:
    """`int 0x80` from a 64-bit process (the i386 ABI, whose numbers differ) is killed by the filter."""
    if not audit.memo("host-has-i386", lambda: subprocess.run([sys.executable, "-c", probes.I386_PROBE], capture_output=True).returncode == 0):
        raise NotApplicable("this kernel has no i386 ABI (no IA32 emulation)")
    result = audit.python(audit.sandbox(GROUP), probes.I386_PROBE)
    seen = "SIGSYS" if result.signal == signal.SIGSYS else f"{result.reason} {result.signal or result.exit_code} {result.stdout.strip()}"
    filters = audit.memo("filters", lambda: _filters(audit))
    if filters is not None:
        verdict = seccomp.verdict(filters, 20, (), seccomp.AUDIT_ARCH_I386)  # type: ignore[arg-type]
        if not verdict.action.startswith("KILL"):
            return f"{seen}, filter {verdict}"
    return seen


def _status(audit: Audit, pid: str) -> dict[str, str]:
    text = audit.exec(audit.sandbox(GROUP), "cat", [f"/proc/{pid}/status"]).stdout
    return {key: value.strip() for key, _, value in (line.partition(":") for line in text.splitlines())}


def _capabilities(status: dict[str, str]) -> str:
    # every set shown must be empty; gVisor's /proc shows no CapAmb line (it has no ambient set to show)
    shown = ("CapInh", "CapPrm", "CapEff", "CapBnd", *(("CapAmb",) if "CapAmb" in status else ()))
    held = [name for name in shown if int(status.get(name, "1"), 16)]
    return NO_CAPABILITIES if not held else "holds " + ",".join(held)


@case(GROUP, "capabilities-of-commands", NO_CAPABILITIES)
def command_capabilities(audit: Audit) -> str:
    """A command's five capability sets are all empty."""
    return _capabilities(_status(audit, "self"))


@case(GROUP, "capabilities-of-agent", NO_CAPABILITIES)
def agent_capabilities(audit: Audit) -> str:
    """The agent (PID 1 inside) holds no capability either."""
    return _capabilities(_status(audit, "1"))


@case(GROUP, "no-new-privileges", "NoNewPrivs 1, Seccomp 2")
def no_new_privileges(audit: Audit) -> str:
    """Commands run with no_new_privs and under a seccomp filter."""
    status = _status(audit, "self")
    if "NoNewPrivs" not in status:  # gVisor's /proc has no such line: ask prctl(PR_GET_NO_NEW_PRIVS)
        status["NoNewPrivs"] = audit.python(audit.sandbox(GROUP), "import ctypes; print(ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))").stdout.strip()
    return f"NoNewPrivs {status.get('NoNewPrivs')}, Seccomp {status.get('Seccomp')}"


@case(GROUP, "host-uid-of-processes", "the sandbox's own unprivileged uid")
def host_uid_of_processes(audit: Audit) -> str:
    """Every process of the sandbox, seen from the host, runs as the sandbox's own uid (never root)."""
    sandbox = audit.sandbox(GROUP)
    audit.exec(sandbox, "sleep 30.5 >/dev/null 2>&1 &")
    expected_uid = audit.host_uid(sandbox)
    uids = set()
    for pid in audit.host_pids(sandbox):
        try:
            uids.add(os.stat(f"/proc/{pid}").st_uid)
        except FileNotFoundError:
            continue
    if uids == {expected_uid} and expected_uid >= 65536:
        return "the sandbox's own unprivileged uid"
    return f"host uids {sorted(uids)} (sandbox uid {expected_uid})"


@case(GROUP, "distinct-uid-per-sandbox", "distinct")
def distinct_uids(audit: Audit) -> str:
    """Two sandboxes never share a host uid, so no file or process of one is the other's."""
    first, second = audit.sandbox(GROUP), audit.sandbox("other")
    return "distinct" if audit.host_uid(first) != audit.host_uid(second) else "shared"


@case(GROUP, "setuid-to-another-uid", "EINVAL", differs=(("gvisor", "EPERM", "gVisor checks CAP_SETUID before the uid map"),))
def setuid_elsewhere(audit: Audit) -> str:
    """Becoming any other uid fails: only the sandbox's root is mapped."""
    return audit.python(audit.sandbox(GROUP), probes.ERRNO_OF, "os.setresuid(1000, 1000, 1000)").stdout.strip()


@case(GROUP, "nested-user-namespace", "Operation not permitted")
def nested_user_namespace(audit: Audit) -> str:
    """`unshare --user --map-root-user` (a real attempt, valid flags) is refused."""
    result = audit.exec(audit.sandbox(GROUP), "unshare", ["--user", "--map-root-user", "--mount", "true"])
    return "Operation not permitted" if "Operation not permitted" in result.stderr else f"exit {result.exit_code}: {result.stderr.strip()[:80]}"


PLANT = """
import shutil
target = layer / "workspace" / args[1]
shutil.copyfile(args[0], target)
os.chown(target, 0, 0)
os.chmod(target, int(args[2], 8))
if args[3]:
    os.setxattr(target, "security.capability", bytes.fromhex(args[3]))
"""


def _plant_in_upper(audit: Audit, name: str, mode: int, capabilities: bytes = b""):
    """As host root, put a copy of `sleep` in a new sandbox's /workspace (as if a host-side bug had)."""
    sandbox = audit.fresh()
    sandbox.ping()  # created and started once, like any sandbox in use
    audit.in_layer(sandbox, PLANT, shutil.which("sleep") or "/usr/bin/sleep", name, oct(mode), capabilities.hex())
    return sandbox


def _privileges_of(audit: Audit, sandbox, program: str) -> str:
    """Start `program 30` in the background and report the euid and effective capabilities it runs with."""
    script = f"{program} 30 & sleep 0.3; grep -E '^(Uid|CapEff):' /proc/$!/status; kill $!"
    fields = dict(line.split(":", 1) for line in audit.exec(sandbox, script).stdout.splitlines() if ":" in line)
    euid = fields.get("Uid", "? ?").split()[1]
    capabilities = "no capabilities" if int(fields.get("CapEff", "1").strip(), 16) == 0 else "capabilities " + fields["CapEff"].strip()
    return f"euid {euid}, {capabilities}"


@case(GROUP, "setuid-root-file-in-upper", "euid 0, no capabilities")
def setuid_root_file(audit: Audit) -> str:
    """A setuid-root program in the writable layer (owned by host root) runs without privilege:
    its owner is not mapped, the layer is nosuid, and no_new_privs holds."""
    sandbox = _plant_in_upper(audit, "suid-sleep", 0o4755)
    return _privileges_of(audit, sandbox, "/workspace/suid-sleep")


@case(GROUP, "file-capabilities-in-upper", "euid 0, no capabilities")
def file_capabilities(audit: Audit) -> str:
    """A program carrying file capabilities (cap_sys_admin, cap_net_raw; set by host root) gains none."""
    permitted = (1 << 21) | (1 << 13)  # CAP_SYS_ADMIN, CAP_NET_RAW
    data = struct.pack("<IIIII", 0x02000000 | 0x1, permitted, 0, 0, 0)  # VFS_CAP_REVISION_2, effective
    sandbox = _plant_in_upper(audit, "cap-sleep", 0o755, data)
    return _privileges_of(audit, sandbox, "/workspace/cap-sleep")


@case(GROUP, "setuid-bit-made-inside", "owned by the sandbox's uid")
def setuid_made_inside(audit: Audit) -> str:
    """A setuid file made inside is, on the host, owned by the sandbox's unprivileged uid, never root."""
    sandbox = audit.fresh()
    audit.exec(sandbox, "cp /usr/bin/id /workspace/suid-id && chmod 6755 /workspace/suid-id")
    owner = audit.in_layer(sandbox, "info = (layer / 'workspace' / 'suid-id').stat()\nprint(info.st_uid, info.st_gid, oct(info.st_mode))")
    uid, gid, mode = owner.split()
    if int(uid) == int(gid) == audit.host_uid(sandbox) and int(mode, 8) & 0o6000:
        return "owned by the sandbox's uid"
    return f"owned by {uid}:{gid}, mode {mode}"
