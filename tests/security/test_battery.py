"""The battery itself: its cases fail when the posture is weakened, its canaries notice a
leak, and its tools (the seccomp-filter reader, the hostile loader) work."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from isolate import SandboxManager
from isolate.audit import Audit, Case, all_cases
from isolate.audit.canaries import SECRET_VARIABLE
from isolate.audit.groups.hostile_agent import exec_program
from isolate.audit.seccomp import AUDIT_ARCH_I386, AUDIT_ARCH_X86_64, run_program, verdict

CASES = {c.id: c for c in all_cases()}
ALLOW_ALL = "POLICY nothing_denied { ALLOW { read } }\nUSE nothing_denied DEFAULT ALLOW\n"


def synthetic(attack) -> Case:
    return Case("test", "synthetic", "done", attack, "a case written for this test")


@pytest.fixture
def audit(manager: SandboxManager, backend: str):
    run = Audit(manager, backend)
    yield run
    run.close()


@pytest.mark.backends("nsjail")  # the policy file is nsjail's (Kafel); gVisor gets it rendered, tested in test_kafel
def test_an_allow_all_policy_fails_the_syscall_cases(manager: SandboxManager, backend: str, tmp_path: Path) -> None:
    policy = tmp_path / "allow-all.kafel"
    policy.write_text(ALLOW_ALL)
    policy.chmod(0o644)
    weak = Audit(manager, backend, policy=str(policy))
    try:
        for case_id in ("privilege/syscall-mount", "privilege/syscall-unshare", "privilege/syscall-ptrace",
                        "privilege/syscall-x32-mount", "privilege/syscall-socket-af-packet", "privilege/syscall-ioctl-tiocsti-high-bits"):
            result = weak.run(CASES[case_id])
            assert result.passed is False, result.line()
            assert "filter ALLOW" in result.observed, result.line()
    finally:
        weak.close()


def test_the_canaries_notice_a_leaked_secret(audit: Audit) -> None:
    result = audit.run(synthetic(lambda run: run.saw("output: " + os.environ[SECRET_VARIABLE]) or "done"))
    assert result.passed is False and "secret" in result.detail


def test_the_canaries_notice_a_marker_on_the_host(audit: Audit) -> None:
    def attack(run: Audit) -> str:
        Path("/tmp", run.canaries.marker).write_text("escaped")
        return "done"

    result = audit.run(synthetic(attack))
    assert result.passed is False and "marker appeared on the host in /tmp" in result.detail
    audit.close()
    assert not Path("/tmp", audit.canaries.marker).exists()


def test_the_canaries_notice_a_changed_file_and_a_killed_process(audit: Audit) -> None:
    def attack(run: Audit) -> str:
        run.canaries.file.write_text("overwritten")
        run.canaries.process.kill()
        run.canaries.process.wait()
        return "done"

    result = audit.run(synthetic(attack))
    assert result.passed is False
    assert "host canary file changed" in result.detail and "host canary process died" in result.detail


def test_a_case_that_raises_fails_and_the_audit_goes_on(audit: Audit) -> None:
    result = audit.run(synthetic(lambda run: 1 / 0))
    assert result.passed is False and result.observed == "error: ZeroDivisionError"
    assert audit.run(synthetic(lambda run: "done")).passed is True


def test_the_host_walk_case_catches_a_walker_that_follows_symlinks(audit: Audit, monkeypatch: pytest.MonkeyPatch) -> None:
    def naive_walk(sandbox_dir: Path) -> int:  # the shape of the walk isolate had before: by path
        total, stack = 0, [str(sandbox_dir / "upper")]
        while stack:
            try:
                entries = list(os.scandir(stack.pop()))
            except OSError:
                continue
            for entry in entries:
                try:
                    total += entry.stat(follow_symlinks=False).st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                except OSError:
                    continue
        return total

    monkeypatch.setattr("isolate.manager.rootfs.disk_usage", naive_walk)
    result = audit.run(CASES["file-api/symlink-swap-race-host-walk"])
    assert result.passed is False, result.line()


def test_bpf_interpreter_on_a_hand_written_filter() -> None:
    program = [
        (0x20, 0, 0, 4),  # ld arch
        (0x15, 1, 0, AUDIT_ARCH_X86_64),  # jeq x86_64 ? next+1 : next
        (0x06, 0, 0, 0x00000000),  # ret KILL_THREAD
        (0x20, 0, 0, 0),  # ld nr
        (0x15, 0, 1, 165),  # jeq mount
        (0x06, 0, 0, 0x00050001),  # ret ERRNO(EPERM)
        (0x06, 0, 0, 0x7FFF0000),  # ret ALLOW
    ]
    assert str(verdict([program], 165)) == "ERRNO(EPERM)"
    assert str(verdict([program], 39)) == "ALLOW"
    assert str(verdict([program], 39, arch=AUDIT_ARCH_I386)) == "KILL_THREAD"
    assert run_program(program, bytes(64)) == 0  # arch 0 is not x86_64
    # stacked filters: the strictest action wins
    assert str(verdict([[(0x06, 0, 0, 0x7FFF0000)], program], 165)) == "ERRNO(EPERM)"


@pytest.mark.parametrize(("argv", "status"), [(["/bin/true"], 0), (["/bin/sh", "-c", "exit 7"], 7), (["/nonexistent"], 127)])
def test_the_hostile_loader_is_a_program_that_execs_its_argv(tmp_path: Path, argv: list[str], status: int) -> None:
    program = tmp_path / "loader"
    program.write_bytes(exec_program(argv))
    program.chmod(0o755)
    assert subprocess.run([str(program)], timeout=10).returncode == status
