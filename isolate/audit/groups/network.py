"""Network: a sandbox has only its own loopback. It reaches neither the host's loopback
services, nor the host's other addresses, nor other sandboxes, nor anything beyond.

No case sends anything off this machine: the only targets are the host's own listeners
(started here) and the addresses of the host's own interfaces, and from inside there is
no route to them at all.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time

import psutil

from .. import probes
from ..battery import Audit, NotApplicable, case

GROUP = "network"


def _connect(audit: Audit, family: str, address: str, port: int) -> str:
    statement = f"s = socket.socket(socket.{family}); s.settimeout(3); s.connect(({address!r}, {port}))"
    return audit.python(audit.sandbox(GROUP), probes.ERRNO_OF, statement).stdout.strip()


@contextlib.contextmanager
def _host_listener(family: int, address: str):
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((address, 0))
    listener.listen()
    listener.setblocking(False)
    try:
        yield listener
    finally:
        listener.close()


def _accepted(listener: socket.socket) -> bool:
    try:
        listener.accept()[0].close()
        return True
    except BlockingIOError:
        return False


@case(GROUP, "interfaces", "lo only")
def interfaces(audit: Audit) -> str:
    """The sandbox's network namespace holds one interface: its own loopback."""
    lines = audit.exec(audit.sandbox(GROUP), "cat", ["/proc/net/dev"]).stdout.splitlines()[2:]
    names = sorted(line.split(":")[0].strip() for line in lines)
    return "lo only" if names == ["lo"] else " ".join(names)


@case(GROUP, "routes", "none")
def routes(audit: Audit) -> str:
    """No IPv4 or IPv6 route leads anywhere but the loopback."""
    sandbox = audit.sandbox(GROUP)
    ipv4 = audit.exec(sandbox, "cat", ["/proc/net/route"]).stdout.splitlines()[1:]
    ipv6 = [line for line in audit.exec(sandbox, "cat", ["/proc/net/ipv6_route"]).stdout.splitlines() if not line.rstrip().endswith("lo")]
    return "none" if not ipv4 and not ipv6 else f"{len(ipv4)} IPv4 and {len(ipv6)} IPv6 routes"


@case(GROUP, "host-loopback-tcp", "ECONNREFUSED")
def host_loopback_tcp(audit: Audit) -> str:
    """A service the host runs on 127.0.0.1: from inside, 127.0.0.1 is the sandbox's own loopback."""
    with _host_listener(socket.AF_INET, "127.0.0.1") as listener:
        seen = _connect(audit, "AF_INET", "127.0.0.1", listener.getsockname()[1])
        return "the host accepted a connection from inside" if _accepted(listener) else seen


@case(GROUP, "host-loopback-ipv6", "ECONNREFUSED")
def host_loopback_ipv6(audit: Audit) -> str:
    """A service the host runs on [::1]."""
    try:
        context = _host_listener(socket.AF_INET6, "::1")
        listener = context.__enter__()
    except OSError as exc:
        raise NotApplicable(f"the host has no IPv6 loopback: {exc.strerror}") from None
    try:
        seen = _connect(audit, "AF_INET6", "::1", listener.getsockname()[1])
        return "the host accepted a connection from inside" if _accepted(listener) else seen
    finally:
        context.__exit__(None, None, None)


@case(GROUP, "host-loopback-udp", "nothing arrived")
def host_loopback_udp(audit: Audit) -> str:
    """Datagrams sent from inside to a UDP port the host listens on at 127.0.0.1."""
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    try:
        port = receiver.getsockname()[1]
        statement = f"s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\nfor _ in range(20): s.sendto(b'x', ('127.0.0.1', {port}))"
        audit.python(audit.sandbox(GROUP), probes.ERRNO_OF, statement)
        time.sleep(0.3)
        try:
            receiver.recv(16)
            return "a datagram arrived"
        except BlockingIOError:
            return "nothing arrived"
    finally:
        receiver.close()


@case(GROUP, "host-other-addresses", "ENETUNREACH")
def host_other_addresses(audit: Audit) -> str:
    """A service the host runs on all its addresses, aimed at by each of the host's own
    non-loopback IPv4 addresses: there is no route out of the sandbox to reach them."""
    addresses = sorted({a.address for nic in psutil.net_if_addrs().values() for a in nic
                        if a.family == socket.AF_INET and not a.address.startswith("127.")})
    if not addresses:
        raise NotApplicable("the host has no non-loopback IPv4 address")
    with _host_listener(socket.AF_INET, "0.0.0.0") as listener:
        port = listener.getsockname()[1]
        seen = {_connect(audit, "AF_INET", address, port) for address in addresses}
        return "the host accepted a connection from inside" if _accepted(listener) else " ".join(sorted(seen))


@case(GROUP, "neighbour-sandbox", "ECONNREFUSED")
def neighbour_sandbox(audit: Audit) -> str:
    """A service another sandbox runs on its 127.0.0.1 (which it can reach itself)."""
    neighbour, port = audit.sandbox("network-neighbour"), 8765
    audit.background_python(neighbour, f"import socket\ns = socket.socket()\ns.bind(('127.0.0.1', {port}))\ns.listen()\n"
                                       "while True: s.accept()[0].close()", 6)
    statement = f"s = socket.socket(); s.settimeout(3); s.connect(('127.0.0.1', {port}))"
    deadline = time.monotonic() + 3
    while audit.python(neighbour, probes.ERRNO_OF, statement).stdout.strip() != "ok":  # the control
        if time.monotonic() > deadline:
            return "the neighbour's service did not start"
        time.sleep(0.1)
    return _connect(audit, "AF_INET", "127.0.0.1", port)


@case(GROUP, "name-resolution", "no answer")
def name_resolution(audit: Audit) -> str:
    """Resolving a name finds no resolver: nothing outside answers (the query, if any, goes to the
    sandbox's own loopback)."""
    source = "import socket\ntry:\n    socket.getaddrinfo('isolate-audit.invalid', 80)\n    print('resolved')\nexcept socket.gaierror:\n    print('no answer')"
    return audit.python(audit.sandbox(GROUP), source).stdout.strip()


GVISOR_NETLINK = ("gvisor", "Permission denied", "gVisor's netlink answers EACCES to a process without CAP_NET_ADMIN")


@case(GROUP, "configure-interfaces", "Operation not permitted", differs=(GVISOR_NETLINK,))
def configure_interfaces(audit: Audit) -> str:
    """Add an address, bring up a new interface, add a route: no capability allows it."""
    result = audit.exec(audit.sandbox(GROUP), "ip addr add 10.99.0.1/24 dev lo; ip link add isolate0 type dummy; "
                                              "ip route add default dev lo")
    return _refusal(result.stderr, 3)


def _refusal(stderr: str, count: int) -> str:
    """The refusal every one of `count` changes met, or what else was said."""
    for word in ("Operation not permitted", "Permission denied"):
        if stderr.count(word) == count:
            return word
    return stderr.strip()[:80]


# --- a sandbox with egress ("open"): the host and the other sandboxes stay out of reach ---

UNREACHABLE = {"EHOSTUNREACH", "ENETUNREACH", "ECONNREFUSED", "ETIMEDOUT", "EACCES", "EPERM"}
CONNECT_ALL = (
    "import errno, json, socket, sys\nport = int(sys.argv[1])\nseen = {}\n"
    "for address in sys.argv[2:]:\n"
    "    s = socket.socket(); s.settimeout(3)\n"
    "    try: s.connect((address, port)); seen[address] = 'connected'\n"
    "    except OSError as exc: seen[address] = errno.errorcode.get(exc.errno, 'timeout')\n"
    "    finally: s.close()\n"
    "print(json.dumps(seen))"
)


def _open_sandbox(audit: Audit, key: str):
    sandbox = audit.sandbox(key)
    if sandbox.network.mode != "open":
        sandbox.set_network("open")
    return sandbox


def _reach(audit: Audit, sandbox, port: int, addresses: list[str]) -> dict[str, str]:
    return json.loads(audit.python(sandbox, CONNECT_ALL, str(port), *addresses).stdout)


@case(GROUP, "open-sandbox-host-addresses", "unreachable")
def open_sandbox_host_addresses(audit: Audit) -> str:
    """A sandbox with open egress aims at a service the host runs on every address, through each of
    the host's own IPv4 addresses (its interfaces and the host side of every veth)."""
    sandbox = _open_sandbox(audit, "network-open")
    addresses = sorted({a.address for nic in psutil.net_if_addrs().values() for a in nic
                        if a.family == socket.AF_INET and not a.address.startswith("127.")})
    with _host_listener(socket.AF_INET, "0.0.0.0") as listener:
        seen = _reach(audit, sandbox, listener.getsockname()[1], addresses)
        if _accepted(listener):
            return "the host accepted a connection from inside"
    reached = sorted(address for address, outcome in seen.items() if outcome not in UNREACHABLE)
    return "unreachable" if not reached else "reached " + " ".join(reached)


@case(GROUP, "open-sandbox-host-loopback", "ECONNREFUSED")
def open_sandbox_host_loopback(audit: Audit) -> str:
    """With open egress too, 127.0.0.1 is the sandbox's own loopback, not the host's."""
    sandbox = _open_sandbox(audit, "network-open")
    with _host_listener(socket.AF_INET, "127.0.0.1") as listener:
        seen = _reach(audit, sandbox, listener.getsockname()[1], ["127.0.0.1"])["127.0.0.1"]
        return "the host accepted a connection from inside" if _accepted(listener) else seen


@case(GROUP, "open-sandbox-neighbour", "unreachable")
def open_sandbox_neighbour(audit: Audit) -> str:
    """Two sandboxes with open egress: one listens on all its addresses, the other cannot reach it."""
    attacker, neighbour, port = _open_sandbox(audit, "network-open"), _open_sandbox(audit, "network-open-neighbour"), 8766
    address = audit.exec(neighbour, "ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1").stdout.strip()
    if not address:
        return "the neighbour has no address"
    audit.background_python(neighbour, f"import socket\ns = socket.socket()\ns.bind(('0.0.0.0', {port}))\ns.listen()\n"
                                       "while True: s.accept()[0].close()", 6)
    deadline = time.monotonic() + 3
    while _reach(audit, neighbour, port, [address])[address] != "connected":  # the control: it serves on that address
        if time.monotonic() > deadline:
            return "the neighbour's service did not start"
        time.sleep(0.1)
    outcome = _reach(audit, attacker, port, [address])[address]
    return "unreachable" if outcome in UNREACHABLE else outcome


@case(GROUP, "open-sandbox-configure-network", "Operation not permitted", differs=(GVISOR_NETLINK,))
def open_sandbox_configure_network(audit: Audit) -> str:
    """With an interface to play with: take another address, change the default route, bring eth0 down."""
    sandbox = _open_sandbox(audit, "network-open")
    result = audit.exec(sandbox, "ip addr add 10.99.0.1/24 dev eth0; ip route replace default dev lo; ip link set eth0 down")
    return _refusal(result.stderr, 3)
