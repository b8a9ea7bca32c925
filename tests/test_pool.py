"""The warm pool: spares started ahead of need are handed out under the name asked for."""

from __future__ import annotations

from dataclasses import replace

import pytest

from isolate import Limits, Sandbox, SandboxManager, cgroups
from tests.conftest import unique_name


@pytest.fixture
def pooled(manager):
    pooled = SandboxManager(replace(manager.settings, warm_pool=2))
    yield pooled
    for name in pooled.names():
        pooled.destroy(name)
    pooled.pool.drain()


def test_a_claimed_spare_becomes_the_named_sandbox(pooled):
    pooled.pool.fill()
    spares = pooled.pool.spares()
    assert len(spares) == 2
    spare_uids = {pooled.load(s).uid for s in spares}
    name = unique_name("pool")
    sandbox = Sandbox(pooled, pooled.open(name))
    assert sandbox._record.uid in spare_uids
    assert name in pooled.names() and not any(n.startswith("_") for n in pooled.names())
    assert sandbox.exec("echo", ["warm"]).stdout == "warm\n"
    assert pooled.cgroup(sandbox._record).pids(), "the running jail is in the claimed sandbox's cgroup"
    sandbox.write_file("/workspace/f", "kept")
    sandbox.stop()
    assert sandbox.read_file("/workspace/f").content == "kept"  # restarted under its new name
    assert pooled.info(name).state == "running"


def test_the_pool_refills_and_other_options_bypass_it(pooled):
    pooled.pool.fill()
    before = set(pooled.pool.spares())
    custom = pooled.open(unique_name("pool"), limits=Limits(memory_mb=128))
    assert set(pooled.pool.spares()) == before  # not served from the pool
    assert custom.limits.memory_mb == 128
    pooled.open(unique_name("pool"))
    pooled.pool.fill()
    assert len(pooled.pool.spares()) == 2 and set(pooled.pool.spares()) != before


def test_draining_leaves_nothing(pooled):
    pooled.pool.fill()
    groups = {pooled.cgroup(pooled.load(spare)).name for spare in pooled.pool.spares()}
    pooled.pool.drain()
    assert pooled.pool.spares() == []
    assert groups.isdisjoint(cgroups.list_sandbox_cgroups(pooled.settings.instance))
