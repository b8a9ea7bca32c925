"""A sandbox's network policy: none, open, or an allowlist of hosts, addresses and ports.

Pure parsing and checking; nothing here touches the host. The policy is what the caller
asked for; `resolve` turns it into concrete IPv4 destinations (names looked up on the
host, never by the sandbox) that the firewall and the sandbox's /etc/hosts are built from.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ValidationError

Mode = Literal["none", "open", "allowlist"]
MODES: tuple[Mode, ...] = ("none", "open", "allowlist")
MAX_ALLOW_ENTRIES = 256
MAX_ADDRESSES_PER_NAME = 16

# Never reachable from a sandbox, whatever its policy: the host's own loopback, link-local
# (cloud metadata at 169.254.169.254 and the like), multicast, reserved space, and the
# metadata services of clouds that do not use link-local for it (Alibaba, Azure's wire server).
NEVER_REACHABLE = tuple(
    ipaddress.IPv4Network(cidr)
    for cidr in ("0.0.0.0/8", "127.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "240.0.0.0/4", "100.100.100.200/32", "168.63.129.16/32")
)

HOST_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")

Resolver = Callable[[str], list[str]]


def system_resolver(name: str) -> list[str]:
    """The host's own resolver (its /etc/hosts and DNS), IPv4 only: what an allowlisted name means."""
    try:
        infos = socket.getaddrinfo(name, None, family=socket.AF_INET, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        return []
    return sorted({str(info[4][0]) for info in infos})


def never_reachable(network: ipaddress.IPv4Network, extra: Iterable[ipaddress.IPv4Network] = ()) -> bool:
    """True when every address of `network` is one no sandbox may reach."""
    return any(network.subnet_of(blocked) for blocked in (*NEVER_REACHABLE, *extra))


def check_host_name(name: str) -> str:
    """A DNS host name (RFC 1123), lower-cased, without a trailing dot."""
    host = name.lower().removesuffix(".")
    if not host or len(host) > 253 or not all(HOST_LABEL.fullmatch(label) for label in host.split(".")):
        raise ValidationError(f"not a valid host name: {name[:80]!r}")
    if all(label.isdigit() for label in host.split(".")):
        raise ValidationError(f"not a valid IPv4 address: {name[:80]!r}")
    return host


def parse_port(text: str, entry: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise ValidationError(f"bad port in allowlist entry {entry[:80]!r}: use 1-65535")
    return int(text)


@dataclass(frozen=True)
class AllowEntry:
    """One allowlist entry: a host name or an IPv4 network, and a port (None: every port)."""

    host: str | None = None
    network: ipaddress.IPv4Network | None = None
    port: int | None = None

    @classmethod
    def parse(cls, text: object) -> AllowEntry:
        """`host`, `host:port`, `1.2.3.4`, `1.2.3.4:443`, `10.0.0.0/8` or `10.0.0.0/8:443`."""
        if not isinstance(text, str) or not text or len(text) > 300 or not text.isprintable() or " " in text:
            raise ValidationError(f"allowlist entries are strings like 'host', 'host:443' or '10.0.0.0/8': {str(text)[:80]!r}")
        if text.startswith("[") or text.count(":") > 1:
            raise ValidationError(f"IPv6 destinations are not supported (sandboxes get IPv4 egress only): {text[:80]!r}")
        target, sep, port_text = text.partition(":")
        port = parse_port(port_text, text) if sep else None
        if re.fullmatch(r"[0-9./]+", target):
            try:
                network = ipaddress.IPv4Network(target, strict=False)
            except ValueError:
                raise ValidationError(f"not a valid IPv4 address or network: {target[:80]!r}") from None
            if never_reachable(network):
                raise ValidationError(f"{network} is never reachable from a sandbox (host loopback, link-local, metadata or reserved)")
            return cls(network=network, port=port)
        return cls(host=check_host_name(target), port=port)

    def __str__(self) -> str:
        target = self.host if self.host is not None else str(self.network).removesuffix("/32")
        return target if self.port is None else f"{target}:{self.port}"


@dataclass(frozen=True)
class Destination:
    """A resolved allowlist entry: what the firewall lets through."""

    network: ipaddress.IPv4Network
    port: int | None


@dataclass(frozen=True)
class Resolved:
    """A policy made concrete: firewall destinations and the names the sandbox may look up."""

    mode: Mode
    destinations: tuple[Destination, ...] = ()
    hosts: tuple[tuple[str, str], ...] = ()  # (address, name) lines for the sandbox's /etc/hosts

    def allows(self, host: str, port: int) -> bool:
        """Would the firewall let a sandbox reach `host` (a name or an IPv4 literal) on `port`?

        A name counts only when the policy lists it: the sandbox has no DNS server to ask."""
        try:
            address = ipaddress.IPv4Address(host)
        except ValueError:
            if self.mode == "open":
                return True
            name = host.lower().removesuffix(".")
            return any(listed == name and self._lets_through(ipaddress.IPv4Address(ip), port) for ip, listed in self.hosts)
        return self._lets_through(address, port)

    def _lets_through(self, address: ipaddress.IPv4Address, port: int) -> bool:
        if never_reachable(ipaddress.IPv4Network(address)):
            return False
        if self.mode == "open":
            return True
        return any(address in d.network and d.port in (None, port) for d in self.destinations)


@dataclass(frozen=True)
class NetworkPolicy:
    """none (only loopback), open (egress anywhere the host reaches), or allowlist (egress only to `allow`)."""

    mode: Mode = "none"
    allow: tuple[AllowEntry, ...] = ()

    @classmethod
    def parse(cls, value: object) -> NetworkPolicy:
        """"none", "open", {"allow": [...]}, or a NetworkPolicy."""
        if isinstance(value, NetworkPolicy):
            return value
        if value is None or value == "none":
            return cls()
        if value == "open":
            return cls(mode="open")
        if isinstance(value, dict) and set(value) <= {"allow", "mode"} and value.get("mode", "allowlist") == "allowlist":
            entries = value.get("allow")
            if not isinstance(entries, (list, tuple)):
                raise ValidationError('network allowlist must be {"allow": ["host", "host:port", "CIDR", ...]}')
            if len(entries) > MAX_ALLOW_ENTRIES:
                raise ValidationError(f"network allowlist has more than {MAX_ALLOW_ENTRIES} entries")
            parsed = tuple(dict.fromkeys(AllowEntry.parse(entry) for entry in entries))
            return cls(mode="allowlist", allow=parsed)
        if isinstance(value, dict) and value.get("mode") in ("none", "open") and set(value) == {"mode"}:
            return cls(mode=value["mode"])
        raise ValidationError(f'network must be "none", "open" or {{"allow": [...]}}, not {str(value)[:80]!r}')

    def to_dict(self) -> dict[str, Any]:
        if self.mode == "allowlist":
            return {"mode": "allowlist", "allow": [str(entry) for entry in self.allow]}
        return {"mode": self.mode}

    @property
    def has_egress(self) -> bool:
        return self.mode != "none"

    def resolve(self, resolver: Resolver) -> Resolved:
        if self.mode != "allowlist":
            return Resolved(self.mode)
        destinations: dict[Destination, None] = {}
        hosts: dict[tuple[str, str], None] = {}
        for entry in self.allow:
            if entry.network is not None:
                destinations[Destination(entry.network, entry.port)] = None
                continue
            assert entry.host is not None
            for address in resolver(entry.host)[:MAX_ADDRESSES_PER_NAME]:
                try:
                    network = ipaddress.IPv4Network(address)
                except ValueError:
                    continue
                if never_reachable(network):
                    continue  # a name that resolves to loopback or metadata gets nothing (DNS rebinding)
                destinations[Destination(network, entry.port)] = None
                hosts[(address, entry.host)] = None
        return Resolved("allowlist", tuple(destinations), tuple(hosts))
