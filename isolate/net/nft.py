"""The host firewall for sandboxes: one nftables table per state instance, driven through libnftables.

Its chains are fixed; a sandbox is only elements of its sets and maps, keyed by the host side of
its veth. That matters: on the kernels measured here every transaction that touches a chain or a
rule costs ~16 ms (an RCU grace period), while adding or deleting elements costs ~0.1 ms.

Layout of `table inet <instance>` (rendered by `skeleton`):
  set ifaces                 host-side veths of this instance's sandboxes
  set open_ifaces            ... of those with policy open
  set allow_hosts            veth . network: allowlist entries without a port (any protocol)
  set allow_ports            veth . network . tcp|udp . port: allowlist entries with one
  map expose                 127.128.x.y . port -> sandbox address . port: exposed ports
  set exposed                veth . 127.128.x.y . port: what `to_sandbox` lets through
  chain input   (hook)       from a sandbox to the host itself (any address, any service): rejected,
                             except replies on connections the host opened (exposed ports)
  chain forward (hook)       from a sandbox: `egress`; to a sandbox: only replies, nothing new
  chain egress               never-reachable ranges and the pool (other sandboxes) rejected, a cap on
                             concurrent connections per sandbox, then open / allow_hosts /
                             allow_ports accept; anything else rejected
  chain output  (hook)       host processes do not connect to a sandbox's address directly
  chain nat_output (hook)    DNAT through `expose`
  chain to_sandbox (hook)    (postrouting, where the veth a DNAT-ed packet leaves by is known) a
                             connection DNAT-ed to a sandbox passes only if it was made to that
                             sandbox's own exposed address and port (`exposed`), not DNAT-ed there
                             by a stale rule or another program
  chain postrouting (hook)   masquerade: sandbox egress behind the host, exposed traffic behind the veth
Every per-sandbox change is one atomic transaction. libnftables is called in-process (0.1 ms
a call against 2 ms for running `nft`); it comes with Debian's `nftables` package.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import ipaddress
import json
import threading
from collections.abc import Iterable
from typing import Any

from ..errors import HostError
from .policy import NEVER_REACHABLE, Destination

MAX_CONNECTIONS = 4096  # concurrent connections per sandbox: its share of the host's conntrack table

_library: ctypes.CDLL | None = None
_lock = threading.Lock()


def _load() -> ctypes.CDLL:
    global _library
    if _library is None:
        path = ctypes.util.find_library("nftables") or "libnftables.so.1"
        try:
            library = ctypes.CDLL(path)
        except OSError:
            raise HostError("libnftables not found: apt-get install nftables") from None
        library.nft_ctx_new.restype = ctypes.c_void_p
        library.nft_ctx_new.argtypes = [ctypes.c_uint32]
        library.nft_ctx_free.argtypes = [ctypes.c_void_p]
        for function in (library.nft_ctx_buffer_output, library.nft_ctx_buffer_error):
            function.argtypes = [ctypes.c_void_p]
        library.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        library.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        for function in (library.nft_ctx_get_output_buffer, library.nft_ctx_get_error_buffer):
            function.argtypes = [ctypes.c_void_p]
            function.restype = ctypes.c_char_p
        _library = library
    return _library


def available() -> bool:
    try:
        _load()
        return True
    except HostError:
        return False


def run(script: str, *, as_json: bool = False) -> str:
    """Run nft commands (one transaction); their output. Raises HostError with nft's message."""
    library = _load()
    with _lock:
        ctx = library.nft_ctx_new(0)
        try:
            library.nft_ctx_buffer_output(ctx)
            library.nft_ctx_buffer_error(ctx)
            if as_json:
                library.nft_ctx_output_set_flags(ctx, 1 << 4)  # NFT_CTX_OUTPUT_JSON
            status = library.nft_run_cmd_from_buffer(ctx, script.encode())
            output = (library.nft_ctx_get_output_buffer(ctx) or b"").decode(errors="replace")
            error = (library.nft_ctx_get_error_buffer(ctx) or b"").decode(errors="replace")
        finally:
            library.nft_ctx_free(ctx)
    if status != 0:
        raise HostError(f"nftables refused the sandbox firewall change: {error.strip()[:2000]}", context={"script": script[:2000]})
    return output


def table_exists(table: str) -> bool:
    try:
        run(f"list chain inet {table} input")
        return True
    except HostError:
        return False


def skeleton(table: str, pool: ipaddress.IPv4Network) -> str:
    never = ", ".join(str(network) for network in (*NEVER_REACHABLE, pool))
    reject = "reject with icmpx admin-prohibited"
    return f"""
table inet {table} {{
  set ifaces {{ type ifname; }}
  set open_ifaces {{ type ifname; }}
  set allow_hosts {{ type ifname . ipv4_addr; flags interval; }}
  set allow_ports {{ type ifname . ipv4_addr . inet_proto . inet_service; flags interval; }}
  map expose {{ type ipv4_addr . inet_service : ipv4_addr . inet_service; }}
  set exposed {{ type ifname . ipv4_addr . inet_service; }}
  set never {{ type ipv4_addr; flags interval; elements = {{ {never} }}; }}
  set connections {{ type ifname; size 65535; flags dynamic; }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname @ifaces ct state established,related accept
    iifname @ifaces {reject}
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname @ifaces jump egress
    oifname @ifaces ct state established,related accept
    oifname @ifaces drop
  }}
  chain egress {{
    meta nfproto ipv6 drop
    ip daddr @never {reject}
    ct state new add @connections {{ iifname ct count over {MAX_CONNECTIONS} }} {reject}
    iifname @open_ifaces accept
    iifname . ip daddr @allow_hosts accept
    meta l4proto {{ tcp, udp }} iifname . ip daddr . meta l4proto . th dport @allow_ports accept
    {reject}
  }}
  chain output {{
    type filter hook output priority filter; policy accept;
    oifname @ifaces ct state established,related accept
    oifname @ifaces {reject}
  }}
  chain to_sandbox {{
    type filter hook postrouting priority filter; policy accept;
    oifname @ifaces ct direction original ct status dnat oifname . ct original ip daddr . tcp dport @exposed accept
    oifname @ifaces ct direction original ct status dnat drop
  }}
  chain nat_output {{
    type nat hook output priority -100; policy accept;
    meta l4proto tcp dnat ip to ip daddr . tcp dport map @expose
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname @ifaces ip saddr 127.0.0.0/8 masquerade
    iifname @ifaces oifname != @ifaces masquerade
  }}
}}
"""


def sandbox_elements(interface: str, mode: str, destinations: Iterable[Destination], expose_address: str, sandbox_address: str,
                     ports: Iterable[int]) -> list[tuple[str, str]]:
    """(set, element) pairs that make up one sandbox in the table. Overlapping networks are merged: interval sets refuse overlaps."""
    veth = f'"{interface}"'
    elements = [("ifaces", veth)]
    if mode == "open":
        elements.append(("open_ifaces", veth))
    by_port: dict[int | None, list[ipaddress.IPv4Network]] = {}
    for destination in destinations:
        by_port.setdefault(destination.port, []).append(destination.network)
    for port, networks in sorted(by_port.items(), key=lambda item: item[0] or 0):
        for merged in ipaddress.collapse_addresses(networks):
            network = merged.network_address if merged.prefixlen == 32 else merged  # as nft lists it
            if port is None:
                elements.append(("allow_hosts", f"{veth} . {network}"))
            else:
                elements += [("allow_ports", f"{veth} . {network} . {proto} . {port}") for proto in ("tcp", "udp")]
    for port in sorted(set(ports)):
        elements.append(("expose", f"{expose_address} . {port} : {sandbox_address} . {port}"))
        elements.append(("exposed", f"{veth} . {expose_address} . {port}"))
    return elements


def _render(value: Any) -> str:
    """One field of an element listed in JSON, back in nft's syntax."""
    if isinstance(value, dict) and "prefix" in value:
        return f"{value['prefix']['addr']}/{value['prefix']['len']}"
    if isinstance(value, dict) and "range" in value:
        return "-".join(str(part) for part in value["range"])
    return f'"{value}"' if isinstance(value, str) and not value[:1].isdigit() and value not in ("tcp", "udp") else str(value)


def listed_elements(table: str, interface: str) -> list[tuple[str, str]]:
    """(set, element key) pairs the table now holds for `interface`, read back from the kernel."""
    listing: dict[str, Any] = json.loads(run(f"list table inet {table}", as_json=True))
    keys: dict[str, list[list[Any]]] = {}
    for item in listing.get("nftables", []):
        body = item.get("set") or item.get("map")
        if body:
            elements = [element[0] if "map" in item else element for element in body.get("elem", [])]
            keys[body["name"]] = [key["concat"] if isinstance(key, dict) and "concat" in key else [key] for key in elements]
    exposed_here = {fields[1] for fields in keys.get("exposed", []) if fields[0] == interface}
    found = [(name, fields) for name in ("ifaces", "open_ifaces", "allow_hosts", "allow_ports", "exposed")
             for fields in keys.get(name, []) if fields[0] == interface]
    found += [("expose", fields) for fields in keys.get("expose", []) if fields[0] in exposed_here]
    return [(name, " . ".join(_render(field) for field in fields)) for name, fields in found]


def _transaction(table: str, deletes: list[tuple[str, str]], adds: list[tuple[str, str]]) -> str:
    lines = [f"delete element inet {table} {name} {{ {key} }}" for name, key in deletes]
    lines += [f"add element inet {table} {name} {{ {element} }}" for name, element in adds]
    return "\n".join(lines) + "\n"


def apply_sandbox(table: str, interface: str, mode: str, destinations: Iterable[Destination],
                  expose_address: str, sandbox_address: str, ports: Iterable[int]) -> None:
    """Make the table hold exactly this sandbox's elements, in one transaction."""
    wanted = sandbox_elements(interface, mode, destinations, expose_address, sandbox_address, ports)
    run(_transaction(table, listed_elements(table, interface), wanted))


def remove_sandbox(table: str, interface: str) -> bool:
    """Delete every element of the sandbox; whether it had any."""
    found = listed_elements(table, interface)
    if found:
        run(_transaction(table, found, []))
    return bool(found)


def sandbox_interfaces(table: str) -> list[str]:
    """The veths the table holds elements for."""
    try:
        listing: dict[str, Any] = json.loads(run(f"list set inet {table} ifaces", as_json=True))
    except HostError:
        return []
    return sorted(str(element) for item in listing.get("nftables", []) for element in item.get("set", {}).get("elem", []))


def delete_table(table: str) -> None:
    if table_exists(table):
        run(f"delete table inet {table}")
