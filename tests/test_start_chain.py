"""How a jail starts: the blank disk copied for each sandbox, the runtime folder on tmpfs, the
loop device, and cheap cgroup moves."""

from __future__ import annotations

import os
import subprocess
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isolate import IsolateError, Sandbox, SandboxManager, Settings, cgroups, config, rootfs, syscalls
from isolate.jail import launch
from tests.conftest import unique_name

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting and chowning need root")

# (offset, bytes) pieces of a sparse file, anywhere in its first 64 MiB
pieces = st.lists(st.tuples(st.integers(0, 64 << 20), st.binary(min_size=1, max_size=70_000)), max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces=pieces, tail=st.integers(0, 1 << 20))
def test_a_sparse_copy_has_the_same_bytes_and_no_more_data_than_its_source(tmp_path, pieces, tail):
    source, target = tmp_path / "source", tmp_path / "target"
    source.unlink(missing_ok=True)
    target.unlink(missing_ok=True)
    with open(source, "wb") as handle:
        for offset, data in pieces:
            handle.seek(offset)
            handle.write(data)
        handle.truncate(max([offset + len(data) for offset, data in pieces], default=0) + tail)
    rootfs.copy_sparse(source, target)
    assert target.read_bytes() == source.read_bytes()
    assert target.stat().st_blocks <= source.stat().st_blocks + 8  # holes stay holes (one block of slack per edge)


def test_a_sparse_copy_never_overwrites(tmp_path):
    (tmp_path / "source").write_bytes(b"new")
    (tmp_path / "target").write_bytes(b"kept")
    with pytest.raises(FileExistsError):
        rootfs.copy_sparse(tmp_path / "source", tmp_path / "target")
    assert (tmp_path / "target").read_bytes() == b"kept"


@needs_root
def test_each_sandbox_gets_its_own_copy_of_one_blank_disk_handed_to_its_uid(manager, backend):
    first, second = (Sandbox(manager, manager.open(unique_name("disk"), backend=backend)) for _ in range(2))
    try:
        for sandbox in (first, second):
            sandbox.write_file("/workspace/own", sandbox.name)
            assert sandbox.exec("stat", ["-c", "%u", "/workspace", "/tmp", "/root"]).stdout.split() == ["0", "0", "0"]
        assert first.read_file("/workspace/own").content == first.name  # two images, not one shared
        disk_mb = first._record.limits.disk_mb
        blanks = list(manager.settings.images_dir.glob(f"blank-{disk_mb}m-*.img"))  # one per size
        assert len(blanks) == 1 and os.stat(blanks[0]).st_uid == 0
        image = manager.sandbox_dir(first.name) / rootfs.DISK_IMAGE
        assert image.stat().st_size == disk_mb << 20
        assert image.stat().st_blocks * 512 < 8 << 20  # sparse: a copy of the blank's data only
    finally:
        first.destroy()
        second.destroy()


@needs_root
def test_runtime_state_lives_on_a_tmpfs_outside_the_state_folder(manager, sandbox):
    sandbox.exec("true")
    run_dir = manager.run_dir(sandbox.name)
    assert (run_dir / "agent.sock").exists()
    assert not run_dir.is_relative_to(manager.settings.state_dir)
    points = {target: kind for _, target, kind, _ in syscalls.mount_table()}
    holder = max((point for point in points if str(run_dir).startswith(point.rstrip("/") + "/")), key=len)
    assert points[holder] == "tmpfs"


@needs_root
def test_a_runtime_folder_someone_else_owns_is_refused(monkeypatch):
    root = Path(tempfile.mkdtemp(prefix="isolate-runtime-", dir="/dev/shm"))
    state = Path(tempfile.mkdtemp(prefix="isolate-state-", dir="/var/tmp"))
    try:
        monkeypatch.setenv("ISOLATE_RUNTIME_ROOT", str(root))
        config.runtime_root.cache_clear()
        (root / "isolate").mkdir()
        os.chown(root / "isolate", 65534, 65534)  # planted by an unprivileged user
        manager = SandboxManager(Settings(state_dir=state))
        with pytest.raises(IsolateError) as refused:
            manager.open("planted")
        assert refused.value.code == "HOST_NOT_READY"
    finally:
        monkeypatch.delenv("ISOLATE_RUNTIME_ROOT")
        config.runtime_root.cache_clear()
        for folder in (root, state):
            for path in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
                path.rmdir() if path.is_dir() else path.unlink()
            folder.rmdir()


@needs_root
def test_a_restarted_sandbox_mounts_its_disk_again_and_keeps_its_files(manager, sandbox):
    sandbox.write_file("/workspace/kept", "kept")
    manager.stop(sandbox.name)
    assert sandbox.read_file("/workspace/kept").content == "kept"
    device = (manager.run_dir(sandbox.name) / "loop").read_text()
    backing = Path(f"/sys/block/{Path(device).name}/loop/backing_file").read_text().strip()
    assert backing == str(manager.sandbox_dir(sandbox.name) / rootfs.DISK_IMAGE)


@needs_root
def test_cgroup_moves_are_made_cheap_where_the_host_has_cgroup2(manager, sandbox):
    sandbox.exec("true")
    if cgroups.v2_mount_point() is None:
        pytest.skip("this host has no cgroup2 hierarchy to set favordynmods on")
    assert cgroups.favors_dynamic_moves()


@needs_root
def test_the_start_helper_joins_cgroups_drops_to_the_uid_and_runs_the_program(manager, tmp_path):
    helper = launch.enter_helper(manager.settings.libexec_dir)
    if helper is None:
        pytest.skip("no C compiler on this host: sh and setpriv start jails instead (tested below)")
    assert os.stat(helper).st_uid == 0 and os.access(helper, os.X_OK)
    ran = subprocess.run([str(helper), "0", "65534", "/bin/sh", "-c", "id -u; id -G"], capture_output=True, text=True)
    assert (ran.returncode, ran.stdout.split()) == (0, ["65534", "65534"])  # no group of root's kept
    assert subprocess.run([str(helper), "0", "-", "/usr/bin/id", "-u"], capture_output=True, text=True).stdout == "0\n"
    refusals = {96: ["x", "-", "/bin/true"], 97: ["1", str(tmp_path / "no-cgroup"), "-", "/bin/true"],
                98: ["0", "not-a-uid", "/bin/true"], 99: ["0", "-", str(tmp_path / "no-program")]}
    for status, args in refusals.items():
        assert subprocess.run([str(helper), *args], capture_output=True).returncode == status


@needs_root
def test_without_a_c_compiler_sh_and_setpriv_start_the_jail(manager, backend, monkeypatch):
    monkeypatch.setattr(launch, "enter_helper", lambda libexec_dir: None)
    sandbox = Sandbox(manager, manager.open(unique_name("nocc"), backend=backend))
    try:
        assert sandbox.exec("id", ["-u"]).stdout == "0\n"
        assert sandbox.exec("cat", ["/proc/self/cgroup"]).stdout.strip().endswith(":/")
        host_uids = {os.stat(f"/proc/{pid}").st_uid for pid in manager.cgroup(sandbox._record).pids()}
        assert host_uids == {sandbox._record.uid} if backend == "nsjail" else sandbox._record.uid in host_uids
    finally:
        sandbox.destroy()


@needs_root
@pytest.mark.backends("nsjail")
def test_nsjail_runs_nothing_from_a_config_cut_short(manager, monkeypatch, tmp_path):
    """nsjail reads its config from a pipe while its mounts are made; were the host to die mid-way,
    what arrived must start nothing, so the command is the config's last line and only there."""
    from isolate.jail import nsjail

    seen: list[str] = []
    original = nsjail.render_config
    monkeypatch.setattr(nsjail, "render_config", lambda *args: seen.append(original(*args)) or seen[-1])
    sandbox = Sandbox(manager, manager.open(unique_name("cut")))
    try:
        sandbox.exec("true")
        lines = seen[-1].splitlines()
        assert lines[-1].startswith("exec_bin {") and sum(line.startswith("exec_bin") for line in lines) == 1
        binary = nsjail.stage_nsjail(manager.settings.libexec_dir)
        for cut in (len(lines) - 1, len(lines) // 2):
            (tmp_path / "cut.cfg").write_text("\n".join(lines[:cut]) + "\n")
            ran = subprocess.run([str(binary), "--config", str(tmp_path / "cut.cfg")], capture_output=True, text=True, timeout=30)
            assert ran.returncode != 0 and "No command" in ran.stderr
    finally:
        sandbox.destroy()


@needs_root
def test_what_is_mounted_under_a_folder_with_a_space_in_its_name_is_found_and_detached(tmp_path):
    """The mount table escapes a space as \\040; the mount point comes back as the path it is."""
    inner = tmp_path / "a folder" / "inner"
    inner.mkdir(parents=True)
    outcome: list[object] = []

    def in_a_namespace_of_its_own() -> None:  # this thread alone leaves the host's mount namespace
        try:
            syscalls.unshare(syscalls.CLONE_NEWNS)
            syscalls.mount("none", "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
            syscalls.mount("isolate-test", inner, "tmpfs", syscalls.MS_NOSUID)
            listed = str(inner) in [point for _, point, _, _ in syscalls.mount_table()]
            outcome.append((listed, rootfs.unmount_under(tmp_path / "a folder")))
            outcome.append(str(inner) in [point for _, point, _, _ in syscalls.mount_table()])
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=in_a_namespace_of_its_own)
    thread.start()
    thread.join()
    assert outcome == [(True, [str(inner)]), False]
