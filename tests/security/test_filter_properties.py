"""The seccomp filter a sandbox really runs under, read back from the kernel and evaluated for
whole classes of calls, not the battery's examples: any argument, any high bits the kernel
ignores, any x32 number, any i386 call."""

from __future__ import annotations

import os
import signal
import uuid
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isolate import SandboxManager
from isolate.audit import probes, seccomp
from isolate.sandbox import Sandbox

CLONE_NEW_ANY = 0x7E020080
ALLOWED_FAMILIES = {1, 2, 10, 16}
words = st.integers(0, 2**64 - 1)
high_bits = st.integers(0, 2**32 - 1).map(lambda high: high << 32)


@pytest.fixture(scope="module")
def filters(manager: SandboxManager) -> list[seccomp.Program]:
    """The filters of a process in a fresh nsjail sandbox (the `manager` fixture skips without root or nsjail)."""
    name = f"filter-{uuid.uuid4().hex[:10]}"
    sandbox = Sandbox(manager, manager.open(name, backend="nsjail"))
    try:
        sandbox.exec("sleep 30.125 >/dev/null 2>&1 &")
        pid = next(p for p in manager.cgroup(sandbox._record).pids() if Path(f"/proc/{p}/cmdline").read_bytes() == b"sleep\x0030.125\x00")
        try:
            return seccomp.read_filters(pid)
        finally:
            os.kill(pid, signal.SIGKILL)
    finally:
        manager.destroy(name)


def decide(filters: list[seccomp.Program], nr: int, args: tuple[int, ...] = (), arch: int = seccomp.AUDIT_ARCH_X86_64) -> str:
    return str(seccomp.verdict(filters, nr, args, arch))


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(sorted(probes.DENIED_SYSCALLS)), args=st.lists(words, min_size=6, max_size=6))
def test_denied_calls_are_denied_whatever_their_arguments(filters, name, args):
    assert decide(filters, probes.DENIED_SYSCALLS[name][0], tuple(args)) == "ERRNO(EPERM)"


@settings(max_examples=300, deadline=None)
@given(nr=st.integers(0x40000000, 0x40000000 + 1023), args=st.lists(words, min_size=6, max_size=6))
def test_no_x32_call_is_allowed(filters, nr, args):
    assert decide(filters, nr, tuple(args)) == "ERRNO(ENOSYS)"


@settings(max_examples=200, deadline=None)
@given(nr=st.integers(0, 1023), args=st.lists(words, min_size=6, max_size=6))
def test_every_i386_call_is_killed(filters, nr, args):
    assert decide(filters, nr, tuple(args), seccomp.AUDIT_ARCH_I386).startswith("KILL")


@settings(max_examples=200, deadline=None)
@given(nr=st.integers(470, 2**31 - 1))
def test_numbers_past_the_known_table_are_enosys(filters, nr):
    assert decide(filters, nr) == "ERRNO(ENOSYS)"


@settings(max_examples=300, deadline=None)
@given(request=st.integers(0, 2**32 - 1), high=high_bits, fd=words)
def test_ioctl_is_judged_on_the_low_32_bits_of_its_request(filters, request, high, fd):
    expected = "ERRNO(EPERM)" if request in (0x5412, 0x541C) else "ALLOW"
    assert decide(filters, 16, (fd, high | request, 0)) == expected


@settings(max_examples=300, deadline=None)
@given(family=st.integers(0, 64), high=high_bits, kind=st.sampled_from([1, 2, 5]), protocol=st.sampled_from([0, 4]))
def test_socket_families_outside_the_allowlist_are_refused(filters, family, high, kind, protocol):
    verdict = decide(filters, 41, (high | family, kind, protocol))
    assert (verdict == "ALLOW") == (family in ALLOWED_FAMILIES), verdict


@settings(max_examples=300, deadline=None)
@given(flags=st.integers(0, 2**32 - 1), high=high_bits)
def test_clone_with_any_namespace_flag_is_refused(filters, flags, high):
    expected = "ERRNO(EPERM)" if flags & CLONE_NEW_ANY else "ALLOW"
    assert decide(filters, 56, (high | flags, 0, 0, 0, 0)) == expected


@settings(max_examples=100, deadline=None)
@given(kind=st.integers(0, 15).filter(lambda k: k not in (1, 2, 5)), flags=st.sampled_from([0, 0x800, 0x80000]), family=st.sampled_from([2, 10]))
def test_raw_and_packet_ip_sockets_are_refused(filters, kind, flags, family):
    assert decide(filters, 41, (family, kind | flags, 0)) == "ERRNO(EPERM)"
