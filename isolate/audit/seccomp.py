"""Read the seccomp filters a sandboxed process runs under, and evaluate them as the kernel would.

Why: inside a sandbox with no capabilities, a privileged call fails with EPERM whether or
not the filter stops it, so an errno alone cannot prove the policy. The host (root) can
fetch the loaded classic-BPF programs with PTRACE_SECCOMP_GET_FILTER and run them on any
system call number, argument and architecture, including the x32 and i386 ABIs that this
kernel may not even implement.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from dataclasses import dataclass

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
X32_SYSCALL_BIT = 0x40000000

PTRACE_ATTACH = 16
PTRACE_DETACH = 17
PTRACE_SECCOMP_GET_FILTER = 0x420C

ACTIONS = {  # SECCOMP_RET_* (the top 16 bits), by precedence: the kernel keeps the lowest as s32
    0x80000000: "KILL_PROCESS",
    0x00000000: "KILL_THREAD",
    0x00030000: "TRAP",
    0x00050000: "ERRNO",
    0x7FC00000: "USER_NOTIF",
    0x7FF00000: "TRACE",
    0x7FFC0000: "LOG",
    0x7FFF0000: "ALLOW",
}

Program = list[tuple[int, int, int, int]]  # (code, jt, jf, k)


@dataclass(frozen=True)
class Verdict:
    action: str
    data: int

    def __str__(self) -> str:
        if self.action == "ERRNO":
            return f"ERRNO({errno.errorcode.get(self.data, self.data)})"
        return self.action


def read_filters(pid: int) -> list[Program]:
    """Every filter of host process `pid`, newest first (briefly stops it under ptrace)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.ptrace.restype = ctypes.c_long
    libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
    if libc.ptrace(PTRACE_ATTACH, pid, None, None) != 0:
        raise OSError(ctypes.get_errno(), f"ptrace attach to {pid}")
    try:
        os.waitpid(pid, 0x40000000)  # __WALL: wait until it is stopped
        programs = []
        for index in range(64):
            count = libc.ptrace(PTRACE_SECCOMP_GET_FILTER, pid, ctypes.c_void_p(index), None)
            if count < 0:
                if ctypes.get_errno() == errno.ENOENT:
                    break
                raise OSError(ctypes.get_errno(), "PTRACE_SECCOMP_GET_FILTER")
            buffer = ctypes.create_string_buffer(count * 8)
            libc.ptrace(PTRACE_SECCOMP_GET_FILTER, pid, ctypes.c_void_p(index), buffer)
            programs.append([struct.unpack_from("<HBBI", buffer.raw, 8 * i) for i in range(count)])
        return programs
    finally:
        libc.ptrace(PTRACE_DETACH, pid, None, None)


def run_program(program: Program, data: bytes) -> int:
    """A classic-BPF interpreter for the instructions seccomp accepts."""
    a = x = pc = 0
    memory = [0] * 16
    while True:
        code, jt, jf, k = program[pc]
        pc += 1
        kind, operand = code & 0x07, (x if code & 0x08 else k)
        if kind == 0x00:  # LD
            a = _load(code & 0xE0, k, data, memory)
        elif kind == 0x01:  # LDX
            x = _load(code & 0xE0, k, data, memory)
        elif kind == 0x02:  # ST
            memory[k] = a
        elif kind == 0x03:  # STX
            memory[k] = x
        elif kind == 0x04:  # ALU
            a = _alu(code & 0xF0, a, operand) & 0xFFFFFFFF
        elif kind == 0x05:  # JMP
            pc += k if code & 0xF0 == 0x00 else jt if _jump_taken(code & 0xF0, a, operand) else jf
        elif kind == 0x06:  # RET
            return a if code & 0x18 == 0x10 else k
        elif code & 0xF8 == 0x00:  # MISC: TAX
            x = a
        else:  # MISC: TXA
            a = x


def _load(mode: int, k: int, data: bytes, memory: list[int]) -> int:
    if mode == 0x20:  # ABS: a word of seccomp_data
        return int(struct.unpack_from("<I", data, k)[0])
    if mode == 0x60:  # MEM: scratch memory
        return memory[k]
    if mode == 0x80:  # LEN
        return len(data)
    return k  # IMM


def _jump_taken(op: int, a: int, b: int) -> bool:
    return {0x10: a == b, 0x20: a > b, 0x30: a >= b, 0x40: bool(a & b)}[op]


def _alu(op: int, a: int, b: int) -> int:
    if op in (0x30, 0x90) and b == 0:
        return 0
    results = {
        0x00: a + b, 0x10: a - b, 0x20: a * b, 0x30: a // (b or 1), 0x40: a | b, 0x50: a & b,
        0x60: a << (b & 31), 0x70: a >> (b & 31), 0x80: -a, 0x90: a % (b or 1), 0xA0: a ^ b,
    }
    return results[op]


def verdict(programs: list[Program], nr: int, args: tuple[int, ...] = (), arch: int = AUDIT_ARCH_X86_64) -> Verdict:
    """What the kernel would do with this call: every filter runs, the strictest action wins."""
    padded = [value & 0xFFFFFFFFFFFFFFFF for value in (*args, 0, 0, 0, 0, 0, 0)[:6]]
    data = struct.pack("<iIQ6Q", nr if nr < 1 << 31 else nr - (1 << 32), arch, 0, *padded)
    best = None
    for program in programs:
        value = run_program(program, data)
        if best is None or _signed(value & 0xFFFF0000) < _signed(best & 0xFFFF0000):
            best = value
    if best is None:
        return Verdict("ALLOW", 0)
    return Verdict(ACTIONS.get(best & 0xFFFF0000, hex(best)), best & 0xFFFF)


def _signed(value: int) -> int:
    return value - (1 << 32) if value & 0x80000000 else value
