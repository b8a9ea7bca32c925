"""A stand-in for a remote host: a network namespace the test makes, with addresses of its own.

Everything a network test sends goes to loopback or to one of these namespaces; nothing leaves
the machine. Addresses come from ranges no real network uses here (198.18.0.0/15, reserved for
benchmarks, and one link-local /30 to prove link-local stays unreachable), checked against the
host's routes first. Made with iproute2's `ip`, independent of the code under test.
"""

from __future__ import annotations

import ipaddress
import random
import secrets
import subprocess
import sys
import time
from pathlib import Path

from isolate.net.pool import host_routes

# Answers every connection with "hello <address it was reached on>" (run inside the test namespace).
GREETER = r"""
import socket, sys, threading
def serve(listener):
    while True:
        conn, _ = listener.accept()
        conn.sendall(("hello %s\n" % conn.getsockname()[0]).encode()); conn.close()
for port in sys.argv[1:]:
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", int(port))); s.listen(64)
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""

# What a sandbox runs to try a TCP connection: prints "ok <greeting>" or "error <reason>".
PROBE = r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
except OSError as exc:
    print("error " + (type(exc).__name__ if exc.errno is None else __import__("errno").errorcode.get(exc.errno, str(exc.errno))))
else:
    try:
        print("ok " + s.recv(200).decode().strip())
    except OSError:
        print("ok")  # connected; the server says nothing first (git daemon)
"""

GREETER_PORTS = (7001, 7002)
# Host names an allowlist may name in tests, and their addresses (in namespaces the tests made).
# The tests' manager resolves names here, never with the host's DNS, and open sandboxes get no
# name server: no test ever sends a query off the machine.
TEST_NAMES: dict[str, list[str]] = {}


def resolve_test_name(name: str) -> list[str]:
    return list(TEST_NAMES.get(name, []))


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _free_block(space: str, prefix: int) -> ipaddress.IPv4Network:
    routes = host_routes()
    blocks = list(ipaddress.IPv4Network(space).subnets(new_prefix=prefix))
    for _ in range(200):
        block = random.choice(blocks)
        if not any(route.overlaps(block) for route in routes):
            return block
    raise RuntimeError(f"no free /{prefix} in {space}")


class RemoteHost:
    """A namespace with a veth to the host: `address` and `other_address` (198.18.x.2/.3) and `link_local`."""

    def __init__(self) -> None:
        token = secrets.token_hex(4)
        self.netns = f"isotest-{token}"
        self.interface = f"it{token}"
        block = _free_block("198.18.0.0/15", 29)
        link_block = _free_block("169.254.128.0/17", 30)
        self.gateway = str(block.network_address + 1)  # the host's side: an address of the host itself
        self.address = str(block.network_address + 2)
        self.other_address = str(block.network_address + 3)
        self.link_local = str(link_block.network_address + 2)
        self.processes: list[subprocess.Popen[str]] = []
        try:
            _ip("netns", "add", self.netns)
            _ip("link", "add", self.interface, "type", "veth", "peer", "name", "eth0", "netns", self.netns)
            _ip("addr", "add", f"{self.gateway}/29", "dev", self.interface)
            _ip("addr", "add", f"{link_block.network_address + 1}/30", "dev", self.interface)
            _ip("link", "set", self.interface, "up")
            for args in (("addr", "add", f"{self.address}/29", "dev", "eth0"), ("addr", "add", f"{self.other_address}/29", "dev", "eth0"),
                         ("addr", "add", f"{self.link_local}/30", "dev", "eth0"), ("link", "set", "eth0", "up"),
                         ("link", "set", "lo", "up"), ("route", "add", "default", "via", self.gateway)):
                _ip("-n", self.netns, *args)
        except BaseException:
            self.close()
            raise

    def run(self, argv: list[str], *, ready: str | None = None, cwd: Path | None = None) -> subprocess.Popen[str]:
        """Start a process inside the namespace (killed at close); wait for `ready` on its stdout, if given."""
        process = subprocess.Popen(["ip", "netns", "exec", self.netns, *argv], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   stdin=subprocess.DEVNULL, text=True, cwd=cwd)
        self.processes.append(process)
        if ready is not None:
            line = process.stdout.readline() if process.stdout else ""
            if ready not in line:
                raise RuntimeError(f"{argv[0]} did not start in {self.netns}: {line!r}")
        return process

    def serve_greeter(self) -> None:
        self.run([sys.executable, "-c", GREETER, *map(str, GREETER_PORTS)], ready="ready")

    def wait_for_port(self, port: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        probe = ["ip", "netns", "exec", self.netns, sys.executable, "-c", PROBE, self.address, str(port), "1"]
        while time.monotonic() < deadline:
            if subprocess.run(probe, capture_output=True, text=True).stdout.startswith("ok"):
                return
            time.sleep(0.1)
        raise RuntimeError(f"nothing listens on {self.address}:{port} in {self.netns}")

    def close(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.interface], capture_output=True)

    def leftovers(self) -> list[str]:
        names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        return [item for item in (self.netns, self.interface) if item in names + links]


def probe(sandbox, host: str, port: int, timeout: float = 3) -> str:  # type: ignore[no-untyped-def]
    """Try a TCP connection from inside `sandbox`: "ok hello <address>" or "error <reason>"."""
    return sandbox.exec("python3", ["-c", PROBE, host, str(port), str(timeout)]).stdout.strip()
