"""Network namespaces and veth pairs, made in-process: unshare/setns on the calling thread, pyroute2 for links.

A sandbox's namespace has no name on the host (nothing under /run/netns): the starting thread
makes it, configures it, forks the jail from inside it and steps back; from then on the jail's
processes are what keep it alive, so when the jail ends the kernel frees the namespace and the
veth end inside it (which takes the host's end along). Nothing can be left behind, and a bind
mount under /run/netns, copied into every mount namespace made meanwhile, cannot pin it either.
Root made it, so nothing inside (its root holds no capability over a namespace owned by the
host's user namespace) can change its interfaces, addresses or routes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

from .. import syscalls
from .pool import Slot

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1
SANDBOX_INTERFACE = "eth0"
# Written inside each sandbox namespace: no IPv6 on any interface made later (only IPv4 is
# firewalled; `lo` keeps ::1), and every port bindable by the sandbox's root, which holds no
# capability over this namespace.
SANDBOX_SYSCTLS = {
    "net/ipv6/conf/default/disable_ipv6": "1",
    "net/ipv4/ip_unprivileged_port_start": "0",
}

def _setns(fd: int) -> None:
    syscalls.setns(fd, syscalls.CLONE_NEWNET)


def path_of(fd: int) -> Path:
    """A path to the namespace held by `fd`: for setns here, or `nsenter --net=` in a child while we hold it."""
    return Path(f"/proc/{os.getpid()}/fd/{fd}")


@contextlib.contextmanager
def entered(target: Path | int) -> Iterator[None]:
    """Run the block (and whatever it forks) in the namespace at `target`; only this thread moves."""
    fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC) if isinstance(target, Path) else target
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
        try:
            yield
        finally:
            _setns(home)  # if this failed the thread would stay inside: syscalls.setns raises, loudly
    finally:
        if isinstance(target, Path):
            os.close(fd)
        os.close(home)


def _write_sysctl(key: str, value: str) -> None:
    with open(f"/proc/sys/{key}", "w") as handle:
        handle.write(value)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def create() -> int:
    """A new namespace with `lo` up and nothing else (~1 ms); the returned fd keeps it alive until closed."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        syscalls.unshare(syscalls.CLONE_NEWNET)
        fd = -1
        try:
            fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
            _loopback_up()
            for key, value in SANDBOX_SYSCTLS.items():
                _write_sysctl(key, value)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        finally:
            _setns(home)
    finally:
        os.close(home)
    return fd


def inode(fd: int) -> int:
    return os.fstat(fd).st_ino


def of_process(pid: int, expected_inode: int) -> int | None:
    """An fd on the namespace of process `pid` if it still is the one recorded (pids get reused), else None."""
    try:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    if inode(fd) != expected_inode:
        os.close(fd)
        return None
    return fd


def _ipr():  # type: ignore[no-untyped-def]
    from pyroute2 import IPRoute  # imported on first use: it costs ~100 ms and most sandboxes never need a veth

    return IPRoute()


def attach_veth(netns: int, host_interface: str, alias: str, slot: Slot) -> None:
    """A veth pair: `eth0` inside with the sandbox's address and a default route via the host's side.

    The host side is tagged with `alias` (found again after a crash), keeps no IPv6
    address, and may carry loopback-sourced packets (exposed ports are DNAT-ed from 127.x)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with entered(netns), _ipr() as inside:
            inside.link("add", ifname=SANDBOX_INTERFACE, kind="veth", peer={"ifname": host_interface, "net_ns_fd": home})
            index = socket.if_nametoindex(SANDBOX_INTERFACE)  # libc, in this thread's namespace: no netlink round trip
            inside.addr("add", index=index, address=slot.sandbox_address, prefixlen=30)
            inside.link("set", index=index, state="up")
            inside.route("add", dst="0.0.0.0/0", gateway=slot.host_address)
    finally:
        os.close(home)
    try:
        for key in ("net/ipv6/conf/{}/disable_ipv6", "net/ipv4/conf/{}/route_localnet"):
            _write_sysctl(key.format(host_interface), "1")
        with _ipr() as host:
            index = socket.if_nametoindex(host_interface)
            host.addr("add", index=index, address=slot.host_address, prefixlen=30)
            host.link("set", index=index, ifalias=alias, state="up")
    except BaseException:
        detach_veth(host_interface)
        raise


def detach_veth(host_interface: str) -> bool:
    """Delete the pair (both ends go together). False if it was not there."""
    if not Path(f"/sys/class/net/{host_interface}").exists():
        return False
    from pyroute2 import NetlinkError

    with _ipr() as host:
        try:
            host.link("del", ifname=host_interface)
        except NetlinkError as exc:
            if exc.code != errno.ENODEV:
                raise
            return False
    return True


def veths_by_alias(prefix: str) -> dict[str, str]:
    """Host-side veths whose alias starts with `prefix`: alias -> interface name (read from sysfs, no netlink)."""
    found = {}
    with contextlib.suppress(FileNotFoundError):
        for interface in os.listdir("/sys/class/net"):
            try:
                alias = Path(f"/sys/class/net/{interface}/ifalias").read_text().strip()
            except OSError:
                continue
            if alias.startswith(prefix):
                found[alias] = interface
    return found


def enable_forwarding() -> None:
    """Egress is routed: IPv4 forwarding must be on (as Docker and libvirt also turn it on)."""
    if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != "1":
        _write_sysctl("net/ipv4/ip_forward", "1")
