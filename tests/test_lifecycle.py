"""Named sandboxes persist across calls, processes and restarts, until destroyed; then nothing is left."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

import pytest

from isolate import AsyncSandbox, InvalidNameError, Sandbox, SandboxManager, cgroups, get_sandbox
from tests.conftest import loop_devices_serving, unique_name


def cli(state_dir, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ISOLATE_STATE_DIR": str(state_dir)}
    return subprocess.run([sys.executable, "-m", "isolate.cli", *args], capture_output=True, text=True, env=env, timeout=timeout)


def test_same_name_gives_the_same_sandbox(manager):
    name = unique_name()
    try:
        first = get_sandbox(name, manager=manager)
        first.write_file("/workspace/f", "kept")
        again = get_sandbox(name, manager=manager)
        assert again.read_file("/workspace/f").content == "kept"
    finally:
        manager.destroy(name)


def test_files_survive_a_stop_and_the_next_call_wakes_it(sandbox, manager):
    sandbox.write_file("/workspace/f", "kept")
    sandbox.exec("sleep 60 & echo started")
    sandbox.stop()
    assert not manager.is_running(sandbox.name)
    assert manager.cgroup(sandbox._record).pids() == []
    assert sandbox.read_file("/workspace/f").content == "kept"
    assert "sleep 60" not in sandbox.exec("ps", ["-eo", "args"]).stdout


def test_files_survive_a_new_manager_as_after_a_host_restart(sandbox, manager):
    sandbox.write_file("/workspace/f", "kept")
    manager.stop(sandbox.name)
    fresh = SandboxManager(manager.settings)
    assert Sandbox(fresh, fresh.open(sandbox.name)).read_file("/workspace/f").content == "kept"


def test_idle_sandbox_stops_itself_and_keeps_its_files(manager):
    from dataclasses import replace

    quick = SandboxManager(replace(manager.settings, idle_timeout=1))
    name = unique_name()
    try:
        sandbox = Sandbox(quick, quick.open(name))
        sandbox.write_file("/workspace/f", "kept")
        deadline = time.monotonic() + 10
        while quick.is_running(name) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not quick.is_running(name)
        assert sandbox.read_file("/workspace/f").content == "kept"  # wakes transparently
    finally:
        quick.destroy(name)


def test_destroy_leaves_nothing_behind(manager, state_dir):
    name = unique_name()
    sandbox = Sandbox(manager, manager.open(name))
    sandbox.exec("sleep 60 & echo started")
    uid = sandbox._record.uid
    group = manager.cgroup(sandbox._record).name
    sandbox.destroy()
    assert not (state_dir / "sandboxes" / name).exists()
    assert not manager.run_dir(name).exists()
    assert group not in cgroups.list_sandbox_cgroups(manager.settings.instance)
    host = subprocess.run(["ps", "-eo", "uid=,stat="], capture_output=True, text=True).stdout.splitlines()
    live = [line for line in host if line.split()[0] == str(uid) and not line.split()[1].startswith("Z")]
    assert live == []  # (an exited process may linger as a zombie until its parent reaps it)
    with open("/proc/mounts") as handle:
        assert name not in handle.read()
    assert not loop_devices_serving(state_dir / "sandboxes" / name)
    assert manager.load(name) is None


def test_cli_exec_persists_across_processes_and_rm_cleans_up(manager, state_dir, backend):
    name = unique_name("cli")
    write = cli(state_dir, "exec", name, "--backend", backend, "--", "sh", "-c", "echo hi > /workspace/f")
    assert write.returncode == 0, write.stderr
    read = cli(state_dir, "exec", name, "--", "cat", "/workspace/f")  # the sandbox keeps the backend it was made with
    assert (read.returncode, read.stdout) == (0, "hi\n")
    assert cli(state_dir, "exec", name, "--", "sh", "-c", "exit 7").returncode == 7
    group = manager.cgroup(manager.load(name)).name
    listing = cli(state_dir, "ls")
    line = next(line for line in listing.stdout.splitlines() if line.startswith(name))
    assert line.split()[1:3] == [backend, "running"]
    assert cli(state_dir, "rm", name).returncode == 0
    assert not (state_dir / "sandboxes" / name).exists()
    assert group not in cgroups.list_sandbox_cgroups(manager.settings.instance)


def test_cli_run_is_throwaway(manager, state_dir, backend):
    before = set(manager.names())
    result = cli(state_dir, "run", "--backend", backend, "--", "echo", "once")
    assert (result.returncode, result.stdout) == (0, "once\n")
    assert set(manager.names()) == before


def test_cli_files(manager, state_dir, tmp_path, backend):
    name = unique_name("cli")
    try:
        manager.open(name, backend=backend)
        source = tmp_path / "in.bin"
        source.write_bytes(b"\x00\x01data")
        assert cli(state_dir, "cp", str(source), f"{name}:/workspace/in.bin").returncode == 0
        assert cli(state_dir, "cp", f"{name}:/workspace/in.bin", str(tmp_path / "out.bin")).returncode == 0
        assert (tmp_path / "out.bin").read_bytes() == b"\x00\x01data"
        missing = cli(state_dir, "read", name, "/nope")
        assert missing.returncode == 125 and "FILE_NOT_FOUND" in missing.stderr
    finally:
        manager.destroy(name)


def test_cli_doctor_reports_a_ready_host(state_dir):
    result = cli(state_dir, "doctor")
    assert result.returncode == 0, result.stdout
    assert "host is ready" in result.stdout


@pytest.mark.parametrize("name", ["", "UPPER", "-lead", "trail-", "a" * 64, "under_score", "dot.name", "sp ace"])
def test_invalid_names_are_refused(manager, name):
    with pytest.raises(InvalidNameError) as caught:
        get_sandbox(name, manager=manager)
    assert caught.value.code == "INVALID_NAME"


def test_async_api_shares_the_sync_implementation(sandbox):
    async def scenario() -> None:
        asb = AsyncSandbox(sandbox)
        await asb.write_file("a.txt", "async")
        assert (await asb.read_file("a.txt")).content == "async"
        assert (await asb.exec("cat", ["a.txt"])).stdout == "async"
        events = [event.type async for event in await asb.exec("echo x; echo y >&2", stream=True)]
        assert events[0] == "start" and events[-1] == "complete" and "stdout" in events
        results = await asyncio.gather(*(asb.exec("echo", [str(i)]) for i in range(8)))
        assert [r.stdout for r in results] == [f"{i}\n" for i in range(8)]
        await asb.mkdir("d/e", recursive=True)
        await asb.rename_file("a.txt", "b.txt")
        await asb.move_file("b.txt", "d/e")
        assert await asb.exists("d/e/b.txt")
        assert [e.name for e in await asb.list_files("d/e")] == ["b.txt"]
        await asb.delete_file("d/e/b.txt")
        assert await asb.ping() == "pong"

    asyncio.run(scenario())
