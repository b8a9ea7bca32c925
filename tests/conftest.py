"""Shared fixtures: a private state folder per test run, real sandboxes, and a leak check at the end.

Integration tests start real nsjail (and gVisor) sandboxes; they need root and the
backend's binary. Where either is missing they skip and say why; CI has both.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from isolate import Limits, Sandbox, SandboxManager, Settings, cgroups
from isolate.net import netns, nft
from tests.nethost import resolve_test_name

BACKENDS = [b for b in os.environ.get("ISOLATE_TEST_BACKENDS", "nsjail").split(",") if b]


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
    elif shutil.which("runsc") is None:
        return "runsc (gVisor) is not installed"
    return None


@pytest.fixture(scope="session")
def state_dir() -> Iterator[Path]:
    # Not under pytest's tmp_path: its 0700 folders would stop each sandbox's uid from reaching its layer.
    path = Path(tempfile.mkdtemp(prefix="isolate-test-", dir="/var/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def manager(state_dir: Path) -> Iterator[SandboxManager]:
    reason = backend_missing("nsjail")
    if reason:
        pytest.skip(reason)
    settings = Settings(state_dir=state_dir, idle_timeout=600, limits=Limits(memory_mb=256, pids=128, exec_timeout=60),
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


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    reason = backend_missing(request.param)
    if reason:
        pytest.skip(f"{request.param}: {reason}")
    return request.param


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
    workers_manager.clean_leftovers()
    shutil.rmtree(path, ignore_errors=True)
    assert not leftovers, f"worker tests left cgroups behind: {leftovers}"
    assert not network, f"worker tests left network state behind: {network}"


@pytest.fixture(scope="module")
def worker(worker_state_dir: Path) -> Iterator:
    """A running worker with a token, shared by a module's tests."""
    from tests.workers import Worker

    running = Worker(worker_state_dir).start()
    yield running
    running.stop()
