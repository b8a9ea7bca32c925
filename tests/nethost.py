"""A stand-in for a remote host: a network namespace the test makes, with addresses of its own.

Everything a network test sends goes to loopback or to one of these namespaces; nothing leaves
the machine. Addresses come from ranges no real network uses here (198.18.0.0/15, reserved for
benchmarks, and one link-local /30 to prove link-local stays unreachable), checked against the
host's routes first. Made with iproute2's `ip`, independent of the code under test.
"""

from __future__ import annotations

import contextlib
import ipaddress
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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


HTTP_SERVER = r"""
import functools, http.server, sys
class Handler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        if self.path.startswith("/private/"):
            self.send_response(401); self.send_header("WWW-Authenticate", 'Basic realm="git"'); self.send_header("Content-Length", "0")
            self.end_headers(); return
        super().do_GET()
    def log_message(self, *args): pass
server = http.server.ThreadingHTTPServer(("0.0.0.0", int(sys.argv[2])), functools.partial(Handler, directory=sys.argv[1]))
print("ready", flush=True)
server.serve_forever()
"""
SILENT_SERVER = r"""
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8)
print("ready", flush=True)
held = []
while True:
    held.append(s.accept()[0])
"""


def git(*args: str, cwd: Path) -> str:
    """Run git on the host to build test repositories (local only)."""
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout.strip()


def make_repository(base: Path, name: str, commits: list[tuple[str, dict[str, str]]], branch: str = "main") -> Path:
    """A work tree under `base` with `commits` (message, files) on `branch`; returns it."""
    work = base / f"{name}-work"
    if not work.exists():
        work.mkdir()
        git("init", cwd=work)
    if branch != "main":  # git init made main (init.defaultBranch)
        git("checkout", "-b", branch, cwd=work)
    for message, files in commits:
        for path, text in files.items():
            (work / path).write_text(text)
        git("add", ".", cwd=work)
        git("commit", "-m", message, cwd=work)
    return work


def make_repositories(base: Path) -> None:
    """demo.git (main: 2 commits, feature: 3), sub.git, super.git (submodule `sub` -> git://git.test/sub.git)."""
    work = make_repository(base, "demo", [("one", {"README": "main one\n"}), ("two", {"README": "main two\n"})])
    make_repository(base, "demo", [("three", {"feature.txt": "feature\n"})], branch="feature")
    git("checkout", "main", cwd=work)
    git("clone", "--bare", str(work), str(base / "demo.git"), cwd=base)
    sub = make_repository(base, "sub", [("sub", {"inside.txt": "from the submodule\n"})])
    git("clone", "--bare", str(sub), str(base / "sub.git"), cwd=base)
    sup = base / "superwork"
    sup.mkdir()
    git("init", cwd=sup)
    (sup / ".gitmodules").write_text('[submodule "sub"]\n\tpath = sub\n\turl = git://git.test/sub.git\n')
    git("add", ".gitmodules", cwd=sup)
    git("update-index", "--add", "--cacheinfo", f"160000,{git('rev-parse', 'HEAD', cwd=sub)},sub", cwd=sup)
    git("commit", "-m", "with a submodule", cwd=sup)
    git("clone", "--bare", str(sup), str(base / "super.git"), cwd=base)
    for bare in ("demo.git", "sub.git", "super.git"):
        git("update-server-info", cwd=base / bare)  # for the dumb HTTP protocol
    (base / "private").mkdir()


@contextlib.contextmanager
def git_server() -> Iterator[RemoteHost]:
    """A remote git host: git daemon on 9418 (repositories `demo` with branches main and feature, `sub`,
    and `super`, whose submodule is git://git.test/sub.git), a static HTTP server on 8400 (git's dumb
    HTTP protocol; /private/ answers 401), and a listener on 8402 that accepts and never answers."""
    repositories = Path(tempfile.mkdtemp(prefix="isolate-git-", dir="/var/tmp"))
    host = RemoteHost()
    try:
        make_repositories(repositories)
        host.run(["git", "daemon", "--reuseaddr", "--export-all", f"--base-path={repositories}", "--listen=0.0.0.0", "--port=9418",
                  str(repositories)])
        host.run([sys.executable, "-c", HTTP_SERVER, str(repositories), "8400"], ready="ready")
        host.run([sys.executable, "-c", SILENT_SERVER, "8402"], ready="ready")
        host.wait_for_port(9418)
        yield host
    finally:
        host.close()
        shutil.rmtree(repositories, ignore_errors=True)
