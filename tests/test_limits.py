"""Resource limits hold, and the sandbox answers afterwards."""

from __future__ import annotations

import pytest

from isolate import FileSystemError, Limits


def test_memory_hog_ends_with_reason_oom(make_sandbox):
    sandbox = make_sandbox(limits=Limits(memory_mb=64))
    result = sandbox.exec("python3", ["-c", "x = bytearray(512 << 20); print('survived')"])
    assert result.reason == "oom", result
    assert "survived" not in result.stdout
    assert sandbox.exec("echo", ["alive"]).stdout == "alive\n"


def test_fork_bomb_is_contained_and_the_sandbox_still_answers(make_sandbox):
    sandbox = make_sandbox(limits=Limits(pids=64))
    sandbox.write_file("/workspace/kept.txt", "kept")
    # `sleep` is forked before the bomb fills the pids limit, and `wait` is a builtin: the command
    # lasts until the deadline however fast the bomb grows
    result = sandbox.exec("sleep 30 & bomb() { bomb | bomb & }; bomb; wait", timeout=3)
    assert result.reason == "timeout"  # the whole process group went at the deadline
    assert sandbox.exec("echo", ["alive"]).stdout == "alive\n"
    assert sandbox.read_file("/workspace/kept.txt").content == "kept"


def test_pids_limit_refuses_forks_past_it(make_sandbox):
    sandbox = make_sandbox(limits=Limits(pids=32))
    result = sandbox.exec("for i in $(seq 60); do sleep 5 & done; wait", timeout=20)
    assert "fork" in result.stderr.lower() or "resource" in result.stderr.lower()


def test_file_size_limit(make_sandbox):
    sandbox = make_sandbox(limits=Limits(file_size_mb=1))
    result = sandbox.exec("head -c 2000000 /dev/zero > /workspace/big")
    assert result.exit_code != 0
    assert sandbox.exec("stat -c %s /workspace/big").stdout.strip() == str(1 << 20)


def test_open_files_limit(make_sandbox):
    sandbox = make_sandbox(limits=Limits(open_files=64))
    assert sandbox.exec("ulimit -n").stdout.strip() == "64"


def test_disk_quota_stops_writes_with_no_space_and_keeps_the_sandbox(make_sandbox):
    sandbox = make_sandbox(limits=Limits(disk_mb=32))
    result = sandbox.exec("head -c 64M /dev/zero > /workspace/fill")
    assert result.exit_code != 0 and "No space left" in result.stderr
    with pytest.raises(FileSystemError) as caught:
        sandbox.write_file("/workspace/more", b"x" * (40 << 20))
    assert caught.value.code == "NO_SPACE"
    sandbox.exec("rm /workspace/fill")
    sandbox.write_file("/workspace/small", "fits")
    assert sandbox.read_file("/workspace/small").content == "fits"


def test_without_a_quota_the_layer_is_a_plain_folder(make_sandbox, manager):
    sandbox = make_sandbox(limits=Limits(disk_mb=None))
    sandbox.write_file("/workspace/f", "plain")
    assert (manager.sandbox_dir(sandbox.name) / "upper" / "workspace" / "f").read_text() == "plain"


def test_the_cpu_quota_is_the_share_with_one_period_of_burst(make_sandbox, manager):
    """The long-run average is the sandbox's share; a quiet period's unused time may be spent in a spike."""
    sandbox = make_sandbox(limits=Limits(cpu_percent=50))
    sandbox.exec("true")
    folders = manager.cgroup(sandbox._record).folders
    v1 = [folder for folder in folders if (folder / "cpu.cfs_quota_us").exists()]
    if v1:
        quota, period = (int((v1[0] / name).read_text()) for name in ("cpu.cfs_quota_us", "cpu.cfs_period_us"))
        burst_file = v1[0] / "cpu.cfs_burst_us"
    else:
        quota, period = (int(value) for value in (folders[0] / "cpu.max").read_text().split())
        burst_file = folders[0] / "cpu.max.burst"
    assert quota * 100 // period == 50
    if not burst_file.exists():
        pytest.skip("this kernel has no CPU burst (Linux 5.14+)")
    assert int(burst_file.read_text()) == quota
