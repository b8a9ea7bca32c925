"""Each sandbox's network, from start to destroy: namespace, veth, addresses, firewall rules, name files.

Every jail runs in a network namespace of its own, made for it at start. With policy "none"
and no exposed port it holds only `lo`. Egress (open, allowlist) or an exposed port adds a
veth pair: `eth0` inside with the sandbox's address of its /30, the host's side routed, and
the instance's nftables table deciding what passes. Because the namespace outlives any policy,
a policy change or an exposed port applies live: nothing restarts, running processes see
`eth0` come or go.

The namespace lives exactly as long as the jail (see netns.py). A start rebuilds everything
from the record; a stop or a destroy removes the veth and rules (a destroy also frees the
/30); start-up clean-up removes what a crash left. Everything is keyed by the sandbox's uid,
which stays when a sandbox is renamed (a warm-pool spare handed out under a new name).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import names, netns, nft
from .policy import NetworkPolicy
from .pool import AddressPool, Slot, host_lock

if TYPE_CHECKING:
    from ..config import Settings
    from ..record import SandboxRecord

NETNS_FILE = "netns"  # in the run folder: the inode of the jail's namespace, to find it again for live changes


@dataclass(frozen=True)
class JailNetwork:
    """What a jail needs from its network: the namespace to join and the files to bind over /etc."""

    netns: Path
    files: tuple[tuple[str, str], ...]  # (host file, path inside)


class SandboxNetworks:
    def __init__(self, settings: Settings):
        self.instance = settings.instance
        self.table = settings.instance
        self.pool = AddressPool(settings.network_pool, settings.state_dir / "network")
        self.resolver = settings.resolver
        self._nameservers = settings.nameservers

    # --- names: all derived from the instance and the sandbox's uid, so a crash or a rename loses nothing ---

    @staticmethod
    def key(record: SandboxRecord) -> str:
        return f"uid-{record.uid}"

    def interface(self, record: SandboxRecord) -> str:
        """The host side's veth: 15 characters at most (IFNAMSIZ); the alias says whose it is."""
        return "iv" + hashlib.sha256(f"{self.instance}/{self.key(record)}".encode()).hexdigest()[:13]

    def alias(self, key: str) -> str:
        return f"isolate {self.instance} {key}"

    @staticmethod
    def files(run_dir: Path) -> tuple[Path, Path]:
        return run_dir / "hosts", run_dir / "resolv.conf"

    @property
    def nameservers(self) -> tuple[str, ...]:
        return self._nameservers if self._nameservers is not None else names.host_nameservers()

    # --- lifecycle ---

    @contextlib.contextmanager
    def attached(self, record: SandboxRecord, run_dir: Path) -> Iterator[JailNetwork]:
        """A fresh namespace for a starting jail, set up as the record says; held open until the jail is in it."""
        netns.detach_veth(self.interface(record))  # an earlier run's (its rules are rewritten below)
        fd = netns.create()
        try:
            self._configure(record, run_dir, fd)
            (run_dir / NETNS_FILE).write_text(str(netns.inode(fd)))
            hosts, resolv = self.files(run_dir)
            yield JailNetwork(netns.path_of(fd), ((str(hosts), "/etc/hosts"), (str(resolv), "/etc/resolv.conf")))
        except BaseException:
            self.release(record)
            raise
        finally:
            os.close(fd)

    def update(self, record: SandboxRecord, run_dir: Path, members: Collection[int]) -> bool:
        """Apply a changed policy or port list to a running sandbox, live. False if its jail is not running.

        The jail is found by its supervisor's pid, which must still be one of `members` (the
        sandbox's cgroup) and still be in the namespace recorded at start: pids get reused."""
        try:
            pid, inode = (int((run_dir / name).read_text()) for name in ("pid", NETNS_FILE))
        except (OSError, ValueError):
            return False
        fd = netns.of_process(pid, inode) if pid in members else None
        if fd is None:
            return False
        try:
            self._configure(record, run_dir, fd)
        finally:
            os.close(fd)
        return True

    def _configure(self, record: SandboxRecord, run_dir: Path, fd: int) -> None:
        policy, ports = record.network, record.exposed_ports
        resolved = policy.resolve(self.resolver)
        interface = self.interface(record)
        with host_lock():
            if policy.has_egress or ports:
                slot = self.pool.recorded(self.key(record)) if Path(f"/sys/class/net/{interface}").exists() else None
                if slot is None:
                    netns.detach_veth(interface)
                    slot = self.pool.claim(self.key(record))
                    netns.attach_veth(fd, interface, self.alias(self.key(record)), slot)
                if not nft.table_exists(self.table):
                    nft.run(nft.skeleton(self.table, self.pool.pool))
                if policy.has_egress:
                    netns.enable_forwarding()
                nft.apply_sandbox(self.table, interface, policy.mode, resolved.destinations, slot.expose_address, slot.sandbox_address, ports)
            else:
                self._unwire(self.key(record), interface)
        hosts, resolv = self.files(run_dir)
        names.write_in_place(hosts, names.hosts_file(resolved))
        names.write_in_place(resolv, names.resolv_conf(resolved, self.nameservers))

    def _unwire(self, key: str, interface: str) -> bool:
        """Remove a sandbox's rules and veth (host lock held); whether there was any."""
        found = False
        if self.pool.recorded(key) is not None and nft.table_exists(self.table):  # no /30: never wired, no rules
            found = nft.remove_sandbox(self.table, interface)
            if found and not nft.sandbox_interfaces(self.table):
                nft.delete_table(self.table)  # the instance's last wired sandbox is gone
        return netns.detach_veth(interface) or found

    def release(self, record: SandboxRecord) -> bool:
        """The jail stopped (its namespace went with it): its rules and veth go; it keeps its /30 for next time."""
        with host_lock():
            return self._unwire(self.key(record), self.interface(record))

    def forget(self, record: SandboxRecord) -> None:
        """The sandbox is destroyed: release everything, its /30 included."""
        with host_lock():
            self._unwire(self.key(record), self.interface(record))
            self.pool.release([self.key(record)])

    def expose_slot(self, record: SandboxRecord) -> Slot:
        """The sandbox's /30 (claimed now if it never had one): where its exposed ports answer."""
        with host_lock():
            return self.pool.recorded(self.key(record)) or self.pool.claim(self.key(record))

    def reaches(self, policy: NetworkPolicy, host: str, port: int) -> bool:
        """Would this policy let the sandbox reach `host`:`port`? (the same resolution the firewall gets)"""
        if not policy.has_egress:
            return False
        return policy.resolve(self.resolver).allows(host, port)

    # --- after a crash ---

    def clean_leftovers(self, known: list[SandboxRecord]) -> list[str]:
        """Remove the veths, rules and /30s of sandboxes that no longer exist (a crash half-way through a destroy)."""
        removed = []
        keys = {self.key(record) for record in known}
        interfaces = {self.interface(record) for record in known}
        with host_lock():
            for alias, interface in netns.veths_by_alias(self.alias("")).items():
                if alias.rsplit(" ", 1)[1] not in keys:
                    netns.detach_veth(interface)
                    removed.append(f"veth:{alias.rsplit(' ', 1)[1]}")
            if nft.table_exists(self.table):
                for interface in nft.sandbox_interfaces(self.table):
                    if interface not in interfaces:
                        nft.remove_sandbox(self.table, interface)
                        removed.append(f"rules:{interface}")
                if not nft.sandbox_interfaces(self.table):
                    nft.delete_table(self.table)
            gone = sorted(set(self.pool.names()) - keys)
            self.pool.release(gone)
        return removed + [f"address:{key}" for key in gone]
