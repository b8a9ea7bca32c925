"""Network policies: none by default, allowlisted or open egress, and what stays unreachable in every mode.

Every connection these tests make goes to a namespace the test made (`remote`, standing in
for a host on the internet), to the host's own addresses, or to loopback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from isolate import IsolateError, Sandbox, SandboxManager, ValidationError
from isolate.jail.gvisor import Slots
from isolate.net import netns, nft
from tests.conftest import network_leftovers, unique_name
from tests.nethost import PROBE, TEST_NAMES, RemoteHost, probe


@pytest.fixture(scope="module")
def remote(manager: SandboxManager) -> Iterator[RemoteHost]:
    if not nft.available():
        pytest.skip("nftables (libnftables) is not installed: apt-get install nftables")
    host = RemoteHost()
    try:
        host.serve_greeter()
        TEST_NAMES.update({"remote.test": [host.address], "other.test": [host.other_address]})
        yield host
    finally:
        TEST_NAMES.pop("remote.test", None)
        TEST_NAMES.pop("other.test", None)
        host.close()
    assert host.leftovers() == []


@pytest.fixture(scope="module")
def host_service() -> Iterator[int]:
    """A service of the host itself, on every address (as the worker's port would be)."""
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("0.0.0.0", 0))
    listener.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.sendall(b"host service\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()


def addresses(manager: SandboxManager, sandbox: Sandbox):  # type: ignore[no-untyped-def]
    slot = manager.networks.pool.recorded(manager.networks.key(sandbox._record))
    assert slot is not None
    return slot


def namespace_of(manager: SandboxManager, name: str) -> int:
    """The inode of the network namespace the sandbox's jail last ran in."""
    return int((manager.run_dir(name) / "netns").read_text())


def namespace_users(inode: int) -> list[int]:
    """Live processes in that namespace (the kernel frees it when none is left)."""
    users = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and os.stat(entry / "ns" / "net").st_ino == inode:
                users.append(int(entry.name))
        except OSError:
            continue
    return users


def test_default_policy_is_none_only_loopback(sandbox, remote):
    assert sandbox.network.mode == "none"
    assert sandbox.exec("cat", ["/proc/net/dev"]).stdout.count(":") == 1  # lo alone
    assert probe(sandbox, remote.address, 7001) == "error ENETUNREACH"
    # loopback works as before, IPv6 included, and the sandbox's root may bind any port there
    serve = "import socket; s = socket.socket(socket.AF_INET6); s.bind(('::1', 80)); print('bound')"
    assert sandbox.exec("python3", ["-c", serve]).stdout == "bound\n"


def test_allowlist_reaches_only_listed_destinations_and_names(make_sandbox, remote):
    sandbox = make_sandbox(network={"allow": ["remote.test:7001", f"{remote.other_address}/32:7002"]})
    assert probe(sandbox, "remote.test", 7001) == f"ok hello {remote.address}"
    assert probe(sandbox, remote.address, 7002).startswith("error")  # listed host, unlisted port
    assert probe(sandbox, remote.other_address, 7002) == f"ok hello {remote.other_address}"
    assert probe(sandbox, remote.other_address, 7001).startswith("error")
    # names: only listed ones resolve, from /etc/hosts; there is no name server to ask about others
    assert sandbox.exec("getent", ["hosts", "remote.test"]).stdout.split()[0] == remote.address
    assert sandbox.exec("getent", ["hosts", "other.test"]).exit_code != 0
    assert "nameserver" not in sandbox.read_file("/etc/resolv.conf").content
    assert sandbox.exec("sh -c 'echo x >> /etc/hosts'").exit_code != 0  # bound read-only


@pytest.fixture(scope="module")
def listening(manager: SandboxManager) -> Iterator[Sandbox]:
    """A sandbox with a port exposed (so it has an address) and a service on it: a neighbour to try to reach."""
    name = unique_name("target")
    target = Sandbox(manager, manager.open(name, network="open"))
    target.exec("nohup python3 -m http.server 7100 --bind 0.0.0.0 >/dev/null 2>&1 & sleep 0.5; echo started")
    target.expose_port(7100)
    yield target
    manager.destroy(name)


def test_open_reaches_any_remote_address(make_sandbox, remote):
    sandbox = make_sandbox(network="open")
    assert probe(sandbox, remote.address, 7002) == f"ok hello {remote.address}"
    assert probe(sandbox, remote.other_address, 7001) == f"ok hello {remote.other_address}"


@pytest.mark.parametrize("mode", ["none", "allowlist", "open"])
def test_never_reachable_in_any_mode(make_sandbox, manager, remote, host_service, listening, mode):
    """Another sandbox, the host itself on any of its addresses, link-local: whatever the policy, even if it lists them."""
    neighbour = addresses(manager, listening)
    everything = {"allow": [remote.address, remote.gateway, neighbour.sandbox_address, neighbour.host_address]}  # link-local is refused
    sandbox = make_sandbox(network={"none": "none", "open": "open", "allowlist": everything}[mode])
    sandbox.expose_port(9999)  # so even a `none` sandbox has an address and a route to try from
    # each target is live: the neighbour answers inside itself, the test host answers the host
    assert probe(listening, "127.0.0.1", 7100) == "ok"
    host_side = subprocess.run(["python3", "-c", PROBE, remote.link_local, "7001", "3"], capture_output=True, text=True).stdout
    assert host_side.strip() == f"ok hello {remote.link_local}"
    own = addresses(manager, sandbox)
    for address, port in ((neighbour.sandbox_address, 7100), (remote.link_local, 7001), (own.host_address, host_service),
                          (neighbour.host_address, host_service), (remote.gateway, host_service)):
        assert probe(sandbox, address, port).startswith("error"), (mode, address, port)
    assert probe(sandbox, "127.0.0.1", host_service) == "error ECONNREFUSED"  # its own loopback, not the host's
    reached = probe(sandbox, remote.address, 7001)
    assert reached == (f"ok hello {remote.address}" if mode != "none" else "error EHOSTUNREACH")


def test_allowlisting_the_host_or_metadata_still_reaches_nothing(make_sandbox, manager, remote, host_service):
    with pytest.raises(ValidationError):
        make_sandbox(network={"allow": ["169.254.169.254"]})
    with pytest.raises(ValidationError):
        make_sandbox(network={"allow": ["127.0.0.1:22"]})
    sandbox = make_sandbox(network={"allow": [remote.gateway, "10.213.0.0/16", "128.0.0.0/1"]})
    assert probe(sandbox, remote.gateway, host_service) == "error EHOSTUNREACH"
    assert probe(sandbox, addresses(manager, sandbox).host_address, host_service) == "error EHOSTUNREACH"
    assert probe(sandbox, remote.address, 7001) == f"ok hello {remote.address}"  # 128.0.0.0/1 covers it


def test_a_network_change_right_after_creation_reaches_the_new_jail(make_sandbox, remote):
    """A new sandbox's jail starts with it; a change made at once must not miss it while it boots."""
    for _ in range(5):
        sandbox = make_sandbox()
        sandbox.set_network("open")
        assert probe(sandbox, remote.address, 7001) == f"ok hello {remote.address}"


def test_set_network_applies_live_without_restarting(sandbox, remote):
    sandbox.exec("nohup sleep 300 >/dev/null 2>&1 & echo $! > /tmp/sleeper")
    sleeper = sandbox.read_file("/tmp/sleeper").content.strip()
    assert probe(sandbox, remote.address, 7001) == "error ENETUNREACH"
    assert sandbox.set_network({"allow": [f"{remote.address}:7001"]}).mode == "allowlist"
    assert probe(sandbox, remote.address, 7001) == f"ok hello {remote.address}"
    sandbox.set_network("open")
    assert probe(sandbox, remote.address, 7002) == f"ok hello {remote.address}"
    sandbox.set_network("none")
    assert probe(sandbox, remote.address, 7001) == "error ENETUNREACH"
    assert sandbox.exec("kill", ["-0", sleeper]).exit_code == 0  # the same processes throughout
    assert sandbox.network.mode == "none"


def test_sandbox_cannot_change_its_network_nor_use_raw_or_packet_sockets(make_sandbox, manager, remote, backend):
    sandbox = make_sandbox(network="open")
    if backend == "nsjail":
        assert sandbox.read_file("/proc/sys/net/ipv6/conf/eth0/disable_ipv6").content == "1\n"  # IPv4 egress only
    else:  # gVisor's /proc has no such file: read it in the namespace whose sockets the Sentry uses
        sandbox.ping()
        sentry = int((manager.run_dir(sandbox.name) / "pid").read_text())
        seen = subprocess.run(["nsenter", f"--net=/proc/{sentry}/ns/net", "cat", "/proc/sys/net/ipv6/conf/eth0/disable_ipv6"],
                              capture_output=True, text=True)
        assert seen.stdout == "1\n", seen.stderr
    assert sandbox.exec("ip link set eth0 down").exit_code != 0
    assert sandbox.exec("ip addr add 198.18.255.1/32 dev eth0").exit_code != 0
    assert sandbox.exec("ip route del default").exit_code != 0
    raw = "import socket; socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)"
    packet = "import socket; socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)"
    for code in (raw, packet):
        result = sandbox.exec("python3", ["-c", code])
        assert result.exit_code != 0 and ("Error" in result.stderr), result.stderr
    assert probe(sandbox, remote.address, 7001) == f"ok hello {remote.address}"  # still works


def test_expose_port_reaches_a_service_only_through_the_exposed_address(make_sandbox, manager, remote):
    sandbox = make_sandbox()
    sandbox.write_file("/workspace/www/marker.txt", "from the sandbox")
    sandbox.exec("cd /workspace/www && (nohup python3 -m http.server 8080 --bind 0.0.0.0 >/dev/null 2>&1 &) ; sleep 0.5")
    exposed = sandbox.expose_port(8080)
    assert exposed.host.startswith("127.") and exposed.port == 8080
    assert [e.port for e in sandbox.exposed_ports()] == [8080]
    assert fetch(f"{exposed.url}/marker.txt") == "from the sandbox"
    # not directly at the sandbox's address, not on another port, and egress still none
    assert connect_error(addresses(manager, sandbox).sandbox_address, 8080) is not None
    sandbox.exec("cd /workspace/www && (nohup python3 -m http.server 8081 --bind 0.0.0.0 >/dev/null 2>&1 &) ; sleep 0.5")
    assert fetch(f"http://{exposed.host}:8081/marker.txt") != "from the sandbox"
    assert probe(sandbox, remote.address, 7001).startswith("error")
    # a DNAT that is not the sandbox's own exposure (a stale rule, another program's) gets nowhere
    sandbox_address, table = addresses(manager, sandbox).sandbox_address, f"isotest_{os.getpid()}"
    foreign = (f"table ip {table} {{\n chain out {{\n type nat hook output priority -100; policy accept;\n }}\n}}\n"
               f"add rule ip {table} out ip daddr 127.77.0.1 dnat to {sandbox_address}\n")
    subprocess.run(["nft", "-f", "-"], input=foreign, text=True, check=True)
    try:
        assert fetch("http://127.77.0.1:8081/marker.txt", timeout=1) != "from the sandbox"
        assert fetch("http://127.77.0.1:8080/marker.txt", timeout=1) != "from the sandbox"
        assert fetch(f"{exposed.url}/marker.txt") == "from the sandbox"
    finally:
        subprocess.run(["nft", "delete", "table", "ip", table], check=True)
    sandbox.unexpose_port(8080)
    assert fetch(f"{exposed.url}/marker.txt") != "from the sandbox"
    assert sandbox.exposed_ports() == []


def test_stop_and_restart_keep_the_policy_and_addresses_and_destroy_removes_everything(manager, remote):
    name = unique_name()
    sandbox = Sandbox(manager, manager.open(name, network={"allow": [f"{remote.address}:7001"]}))
    exposed = sandbox.expose_port(9000)
    assert probe(sandbox, remote.address, 7001) == f"ok hello {remote.address}"
    record = sandbox._record
    interface = manager.networks.interface(record)
    first = namespace_of(manager, name)
    assert namespace_users(first)
    sandbox.stop()
    assert namespace_users(first) == [] and not interface_exists(interface)
    assert interface not in nft.sandbox_interfaces(manager.networks.table)
    assert probe(sandbox, remote.address, 7001) == f"ok hello {remote.address}"  # wakes with the same policy
    assert sandbox.exposed_ports()[0].host == exposed.host
    second = namespace_of(manager, name)
    assert namespace_users(second)  # a new namespace (the kernel may reuse the number)
    sandbox.destroy()
    assert namespace_users(second) == [] and not interface_exists(interface)
    assert manager.networks.pool.recorded(manager.networks.key(record)) is None
    if nft.table_exists(manager.networks.table):
        assert interface not in nft.sandbox_interfaces(manager.networks.table)


def test_start_up_clean_up_removes_what_a_crash_left(manager, remote):
    name = unique_name()
    sandbox = Sandbox(manager, manager.open(name, network="open"))
    sandbox.expose_port(9001)
    sandbox.ping()
    record = sandbox._record
    interface, key = manager.networks.interface(record), manager.networks.key(record)
    # a crash half-way through a destroy: the sandbox's folder is gone, its jail, veth and rules are not
    subprocess.run(["rm", "-rf", str(manager.sandbox_dir(name))], check=True)
    assert interface_exists(interface)
    removed = SandboxManager(manager.settings).clean_leftovers()
    assert f"rules:{interface}" in removed and f"address:{key}" in removed
    assert not interface_exists(interface)
    assert manager.networks.pool.recorded(key) is None
    manager.destroy(name)


@pytest.mark.slow
def test_twenty_allowlisted_sandboxes_leave_nothing_behind(manager, remote, backend):
    count = 20
    if backend == "gvisor":  # no more than the host's bound of gVisor sandboxes run at once
        slots = Slots()
        count = min(count, slots.limit - slots.in_use())
    names = [unique_name("many") for _ in range(count)]
    records = []
    try:
        for name in names:
            sandbox = Sandbox(manager, manager.open(name, network={"allow": ["remote.test:7001"]}))
            sandbox.ping()
            records.append(sandbox._record)
        assert len(nft.sandbox_interfaces(manager.networks.table)) >= count
    finally:
        for name in names:
            manager.destroy(name)
    interfaces = {manager.networks.interface(record) for record in records}
    assert not interfaces & set(netns.veths_by_alias(manager.networks.alias("")).values())
    assert not {manager.networks.key(record) for record in records} & set(manager.networks.pool.names())
    if nft.table_exists(manager.networks.table):
        assert not interfaces & set(nft.sandbox_interfaces(manager.networks.table))
    if not manager.names():
        assert network_leftovers(manager) == []


def test_network_option_from_the_cli(manager, state_dir, remote):
    from tests.test_lifecycle import cli

    name = unique_name("cli")
    try:
        created = cli(state_dir, "exec", name, "--allow", f"{remote.address}:7001", "--", "python3", "-c", PROBE, remote.address, "7001", "3")
        assert created.stdout.strip() == f"ok hello {remote.address}", created.stderr
        shown = cli(state_dir, "network", name)
        assert shown.stdout.split() == ["allowlist", "allow", f"{remote.address}:7001"]
        assert cli(state_dir, "network", name, "--network", "none").stdout.strip() == "none"
        exposed = cli(state_dir, "expose", name, "8080")
        assert exposed.returncode == 0 and exposed.stdout.startswith("http://127.")
        assert cli(state_dir, "unexpose", name, "8080").returncode == 0
        bad = cli(state_dir, "network", name, "--allow", "fe80::1")
        assert bad.returncode == 125 and "VALIDATION_FAILED" in bad.stderr
    finally:
        manager.destroy(name)


def interface_exists(interface: str) -> bool:
    return interface in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout


def fetch(url: str, timeout: float = 3) -> str:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.read().decode()
    except OSError as exc:
        return f"error {exc}"


def connect_error(address: str, port: int) -> str | None:
    try:
        socket.create_connection((address, port), timeout=2).close()
        return None
    except OSError as exc:
        return str(exc)



def test_the_worker_sets_policies_and_exposes_ports(worker, remote):
    from isolate.client import get_sandbox as remote_sandbox

    sandbox = remote_sandbox(unique_name("wk"), url=worker.url, token=worker.token)
    try:
        assert sandbox.network.mode == "none"
        assert sandbox.set_network({"allow": [f"{remote.address}:7001"]}).to_dict() == {"mode": "allowlist", "allow": [f"{remote.address}:7001"]}
        assert sandbox.exec("python3", ["-c", PROBE, remote.address, "7001", "3"]).stdout.strip() == f"ok hello {remote.address}"
        sandbox.write_file("/workspace/www/marker.txt", "through the worker")
        sandbox.exec("cd /workspace/www && (nohup python3 -m http.server 8080 --bind 0.0.0.0 >/dev/null 2>&1 &) ; sleep 0.5")
        exposed = sandbox.expose_port(8080)
        assert [p.port for p in sandbox.exposed_ports()] == [8080]
        assert fetch(f"{exposed.url}/marker.txt") == "through the worker"
        sandbox.unexpose_port(8080)
        assert sandbox.exposed_ports() == []
        with pytest.raises(IsolateError) as caught:
            sandbox.set_network({"allow": ["169.254.169.254"]})
        assert caught.value.code == "VALIDATION_FAILED" and caught.value.http_status == 400
    finally:
        sandbox.destroy()


def test_a_warm_spare_handed_out_with_a_policy_gets_it_live(manager, remote):
    pooled = SandboxManager(replace(manager.settings, warm_pool=1))
    try:
        pooled.pool.fill()
        spare = pooled.load(pooled.pool.spares()[0])
        sandbox = Sandbox(pooled, pooled.open(unique_name("pool"), network={"allow": [f"{remote.address}:7001"]}))
        assert sandbox._record.uid == spare.uid  # the spare, renamed, its jail still running
        assert sandbox.network.mode == "allowlist"
        assert probe(sandbox, remote.address, 7001) == f"ok hello {remote.address}"
        sandbox.stop()
        assert probe(sandbox, remote.address, 7001) == f"ok hello {remote.address}"  # and after a restart under its new name
    finally:
        for name in pooled.names():
            pooled.destroy(name)
        pooled.pool.drain()
