#!/usr/bin/env python3
"""Create N sandboxes with allowlist networking (started, so each has its namespace, veth, /30 and
rules), destroy them all, and check that nothing is left: no namespace still in use, no veth, no
address, no nftables table or rule, no route, no /run/netns entry. Prints the figures; exits 1 on a leak.

Sends no traffic: the allowlist names an address of the benchmark range that nothing uses.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from isolate import Sandbox, SandboxManager, Settings
from isolate.net import netns, nft
from isolate.net.pool import host_routes


def namespaces_in_use() -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.add(os.stat(entry / "ns" / "net").st_ino)
            except OSError:
                continue
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=100)
    args = parser.parse_args()
    if not 0 < args.count <= 1000:
        parser.error("--count must be 1-1000")
    state = Path(tempfile.mkdtemp(prefix="isolate-netcheck-", dir="/var/tmp"))
    state.chmod(0o711)
    manager = SandboxManager(Settings(state_dir=state, resolver=lambda name: [], nameservers=()))
    networks = manager.networks
    create, destroy, inodes, interfaces, subnets = [], [], [], [], []
    try:
        for index in range(args.count):
            started = time.perf_counter()
            sandbox = Sandbox(manager, manager.open(f"net-{index}", network={"allow": ["198.18.255.254:443"]}))
            sandbox.exec("true", [])
            create.append((time.perf_counter() - started) * 1000)
            inodes.append(int((manager.run_dir(sandbox.name) / "netns").read_text()))
            interfaces.append(networks.interface(sandbox._record))
            slot = networks.pool.recorded(networks.key(sandbox._record))
            assert slot is not None
            subnets.append(slot.subnet)
        wired = len(nft.sandbox_interfaces(networks.table))
        for index in range(args.count):
            started = time.perf_counter()
            manager.destroy(f"net-{index}")
            destroy.append((time.perf_counter() - started) * 1000)
        leaks = {
            "namespaces still in use": sorted(set(inodes) & namespaces_in_use()),
            "veths": sorted(set(interfaces) & set(os.listdir("/sys/class/net"))),
            "veths by alias": sorted(netns.veths_by_alias(networks.alias("")).values()),
            "addresses": networks.pool.names(),
            "nftables table": [networks.table] if nft.table_exists(networks.table) else [],
            "routes to their /30s": sorted(str(route) for route in host_routes() if route in subnets),
            "/run/netns entries": [name for name in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
                                   if name.startswith(networks.instance)],
        }
        print(f"{args.count} sandboxes with allowlist networking; {wired} wired in nftables at the peak")
        print(f"create + first exec: median {statistics.median(create):.1f} ms, max {max(create):.1f} ms")
        print(f"destroy:             median {statistics.median(destroy):.1f} ms, max {max(destroy):.1f} ms")
        for what, items in leaks.items():
            print(f"left behind, {what}: {len(items)}{' ' + str(items[:5]) if items else ''}")
        return 1 if any(leaks.values()) else 0
    finally:
        manager.discard()


if __name__ == "__main__":
    sys.exit(main())
