"""Each sandbox's network, from start to destroy: namespace, veth, addresses, firewall rules, name files.

Every jail runs in a named namespace of its own (/run/netns/<instance>.<sandbox>). With policy
"none" and no exposed port it holds only `lo`. Egress (open, allowlist) or an exposed port adds
a veth pair: `eth0` inside with the sandbox's address of its /30, the host's side routed, and
the instance's nftables table deciding what passes. Because the namespace outlives any policy,
a policy change or an exposed port applies live: nothing restarts, running processes see
`eth0` come or go.

A start rebuilds the namespace from the record; a stop or a destroy removes namespace, veth
and rules (a destroy also frees the /30); start-up clean-up removes what a crash left.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from . import names, netns, nft
from .policy import NetworkPolicy
from .pool import AddressPool, Slot, host_lock

if TYPE_CHECKING:
    from ..config import Settings


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

    # --- names: all derived from the instance and the sandbox's name, so a crash loses nothing ---

    def netns_name(self, name: str) -> str:
        return f"{self.instance}.{name}"

    def interface(self, name: str) -> str:
        """The host side's veth: 15 characters at most (IFNAMSIZ); the alias says whose it is."""
        return "iv" + hashlib.sha256(self.netns_name(name).encode()).hexdigest()[:13]

    def alias(self, name: str) -> str:
        return f"isolate {self.netns_name(name)}"

    @staticmethod
    def files(sandbox_dir: Path) -> tuple[Path, Path]:
        folder = sandbox_dir / "net"
        return folder / "hosts", folder / "resolv.conf"

    @property
    def nameservers(self) -> tuple[str, ...]:
        return self._nameservers if self._nameservers is not None else names.host_nameservers()

    # --- lifecycle ---

    def prepare(self, name: str, sandbox_dir: Path, policy: NetworkPolicy, ports: Iterable[int]) -> JailNetwork:
        """Before the jail starts: a fresh namespace, set up as the record says."""
        self.release(name)  # whatever an earlier run left
        path = netns.create(self.netns_name(name))
        try:
            self._configure(name, sandbox_dir, path, policy, tuple(ports))
        except BaseException:
            self.release(name)
            raise
        hosts, resolv = self.files(sandbox_dir)
        return JailNetwork(path, ((str(hosts), "/etc/hosts"), (str(resolv), "/etc/resolv.conf")))

    def update(self, name: str, sandbox_dir: Path, policy: NetworkPolicy, ports: Iterable[int]) -> bool:
        """Apply a changed policy or port list to a running sandbox, live. False if it has no namespace now."""
        path = netns.path_of(self.netns_name(name))
        if not path.exists():
            return False
        self._configure(name, sandbox_dir, path, policy, tuple(ports))
        return True

    def _configure(self, name: str, sandbox_dir: Path, path: Path, policy: NetworkPolicy, ports: tuple[int, ...]) -> None:
        resolved = policy.resolve(self.resolver)
        interface = self.interface(name)
        with host_lock():
            if policy.has_egress or ports:
                slot = self.pool.recorded(name) if Path(f"/sys/class/net/{interface}").exists() else None
                if slot is None:
                    netns.detach_veth(interface)
                    slot = self.pool.claim(name)
                    netns.attach_veth(path, interface, self.alias(name), slot)
                if not nft.table_exists(self.table):
                    nft.run(nft.skeleton(self.table, self.pool.pool))
                if policy.has_egress:
                    netns.enable_forwarding()
                nft.run(nft.apply_sandbox(self.table, interface, policy.mode, resolved.destinations,
                                          slot.expose_address, slot.sandbox_address, ports))
            else:
                self._unwire(name)
        hosts, resolv = self.files(sandbox_dir)
        hosts.parent.mkdir(mode=0o755, exist_ok=True)
        names.write_in_place(hosts, names.hosts_file(resolved))
        names.write_in_place(resolv, names.resolv_conf(resolved, self.nameservers))

    def _unwire(self, name: str) -> None:
        """Remove the sandbox's rules and veth (host lock held)."""
        slot = self.pool.recorded(name)
        interface = self.interface(name)
        if slot is not None and nft.table_exists(self.table):
            nft.run(nft.remove_sandbox(self.table, interface, slot.expose_address))
            if not nft.sandbox_interfaces(self.table):
                nft.delete_table(self.table)  # the instance's last wired sandbox is gone
        netns.detach_veth(interface)

    def release(self, name: str) -> None:
        """After the jail stopped: rules, veth and namespace go; the sandbox keeps its /30 for next time."""
        with host_lock():
            self._unwire(name)
        netns.remove(self.netns_name(name))

    def forget(self, name: str) -> None:
        """The sandbox is destroyed: release everything, its /30 included."""
        self.release(name)
        with host_lock():
            self.pool.release([name])

    def expose_slot(self, name: str) -> Slot:
        """The sandbox's /30 (claimed now if it never had one): where its exposed ports answer."""
        with host_lock():
            return self.pool.recorded(name) or self.pool.claim(name)

    def reaches(self, policy: NetworkPolicy, host: str, port: int) -> bool:
        """Would this policy let the sandbox reach `host`:`port`? (the same resolution the firewall gets)"""
        if not policy.has_egress:
            return False
        return policy.resolve(self.resolver).allows(host, port)

    # --- after a crash ---

    def clean_leftovers(self, known: set[str], running: set[str]) -> list[str]:
        """Remove namespaces, veths and rules of sandboxes that are gone or not running, and /30s of gone ones."""
        removed = []
        prefix = f"{self.instance}."
        owners = {ns[len(prefix):] for ns in netns.names(prefix)}
        owners |= {alias[len(self.alias("")):] for alias in netns.veths_by_alias(self.alias(""))}
        for name in sorted(owners - running):
            self.release(name)
            removed.append(f"network:{name}")
        with host_lock():
            if nft.table_exists(self.table):
                live = {self.interface(name) for name in running}
                orphans = [interface for interface in nft.sandbox_interfaces(self.table) if interface not in live]
                for interface in orphans:
                    nft.run(nft.remove_sandbox(self.table, interface, nft.expose_address_of(self.table, interface)))
                    removed.append(f"rules:{interface}")
                if not running and not nft.sandbox_interfaces(self.table):
                    nft.delete_table(self.table)
            gone = [name for name in self.pool.names() if name not in known]
            self.pool.release(gone)
        removed += [f"address:{name}" for name in gone]
        return removed
