"""What only the gVisor backend has: runsc's platforms, the host-wide bound, the Sentry's host processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from isolate import IsolateError, Sandbox
from isolate.jail.gvisor import MAX_VARIABLE, SLOTS_DIR, WAIT_VARIABLE, Slots, container_id
from tests.conftest import backend_missing, host_processes_mentioning, unique_name

pytestmark = [
    pytest.mark.skipif(backend_missing("gvisor") is not None, reason=f"gvisor: {backend_missing('gvisor')}"),
    pytest.mark.backends("gvisor"),
]


@pytest.fixture
def gvisor_manager(manager):
    """The session's manager in its gvisor pass (the only pass these tests are collected in)."""
    return manager


@pytest.fixture
def gvisor_sandbox(gvisor_manager):
    manager = gvisor_manager
    name = unique_name("gv")
    yield Sandbox(manager, manager.open(name, backend="gvisor"))
    manager.destroy(name)


def fake_cgroup(folder: Path, running: bool) -> Path:
    folder.mkdir()
    (folder / "cgroup.procs").write_text(f"{os.getpid()}\n" if running else "")
    return folder


def test_slots_count_the_registered_cgroups_that_have_processes(tmp_path):
    slots = Slots(tmp_path / "slots", limit=2, wait=0)
    first, second = fake_cgroup(tmp_path / "a", True), fake_cgroup(tmp_path / "b", True)
    for cgroup in (first, second):
        with slots.claim(cgroup):
            pass
    assert slots.in_use() == 2
    with pytest.raises(IsolateError) as caught, slots.claim(fake_cgroup(tmp_path / "c", True)):
        pass
    assert caught.value.code == "RESOURCE_BUSY" and MAX_VARIABLE in caught.value.message
    (first / "cgroup.procs").write_text("")  # as when a sandbox's processes end, however they end
    with slots.claim(tmp_path / "c"):
        pass
    assert sorted(slots.holders()) == [second, tmp_path / "c"]


def test_a_running_sandbox_holds_one_slot_until_it_stops(gvisor_sandbox, gvisor_manager):
    gvisor_sandbox.exec("true", [])
    folder = gvisor_manager.cgroup(gvisor_sandbox._record).folders[0]
    assert Slots().holders().count(folder) == 1
    gvisor_sandbox.stop()
    assert folder not in Slots().holders()
    assert str(folder) not in [os.readlink(link) for link in SLOTS_DIR.iterdir() if link.is_symlink()]  # nothing left registered


def test_starting_past_the_bound_fails_clearly_and_loses_nothing(gvisor_sandbox, monkeypatch):
    gvisor_sandbox.write_file("/workspace/kept", "kept")
    gvisor_sandbox.stop()
    monkeypatch.setenv(MAX_VARIABLE, str(Slots().in_use()))
    monkeypatch.setenv(WAIT_VARIABLE, "0")
    with pytest.raises(IsolateError) as caught:
        gvisor_sandbox.exec("true", [])
    assert caught.value.code == "RESOURCE_BUSY"
    monkeypatch.delenv(MAX_VARIABLE)
    assert gvisor_sandbox.read_file("/workspace/kept").content == "kept"


def test_every_host_process_is_in_the_sandbox_cgroup_as_its_uid(gvisor_sandbox, gvisor_manager):
    manager = gvisor_manager
    gvisor_sandbox.exec("sleep 30 & echo started")
    pids = manager.cgroup(gvisor_sandbox._record).pids()
    runsc = host_processes_mentioning(manager.run_dir(gvisor_sandbox.name) / "runsc")
    assert len(runsc) >= 2  # the Sentry and the gofer
    assert container_id(gvisor_sandbox.name) in " ".join(runsc)
    for pid in pids:
        assert os.stat(f"/proc/{pid}").st_uid == gvisor_sandbox._record.uid
    with open("/proc/self/mountinfo") as handle:
        assert str(manager.sandbox_dir(gvisor_sandbox.name)) not in handle.read()  # the overlay is in runsc's namespace only


def test_container_ids_have_one_width_so_no_id_prefixes_another():
    ids = {container_id(name) for name in ("a", "a1", "a10", "x" * 63)}
    assert len(ids) == 4 and len({len(i) for i in ids}) == 1


def test_a_killed_sentry_is_cleaned_up_and_the_sandbox_starts_again(gvisor_sandbox, gvisor_manager):
    manager = gvisor_manager
    gvisor_sandbox.write_file("/workspace/kept", "kept")
    sentry = next(pid for pid in manager.cgroup(gvisor_sandbox._record).pids()
                  if b"runsc-sandbox" in Path(f"/proc/{pid}/cmdline").read_bytes())
    os.kill(sentry, signal.SIGKILL)
    assert gvisor_sandbox.read_file("/workspace/kept").content == "kept"
    assert gvisor_sandbox.exec("echo", ["back"]).stdout == "back\n"


def test_a_sandbox_outlives_the_process_that_started_it(gvisor_manager, state_dir):
    manager = gvisor_manager
    name = unique_name("detached")
    script = (
        "import sys; from pathlib import Path; from isolate import SandboxManager, Sandbox, Settings;"
        f"m = SandboxManager(Settings(state_dir=Path({str(state_dir)!r}), backend='gvisor'));"
        f"Sandbox(m, m.open({name!r})).exec('echo started > /workspace/from-child')"
    )
    try:
        subprocess.run([sys.executable, "-c", script], check=True, timeout=120, cwd=Path(__file__).parent.parent)
        assert manager.is_running(name)
        assert Sandbox(manager, manager.open(name)).exec("cat", ["/workspace/from-child"]).stdout == "started\n"
    finally:
        manager.destroy(name)
    assert not host_processes_mentioning(manager.run_dir(name))


def test_doctor_reports_runsc_and_its_platforms(state_dir):
    env = {**os.environ, "ISOLATE_STATE_DIR": str(state_dir)}
    result = subprocess.run([sys.executable, "-m", "isolate.cli", "doctor"], capture_output=True, text=True, env=env, timeout=180)
    lines = result.stdout.splitlines()
    assert any("runsc" in line and "20240729" in line for line in lines), result.stdout
    platforms = {name: line for name in ("systrap", "ptrace", "kvm") for line in lines if line.split()[1:2] == [f"gvisor-{name}"]}
    assert set(platforms) == {"systrap", "ptrace", "kvm"}, result.stdout
    assert platforms["systrap"].startswith("ok")
    assert any(line.split()[1:3] == ["gvisor", "platform"] and "systrap" in line for line in lines), result.stdout
    assert any(line.split()[1:3] == ["gvisor", "bound"] and "sandboxes at once" in line for line in lines), result.stdout


def test_a_policy_runsc_cannot_be_given_is_refused_before_anything_is_made(gvisor_manager, tmp_path):
    policy = tmp_path / "traced.kafel"
    policy.write_text("POLICY p { TRACE(1) { ptrace } } USE p DEFAULT ALLOW")
    name = unique_name("policy")
    with pytest.raises(IsolateError) as caught:
        gvisor_manager.open(name, backend="gvisor", policy=str(policy))
    assert caught.value.code == "VALIDATION_FAILED" and "TRACE" in caught.value.message
    assert not gvisor_manager.sandbox_dir(name).exists()
