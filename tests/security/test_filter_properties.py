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


def expected_socket_verdict(family: int, kind: int, protocol: int) -> str:
    """What the policy means to answer socket(family, kind, protocol), written out independently."""
    base = kind & 0xF
    if family not in ALLOWED_FAMILIES:
        return "ERRNO(EAFNOSUPPORT)"
    if family in (2, 10):
        if base in (3, 10):
            return "ERRNO(EPERM)"
        built_in = (base == 1 and protocol in (0, 6)) or (base == 2 and protocol in (0, 17, 1, 58))
        return "ALLOW" if built_in else "ERRNO(EPROTONOSUPPORT)"
    if family == 16:
        return "ALLOW" if protocol in (0, 4) else "ERRNO(EPROTONOSUPPORT)"
    return "ALLOW"


@settings(max_examples=500, deadline=None)
@given(family=st.integers(0, 64), kind=st.integers(0, 15), flags=st.sampled_from([0, 0x800, 0x80000]),
       protocol=st.integers(0, 300) | st.sampled_from([0, 1, 4, 6, 17, 58]), high=st.tuples(high_bits, high_bits, high_bits))
def test_sockets_are_judged_on_family_type_and_protocol(filters, family, kind, flags, protocol, high):
    verdict = decide(filters, 41, (high[0] | family, high[1] | kind | flags, high[2] | protocol))
    assert verdict == expected_socket_verdict(family, kind, protocol)


@settings(max_examples=300, deadline=None)
@given(flags=st.integers(0, 2**32 - 1), high=high_bits)
def test_clone_with_any_namespace_flag_is_refused(filters, flags, high):
    expected = "ERRNO(EPERM)" if flags & CLONE_NEW_ANY else "ALLOW"
    assert decide(filters, 56, (high | flags, 0, 0, 0, 0)) == expected
