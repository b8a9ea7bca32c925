"""The few system calls isolate makes that Python's os module lacks (Python 3.11): mount,
umount2, unshare and setns, through the C library; the mount table they change; and a write
that does not stop short."""

from __future__ import annotations

import ctypes
import os
import re

from .errors import HostError

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_NOATIME, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x8, 0x400, 0x4000, 0x40000
MNT_DETACH = 2
_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise HostError(f"{what}: {os.strerror(err)}", context={"errno": err})


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, kind: int) -> None:
    _check(_libc.setns(fd, kind), "setns")


def mount(source: str, target: str | os.PathLike[str], fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(source.encode(), os.fsencode(target), fstype.encode() if fstype else None, flags,
                       data.encode() if data else None), f"mount {fstype or ''} on {target}")


def umount_detached(target: str | os.PathLike[str]) -> None:
    _check(_libc.umount2(os.fsencode(target), MNT_DETACH), f"cannot unmount {target}")


def mount_table() -> list[tuple[str, str, str, list[str]]]:
    """(source, mount point, file system type, options) of each mount the calling thread sees; the
    kernel's octal escapes (a space is `\\040`) undone in the mount point."""
    with open("/proc/thread-self/mounts") as mounts:
        return [(fields[0], _OCTAL_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), fields[1]), fields[2], fields[3].split(","))
                for fields in (line.split() for line in mounts)]


def write_all(fd: int, data: bytes) -> None:
    """os.write until all of `data` is written (a pipe or file may take it in parts)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
