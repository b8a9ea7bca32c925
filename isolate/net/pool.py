"""Addresses for sandboxes: a private IPv4 pool carved into /30s, one per sandbox.

A sandbox keeps its /30 from the first time it needs one until it is destroyed (recorded
in <state>/network/slots.json), so its addresses and its exposed loopback address stay the
same across restarts. Several state folders may share a host: the kernel's routing table
is the host-wide truth (a /30 in use has a route on its host-side veth), and allocation
holds a host-wide lock, so no two sandboxes of any instance ever share a /30.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import IsolateError, ValidationError
from .policy import never_reachable

HOST_LOCK = Path("/run/lock/isolate-network.lock")
# Exposed ports answer on a loopback address of their own: 127.128.0.0 plus the sandbox's offset in the pool.
EXPOSE_BASE = ipaddress.IPv4Address("127.128.0.0")
MIN_POOL_PREFIX = 9  # the loopback mirror of the pool must fit in 127.128.0.0/9
MAX_POOL_PREFIX = 28


@contextlib.contextmanager
def host_lock() -> Iterator[None]:
    """Serializes address allocation and firewall changes across every isolate process on the host."""
    HOST_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(HOST_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_pool(cidr: str) -> ipaddress.IPv4Network:
    try:
        pool = ipaddress.IPv4Network(cidr)
    except ValueError:
        raise ValidationError(f"network pool must be an IPv4 network like 10.213.0.0/16: {cidr!r}") from None
    if not MIN_POOL_PREFIX <= pool.prefixlen <= MAX_POOL_PREFIX or not pool.is_private or never_reachable(pool):
        raise ValidationError(f"network pool {cidr} must be a private IPv4 network from /{MIN_POOL_PREFIX} to /{MAX_POOL_PREFIX}")
    return pool


@dataclass(frozen=True)
class Slot:
    """A sandbox's /30: the host side's address, the sandbox's, and the loopback address its ports are exposed on."""

    pool: ipaddress.IPv4Network
    index: int

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network((int(self.pool.network_address) + 4 * self.index, 30))

    @property
    def host_address(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def sandbox_address(self) -> str:
        return str(self.subnet.network_address + 2)

    @property
    def expose_address(self) -> str:
        return str(EXPOSE_BASE + (int(self.subnet.network_address) - int(self.pool.network_address) + 2))


def host_routes(table: Path = Path("/proc/net/route")) -> list[ipaddress.IPv4Network]:
    """The IPv4 routes of the host's main table (default route excluded): what is already in use."""
    routes = []
    for line in table.read_text().splitlines()[1:]:
        fields = line.split()
        destination, mask = (ipaddress.IPv4Address(bytes.fromhex(value)[::-1]) for value in (fields[1], fields[7]))
        if int(mask) == 0:
            continue
        routes.append(ipaddress.IPv4Network(f"{destination}/{mask}", strict=False))
    return routes


class AddressPool:
    def __init__(self, cidr: str, state_dir: Path):
        self.pool = check_pool(cidr)
        self.file = state_dir / "slots.json"

    def _load(self) -> dict[str, int]:
        try:
            data = json.loads(self.file.read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return {str(k): int(v) for k, v in data.items() if isinstance(v, int)} if isinstance(data, dict) else {}

    def _save(self, slots: dict[str, int]) -> None:
        self.file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        temp = self.file.with_suffix(f".{os.getpid()}.tmp")
        temp.write_text(json.dumps(slots, sort_keys=True))
        temp.rename(self.file)

    def recorded(self, name: str) -> Slot | None:
        index = self._load().get(name)
        return Slot(self.pool, index) if index is not None else None

    def claim(self, name: str) -> Slot:
        """The sandbox's /30: its recorded one if no one else took it meanwhile, else the lowest free one.

        Call with `host_lock()` held, and create the veth before releasing it."""
        slots = self._load()
        routed = self._routed_indices()
        index = slots.get(name)
        if index is None or index in routed:
            taken = routed | set(slots.values())
            index = next((i for i in range(self.pool.num_addresses // 4) if i not in taken), None)
            if index is None:
                raise IsolateError(f"no free /30 left in the sandbox network pool {self.pool} (in use, or overlapping the host's "
                                   "routes): set ISOLATE_NETWORK_POOL", code="RESOURCE_BUSY")
            slots[name] = index
            self._save(slots)
        return Slot(self.pool, index)

    def _routed_indices(self) -> set[int]:
        """The /30s of the pool that some route of the host already covers."""
        start, end = int(self.pool.network_address), int(self.pool.broadcast_address)
        indices: set[int] = set()
        for route in host_routes():
            low, high = max(start, int(route.network_address)), min(end, int(route.broadcast_address))
            if low <= high:
                indices.update(range((low - start) // 4, (high - start) // 4 + 1))
        return indices

    def release(self, names: list[str]) -> None:
        """Forget the /30s of destroyed sandboxes."""
        slots = self._load()
        if any(name in slots for name in names):
            for name in names:
                slots.pop(name, None)
            self._save(slots)

    def names(self) -> list[str]:
        return sorted(self._load())

