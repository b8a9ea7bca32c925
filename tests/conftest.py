"""Shared fixtures: a private state folder per test run, real sandboxes, and a leak check at the end.

Integration tests start real nsjail and gVisor sandboxes; they need root and the
backend's binary. Where either is missing they skip and say why; CI has both.
Every test that uses a sandbox (or the manager) runs once per backend in
ISOLATE_TEST_BACKENDS: `backend` is a session-wide parameter, so all of one backend's
tests run together on one manager whose default backend it is.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from isolate import Limits, Sandbox, SandboxManager, Settings, cgroups
from isolate.jail.runsc import find_runsc
from isolate.net import netns, nft
from tests.nethost import resolve_test_name

BACKENDS = [b for b in os.environ.get("ISOLATE_TEST_BACKENDS", "nsjail,gvisor").split(",") if b]


def backend_missing(backend: str) -> str | None:
    """Why `backend` cannot run here, or None."""
    if os.geteuid() != 0:
        return "sandboxes need root (namespaces, cgroups, uid maps)"
    if backend == "nsjail":
        from isolate.jail.nsjail import find_nsjail

        try:
            find_nsjail()
        except Exception as exc:
            return f"nsjail unavailable: {exc}"
    else:
        try:
            find_runsc()
        except Exception as exc:
            return str(exc)
    return None


@pytest.fixture(scope="session")
def state_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: its 0700 folders would stop each sandbox's uid from reaching its layer.
    path = Path(tempfile.mkdtemp(prefix="isolate-test-", dir="/var/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "backends(*names): belongs to these backends' passes only (not collected in others)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Drop, rather than skip, the backend passes a test does not belong to (a `backends` mark, or
    an audit case that applies to some backends only): a skip would read as something not run."""
    kept, dropped = [], []
    for item in items:
        params = item.callspec.params if hasattr(item, "callspec") else {}
        marker = item.get_closest_marker("backends")
        allowed = tuple(marker.args) if marker else tuple(getattr(params.get("attack"), "backends", ()))
        (dropped if allowed and params.get("backend", allowed[0]) not in allowed else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    reason = backend_missing(request.param)
    if reason:
        pytest.skip(f"{request.param}: {reason}")
    return request.param


@pytest.fixture(scope="session")
def manager(state_dir: Path, backend: str) -> Iterator[SandboxManager]:
    settings = Settings(state_dir=state_dir, idle_timeout=600, backend=backend, limits=Limits(memory_mb=256, pids=128, exec_timeout=60),
                        resolver=resolve_test_name, nameservers=())
    manager = SandboxManager(settings)
    yield manager
    for name in manager.names():
        manager.destroy(name)
    manager.pool.drain()
    leftovers = cgroups.list_sandbox_cgroups(settings.instance)
    for name in leftovers:
        cgroups.SandboxCgroup(settings.instance, name).remove()
    cgroups.remove_parent(settings.instance)
    network = network_leftovers(manager)
    manager.clean_leftovers()
    assert not leftovers, f"tests left cgroups behind: {leftovers}"
    assert not network, f"tests left network state behind: {network}"
    assert not host_processes_mentioning(state_dir), "tests left processes behind"
    assert not host_processes_mentioning(settings.runtime_dir), "tests left processes behind"
    shutil.rmtree(settings.runtime_dir, ignore_errors=True)
    with open("/proc/self/mountinfo") as handle:
        assert str(state_dir) not in handle.read(), "tests left mounts behind"
    assert not loop_devices_serving(state_dir), "tests left loop devices behind"


def host_processes_mentioning(text: object) -> list[str]:
    """Command lines of host processes that name `text` (runsc's name their state folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(text) in cmdline and entry.name != str(os.getpid()):
            found.append(cmdline)
    return found


def loop_devices_serving(folder: Path, settle: float = 2.0) -> list[str]:
    """Loop devices whose backing file lies under `folder`, once `settle` seconds passed without
    them going (the kernel detaches an autoclear device in the background after its last user)."""
    deadline = time.monotonic() + settle
    while True:
        found = []
        for backing in Path("/sys/block").glob("loop*/loop/backing_file"):
            with contextlib.suppress(OSError):
                if backing.read_text().startswith(str(folder) + "/"):
                    found.append(backing.parent.parent.name)
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def network_leftovers(manager: SandboxManager) -> list[str]:
    """Veths, addresses and nftables state of this test instance that still exist (namespaces die with their jails)."""
    networks = manager.networks
    found = [f"veth:{interface}" for interface in netns.veths_by_alias(networks.alias("")).values()]
    found += [f"address:{key}" for key in networks.pool.names()]
    if nft.available() and nft.table_exists(networks.table):
        found.append(f"nft table:{networks.table}")
    return found


def unique_name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_sandbox(manager: SandboxManager, backend: str) -> Iterator:
    """Create sandboxes on the parametrized backend; each is destroyed after the test."""
    made: list[str] = []

    def make(**options) -> Sandbox:
        name = unique_name()
        made.append(name)
        return Sandbox(manager, manager.open(name, backend=backend, **options))

    yield make
    for name in made:
        manager.destroy(name)


@pytest.fixture
def sandbox(make_sandbox) -> Sandbox:
    return make_sandbox()


@pytest.fixture(scope="session")
def worker_state_dir(manager: SandboxManager) -> Iterator[Path]:
    """A state folder of the workers' own: a starting worker stops every jail it finds in its folder."""
    path = Path(tempfile.mkdtemp(prefix="isolate-worker-test-", dir="/var/tmp"))
    path.chmod(0o711)
    yield path
    workers_manager = SandboxManager(Settings(state_dir=path))
    for name in workers_manager.names():
        workers_manager.destroy(name)
    leftovers = cgroups.list_sandbox_cgroups(workers_manager.settings.instance)
    network = network_leftovers(workers_manager)
    workers_manager.discard()
    assert not leftovers, f"worker tests left cgroups behind: {leftovers}"
    assert not network, f"worker tests left network state behind: {network}"


@pytest.fixture(scope="module")
def worker(worker_state_dir: Path, backend: str) -> Iterator:
    """A running worker with a token, shared by a module's tests; its sandboxes are on the session's backend."""
    from tests.workers import Worker

    running = Worker(worker_state_dir, backend=backend).start()
    yield running
    running.stop()
