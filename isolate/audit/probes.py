"""Programs the audit runs inside sandboxes, and the system calls it expects to find denied.

A dangerous call is probed safely: with arguments the kernel would reject (fd -1, pointer 1,
an unknown pid, contradictory flags), so a call that reached the kernel fails with EBADF,
EFAULT, EINVAL, ESRCH or ENOSYS and never acts. Only the policy's own errno counts as denied.
"""

from __future__ import annotations

from .seccomp import X32_SYSCALL_BIT

# x86_64 numbers; arguments chosen so that a call reaching the kernel fails harmlessly.
NO_PID = 0x3FFFFFFF
P = 1  # a pointer the kernel cannot read
CLONE_SIGHAND = 0x800  # without CLONE_VM: EINVAL before any namespace is made
DENIED_SYSCALLS: dict[str, tuple[int, tuple[int, ...]]] = {
    # the kernel, modules, logs, clocks and boot
    "syslog": (103, (-1, P, 1)),
    "reboot": (169, (0, 0, 0, P)),
    "kexec_load": (246, (0, 0, P, -1)),
    "kexec_file_load": (320, (-1, -1, 0, P, -1)),
    "init_module": (175, (P, 0, P)),
    "finit_module": (313, (-1, P, -1)),
    "delete_module": (176, (P, -1)),
    "create_module": (174, (P, 0)),
    "get_kernel_syms": (177, (P,)),
    "query_module": (178, (P, -1, P, 0, P)),
    "swapon": (167, (P, -1)),
    "swapoff": (168, (P,)),
    "acct": (163, (P,)),
    "quotactl": (179, (-1, P, 0, P)),
    "quotactl_fd": (443, (-1, -1, 0, P)),
    "lookup_dcookie": (212, (0, P, 0)),
    "nfsservctl": (180, (-1, P, P)),
    "settimeofday": (164, (P, P)),
    "clock_settime": (227, (-1, P)),
    "clock_adjtime": (305, (-1, P)),
    "adjtimex": (159, (P,)),
    "sethostname": (170, (P, -1)),
    "setdomainname": (171, (P, -1)),
    "iopl": (172, (99,)),
    "ioperm": (173, (-1, -1, 1)),
    "modify_ldt": (154, (99, P, 0)),
    "uselib": (134, (P,)),
    "ustat": (136, (-1, P)),
    "sysfs": (139, (99,)),
    "_sysctl": (156, (P,)),
    "vhangup": (153, ()),
    "getpmsg": (181, (-1, P, P, P, P)),
    "putpmsg": (182, (-1, P, P, -1, -1)),
    "afs_syscall": (183, ()),
    "tuxcall": (184, ()),
    "security": (185, ()),
    "vserver": (236, ()),
    # other processes' memory, and NUMA placement
    "ptrace": (101, (16, NO_PID, 0, 0)),
    "process_vm_readv": (310, (NO_PID, P, 1, P, 1, 0)),
    "process_vm_writev": (311, (NO_PID, P, 1, P, 1, 0)),
    "process_madvise": (440, (-1, P, 1, 0, 0)),
    "kcmp": (312, (NO_PID, NO_PID, 0, 0, 0)),
    "pidfd_getfd": (438, (-1, -1, 0)),
    "mbind": (237, (P, 1, 99, P, 1, 0)),
    "set_mempolicy": (238, (99, P, 1)),
    "get_mempolicy": (239, (P, P, 1, P, -1)),
    "set_mempolicy_home_node": (450, (P, 1, 1, -1)),
    "migrate_pages": (256, (NO_PID, 1, P, P)),
    "move_pages": (279, (NO_PID, 1, P, P, P, 0)),
    # large kernel attack surfaces
    "add_key": (248, (P, P, P, 1, -1)),
    "request_key": (249, (P, P, P, -1)),
    "keyctl": (250, (-1, 0, 0, 0, 0)),
    "bpf": (321, (-1, P, 1)),
    "perf_event_open": (298, (P, 0, -1, -1, 0)),
    "userfaultfd": (323, (-1,)),
    "fanotify_init": (300, (-1, -1)),
    "io_uring_setup": (425, (1, P)),
    "io_uring_enter": (426, (-1, 1, 0, 0, 0, 0)),
    "io_uring_register": (427, (-1, 0, P, 1)),
    # mounts, roots, namespaces and file handles
    "mount": (165, (P, P, P, 0, P)),
    "umount2": (166, (P, 0)),
    "pivot_root": (155, (P, P)),
    "chroot": (161, (P,)),
    "unshare": (272, (-1,)),
    "setns": (308, (-1, 0)),
    "fsopen": (430, (P, -1)),
    "fsconfig": (431, (-1, 99, P, P, 0)),
    "fsmount": (432, (-1, -1, 0)),
    "fspick": (433, (-1, P, -1)),
    "open_tree": (428, (-1, P, -1)),
    "open_tree_attr": (467, (-1, P, -1, P, 1)),
    "move_mount": (429, (-1, P, -1, P, -1)),
    "mount_setattr": (442, (-1, P, -1, P, 1)),
    "name_to_handle_at": (303, (-1, P, P, P, -1)),
    "open_by_handle_at": (304, (-1, P, -1)),
}
# Argument-checked denials: (label, nr, args, errno the policy answers).
ARGUMENT_CHECKS: dict[str, tuple[int, tuple[int, ...], str]] = {
    "clone-newuser": (56, (0x10000000 | CLONE_SIGHAND, 0, 0, 0, 0), "EPERM"),
    "clone-newns": (56, (0x00020000 | CLONE_SIGHAND, 0, 0, 0, 0), "EPERM"),
    "clone-newpid": (56, (0x20000000 | CLONE_SIGHAND, 0, 0, 0, 0), "EPERM"),
    "clone-newnet": (56, (0x40000000 | CLONE_SIGHAND, 0, 0, 0, 0), "EPERM"),
    "clone-newuser-high-bits": (56, ((1 << 32) | 0x10000000 | CLONE_SIGHAND, 0, 0, 0, 0), "EPERM"),
    "clone3": (435, (P, 0), "ENOSYS"),
    "ioctl-tiocsti": (16, (-1, 0x5412, P), "EPERM"),
    "ioctl-tiocsti-high-bits": (16, (-1, (1 << 32) | 0x5412, P), "EPERM"),
    "ioctl-tioclinux": (16, (-1, 0x541C, P), "EPERM"),
    "ioctl-tioclinux-high-bits": (16, (-1, (0xFFFF << 32) | 0x541C, P), "EPERM"),
    "socket-af-packet": (41, (17, 3, 0), "EAFNOSUPPORT"),
    "socket-af-packet-high-bits": (41, ((1 << 32) | 17, 3, 0), "EAFNOSUPPORT"),
    "socket-af-alg": (41, (38, 5, 0), "EAFNOSUPPORT"),
    "socket-af-vsock": (41, (40, 1, 0), "EAFNOSUPPORT"),
    "socket-raw-ipv4": (41, (2, 3, 1), "EPERM"),
    "socket-raw-ipv6": (41, (10, 3, 58), "EPERM"),
    "socket-packet-type": (41, (2, 10, 0x0300), "EPERM"),
    "socketpair-af-packet": (53, (17, 2, 0, P), "EAFNOSUPPORT"),
    "socket-netlink-audit": (41, (16, 3, 9), "EPROTONOSUPPORT"),
    # protocols that are kernel modules: asking for one makes the kernel run modprobe
    "socket-sctp": (41, (2, 1, 132), "EPROTONOSUPPORT"),
    "socket-sctp-seqpacket": (41, (10, 5, 132), "EPROTONOSUPPORT"),
    "socket-dccp": (41, (2, 6, 33), "EPROTONOSUPPORT"),
    "socket-l2tp-ip": (41, (2, 2, 115), "EPROTONOSUPPORT"),
    "socket-protocol-high-bits": (41, (2, 1, (1 << 32) | 132), "EPROTONOSUPPORT"),
    "x32-getpid": (X32_SYSCALL_BIT | 39, (), "ENOSYS"),
    "x32-mount": (X32_SYSCALL_BIT | 165, (P, P, P, 0, P), "ENOSYS"),
    "x32-unshare": (X32_SYSCALL_BIT | 272, (-1,), "ENOSYS"),
    "x32-ptrace": (X32_SYSCALL_BIT | 521, (16, NO_PID, 0, 0), "ENOSYS"),
    "unknown-syscall-number": (1000, (), "ENOSYS"),
    "personality-read-implies-exec": (135, (0x0400000,), "EPERM"),
}

SYSCALL_PROBE = r"""
import ctypes, errno, json, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
out = {}
for label, nr, args in json.loads(sys.argv[1]):
    ctypes.set_errno(0)
    ret = libc.syscall(ctypes.c_long(nr), *[ctypes.c_ulong(a & 0xFFFFFFFFFFFFFFFF) for a in args])
    code = ctypes.get_errno()
    out[label] = errno.errorcode.get(code, str(code)) if ret == -1 else "returned %d" % ret
print(json.dumps(out))
"""

# int 0x80 from a 64-bit process: the i386 ABI. mov eax, 20 (getpid); int 0x80; ret
I386_PROBE = r"""
import ctypes, mmap
code = bytes.fromhex("b814000000cd80c3")
page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(code)
function = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
print("returned", function())
"""

# Run one Python statement and print the errno it fails with, or "ok". `libc(name, *args)`
# calls a C function and raises OSError when it returns -1.
ERRNO_OF = r"""
import ctypes, errno, fcntl, os, socket, sys
_libc = ctypes.CDLL(None, use_errno=True)
def libc(name, *args):
    if getattr(_libc, name)(*args) == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
try:
    exec(sys.argv[1])
    print("ok")
except OSError as exc:
    print(errno.errorcode.get(exc.errno, exc.errno))
"""
