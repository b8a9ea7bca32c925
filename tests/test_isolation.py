"""What a sandbox can see of the host and of other sandboxes: nothing it should not."""

from __future__ import annotations

import os
import subprocess


def status_field(sandbox, field: str) -> str:
    for line in sandbox.exec("cat", ["/proc/self/status"]).stdout.splitlines():
        if line.startswith(field + ":"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"{field} missing from /proc/self/status")


def test_no_capabilities_seccomp_and_no_new_privs(sandbox):
    assert status_field(sandbox, "CapEff") == "0000000000000000"
    assert status_field(sandbox, "CapPrm") == "0000000000000000"
    assert status_field(sandbox, "CapBnd") == "0000000000000000"
    assert status_field(sandbox, "Seccomp") == "2"
    # asked with prctl(PR_GET_NO_NEW_PRIVS): gVisor's /proc/self/status has no NoNewPrivs line
    no_new_privs = sandbox.exec("python3", ["-c", "import ctypes; print(ctypes.CDLL(None).prctl(39, 0, 0, 0, 0))"])
    assert no_new_privs.stdout.strip() == "1", no_new_privs


def test_only_loopback_interface(sandbox):
    devices = sandbox.exec("cat", ["/proc/net/dev"]).stdout.splitlines()[2:]
    assert [line.split(":")[0].strip() for line in devices] == ["lo"]
    assert sandbox.exec("cat", ["/proc/net/route"]).stdout.splitlines()[1:] == []


def test_proc_shows_only_the_sandbox_processes(sandbox):
    pids = [p for p in sandbox.exec("ls", ["/proc"]).stdout.split() if p.isdigit()]
    assert "1" in pids
    assert len(pids) < 10
    assert str(os.getpid()) not in pids or int(os.getpid()) < 10
    assert "python3" in sandbox.exec("cat", ["/proc/1/cmdline"]).stdout  # PID 1 is the agent, not a host process


def test_host_files_outside_the_image_are_invisible(sandbox, state_dir):
    marker = f"/root/isolate-marker-{os.getpid()}"
    with open(marker, "w") as handle:
        handle.write("host secret")
    try:
        assert not sandbox.exists(marker)
        assert not sandbox.exists(str(state_dir))
        assert not sandbox.exists("/var/lib/isolate")
        assert sandbox.exec("cat", [marker]).exit_code != 0
    finally:
        os.unlink(marker)


def test_host_shadow_is_not_readable(sandbox):
    result = sandbox.exec("cat", ["/etc/shadow"])
    assert result.exit_code != 0
    assert result.stdout == ""
    assert "Permission denied" in result.stderr or "No such file" in result.stderr


def test_etc_is_sanitized(sandbox):
    passwd = sandbox.read_file("/etc/passwd").content
    assert {line.split(":")[0] for line in passwd.splitlines()} == {"root", "nobody"}
    assert sandbox.exec("hostname", []).stdout.strip() == "sandbox"


def test_root_inside_is_an_unprivileged_host_uid(sandbox, manager):
    assert sandbox.exec("id", ["-u"]).stdout.strip() == "0"
    sandbox.exec("sleep 20 & echo started")
    host = subprocess.run(["ps", "-o", "uid=,args=", "-p", ",".join(map(str, manager.cgroup(sandbox._record).pids()))],
                          capture_output=True, text=True).stdout.splitlines()
    # every host process of the sandbox, its jail's own included, runs as the sandbox's own unprivileged uid
    assert host and {int(line.split()[0]) for line in host} == {sandbox._record.uid}
    assert sandbox._record.uid >= 100_000
    # under nsjail the sandbox's commands are those host processes; under gVisor they live in the
    # Sentry's kernel and the host sees only the Sentry, the gofer and systrap's stubs
    assert any("sleep 20" in line for line in host) == (sandbox.backend == "nsjail")


def test_two_sandboxes_see_neither_files_nor_processes(make_sandbox):
    first, second = make_sandbox(), make_sandbox()
    first.write_file("/workspace/mine.txt", "first")
    first.exec("sleep 30 & echo started")
    assert not second.exists("/workspace/mine.txt")
    assert "sleep 30" not in second.exec("ps", ["-eo", "args"]).stdout
    assert "sleep 30" in first.exec("ps", ["-eo", "args"]).stdout
    assert first.exec("hostname").stdout == second.exec("hostname").stdout
    # their root uids differ on the host, so even a shared file could not be written across
    assert first._record.uid != second._record.uid


def test_mounts_do_not_leak_to_the_host(sandbox, state_dir):
    sandbox.exec("true", [])
    with open("/proc/mounts") as handle:
        mounts = handle.read()
    assert str(state_dir) not in mounts
