"""Name resolution inside a sandbox, as its policy decides: /etc/hosts and /etc/resolv.conf.

Allowlist: the host resolves the listed names when the policy is applied (start, set_network)
and writes them into the sandbox's /etc/hosts; /etc/resolv.conf names no server, so a lookup
of anything else fails at once (glibc falls back to the sandbox's own 127.0.0.1, where nothing
listens). No DNS query ever leaves the sandbox, so DNS cannot carry data to an unlisted name.
Open: the host's own name servers (loopback ones excepted: they are the host's services).
None: localhost only.
Both files are bound read-only into the jail and rewritten in place on a policy change.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from pathlib import Path

from .policy import Resolved, never_reachable

BASE_HOSTS = "127.0.0.1\tlocalhost\n::1\tlocalhost\n127.0.1.1\tsandbox\n"


def host_nameservers(resolv_conf: Path = Path("/etc/resolv.conf")) -> tuple[str, ...]:
    servers = []
    with contextlib.suppress(OSError):
        for line in resolv_conf.read_text().splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] == "nameserver":
                try:
                    address = ipaddress.IPv4Address(fields[1])
                except ValueError:
                    continue
                if not never_reachable(ipaddress.IPv4Network(address)):
                    servers.append(str(address))
    return tuple(servers[:3])


def hosts_file(resolved: Resolved) -> str:
    return BASE_HOSTS + "".join(f"{address}\t{name}\n" for address, name in resolved.hosts)


def resolv_conf(resolved: Resolved, nameservers: tuple[str, ...]) -> str:
    if resolved.mode != "open":
        return "# no name server: this sandbox resolves only the names in /etc/hosts\n"
    return "".join(f"nameserver {server}\n" for server in nameservers) + "options timeout:2 attempts:2\n"


def write_in_place(path: Path, text: str) -> None:
    """Rewrite a file keeping its inode: a running jail has it bound, and a rename would not reach it."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
    try:
        data = text.encode()
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        os.fchmod(fd, 0o644)
    finally:
        os.close(fd)
