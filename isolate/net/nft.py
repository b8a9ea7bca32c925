"""The host firewall for sandboxes: one nftables table per state instance, driven through libnftables.

Layout of `table inet <instance>` (rendered by `skeleton`):
  set ifaces                 host-side veths of this instance's sandboxes
  chain input   (hook)       from a sandbox to the host itself (any address, any service): rejected,
                             except replies on connections the host opened (exposed ports)
  chain forward (hook)       from a sandbox: `egress`; to a sandbox: only replies, nothing new
  chain egress               never-reachable ranges and the pool (other sandboxes) rejected, a cap on
                             concurrent connections, then the sandbox's own chain via `egress_by_iface`,
                             then reject: a chain that does not accept denies
  chain e_<veth>             the sandbox's policy: empty (none), `accept` (open), or one rule per
                             allowed destination (allowlist)
  chain output  (hook)       host processes do not connect to a sandbox's address directly
  chain to_sandbox (hook)    (postrouting, where the veth a DNAT-ed packet leaves by is known) a
  chain o_<veth>             connection DNAT-ed to a sandbox passes only if it was made to this
                             sandbox's own exposed address and port (`exposed_by_iface`), not
                             DNAT-ed there by a stale rule or another program
  chain nat_output (hook)    127.128.x.y:port -> sandbox:port for exposed ports, via `expose_by_address`
  chain x_<veth>             the sandbox's exposed ports
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
  set never {{ type ipv4_addr; flags interval; elements = {{ {never} }}; }}
  set connections {{ type ifname; size 65535; flags dynamic; }}
  map egress_by_iface {{ type ifname : verdict; }}
  map expose_by_address {{ type ipv4_addr : verdict; }}
  map exposed_by_iface {{ type ifname : verdict; }}
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
    iifname vmap @egress_by_iface
    {reject}
  }}
  chain output {{
    type filter hook output priority filter; policy accept;
    oifname @ifaces ct state established,related accept
    oifname @ifaces {reject}
  }}
  chain to_sandbox {{
    type filter hook postrouting priority filter; policy accept;
    oifname @ifaces ct direction original ct status dnat oifname vmap @exposed_by_iface
    oifname @ifaces ct direction original ct status dnat drop
  }}
  chain nat_output {{
    type nat hook output priority -100; policy accept;
    ip daddr vmap @expose_by_address
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    oifname @ifaces ip saddr 127.0.0.0/8 masquerade
    iifname @ifaces oifname != @ifaces masquerade
  }}
}}
"""


def _egress_rules(mode: str, destinations: Iterable[Destination]) -> list[str]:
    if mode == "open":
        return ["accept"]
    rules = []
    for destination in destinations:
        if destination.port is None:
            rules.append(f"ip daddr {destination.network} accept")
        else:
            rules.append(f"ip daddr {destination.network} meta l4proto {{ tcp, udp }} th dport {destination.port} accept")
    return rules


def _pieces(table: str, interface: str, expose_address: str | None) -> list[str]:
    """Commands that make sure every per-sandbox piece exists (each `add` is a no-op when it does)."""
    egress, expose, inbound = f"e_{interface}", f"x_{interface}", f"o_{interface}"
    lines = [
        f'add element inet {table} ifaces {{ "{interface}" }}',
        f"add chain inet {table} {egress}",
        f'add element inet {table} egress_by_iface {{ "{interface}" : jump {egress} }}',
        f"add chain inet {table} {inbound}",
        f'add element inet {table} exposed_by_iface {{ "{interface}" : jump {inbound} }}',
        f"add chain inet {table} {expose}",
    ]
    if expose_address is not None:
        lines.append(f"add element inet {table} expose_by_address {{ {expose_address} : jump {expose} }}")
    return lines


def apply_sandbox(table: str, interface: str, mode: str, destinations: Iterable[Destination],
                  expose_address: str, sandbox_address: str, ports: Iterable[int]) -> str:
    """The transaction that (re)writes one sandbox's rules: membership, policy, exposed ports."""
    egress, expose, inbound = f"e_{interface}", f"x_{interface}", f"o_{interface}"
    exposed = sorted(set(ports))
    lines = [
        *_pieces(table, interface, expose_address),
        f"flush chain inet {table} {egress}",
        *(f"add rule inet {table} {egress} {rule}" for rule in _egress_rules(mode, destinations)),
        f"flush chain inet {table} {expose}",
        *(f"add rule inet {table} {expose} tcp dport {port} dnat ip to {sandbox_address}:{port}" for port in exposed),
        f"flush chain inet {table} {inbound}",
    ]
    if exposed:
        lines.append(f"add rule inet {table} {inbound} ct original ip daddr {expose_address} tcp dport {{ {', '.join(map(str, exposed))} }} accept")
    return "\n".join(lines) + "\n"


def remove_sandbox(table: str, interface: str, expose_address: str | None) -> str:
    """The transaction that removes one sandbox's rules (made whole first, so a missing piece is no error)."""
    egress, expose, inbound = f"e_{interface}", f"x_{interface}", f"o_{interface}"
    lines = [
        *_pieces(table, interface, expose_address),
        f'delete element inet {table} ifaces {{ "{interface}" }}',
        f'delete element inet {table} egress_by_iface {{ "{interface}" }}',
        f'delete element inet {table} exposed_by_iface {{ "{interface}" }}',
        *([f"delete element inet {table} expose_by_address {{ {expose_address} }}"] if expose_address is not None else []),
        f"flush chain inet {table} {egress}",
        f"delete chain inet {table} {egress}",
        f"flush chain inet {table} {expose}",
        f"delete chain inet {table} {expose}",
        f"flush chain inet {table} {inbound}",
        f"delete chain inet {table} {inbound}",
    ]
    return "\n".join(lines) + "\n"


def sandbox_interfaces(table: str) -> list[str]:
    """The veths the table has rules for."""
    try:
        listing: dict[str, Any] = json.loads(run(f"list set inet {table} ifaces", as_json=True))
    except HostError:
        return []
    return sorted(str(element) for item in listing.get("nftables", []) for element in item.get("set", {}).get("elem", []))


def expose_address_of(table: str, interface: str) -> str | None:
    """The loopback address whose exposed ports lead to `interface`'s sandbox (for removing orphans)."""
    listing: dict[str, Any] = json.loads(run(f"list map inet {table} expose_by_address", as_json=True))
    for item in listing.get("nftables", []):
        for key, verdict in item.get("map", {}).get("elem", []):
            if isinstance(verdict, dict) and verdict.get("jump", {}).get("target") == f"x_{interface}":
                return str(key)
    return None


def delete_table(table: str) -> None:
    if table_exists(table):
        run(f"delete table inet {table}")
