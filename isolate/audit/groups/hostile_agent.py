"""A hostile agent: code inside a sandbox replaces the agent, and the host's client must
still never hang, never exhaust its memory, and report a clean error.

How the replacement is real, not simulated: the sandbox's root folder is its own, so code
inside can swap /lib64 (a symlink to usr/lib64) for a folder of its own. The next time
the sandbox starts, the kernel loads the agent's Python through /lib64's dynamic loader,
which is now a tiny program that execs the attacker's Python agent instead. It runs under
the same confinement (the audit checks that too), holding the host's channel.
"""

from __future__ import annotations

import os
import resource
import struct
import time

from ...errors import IsolateError
from ..battery import Audit, case

GROUP = "file-api"
LOADER = "/lib64/ld-linux-x86-64.so.2"
HOSTILE_SOURCE = r'''
import os, socket, stat, sys, threading, time

def channel():
    for fd in range(3, 64):
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=fd)
        except OSError:
            continue
        if sock.type == socket.SOCK_DGRAM or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            return sock
        sock.detach()
    sys.exit(3)

def exact(conn, size):
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data

def frame(body, payload=b""):
    return len(body).to_bytes(4, "big") + len(payload).to_bytes(4, "big") + body + payload

def status():
    fields = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
    return '{"ok": true, "pid": %d, "capeff": "%s", "seccomp": "%s"}' % (os.getpid(), fields["CapEff"].strip(), fields["Seccomp"].strip())

def serve(conn):
    while True:
        head = exact(conn, 8)
        request = exact(conn, int.from_bytes(head[:4], "big")).decode()
        exact(conn, int.from_bytes(head[4:], "big"))
        mode = request.split("hostile-", 1)[1].split('"')[0].split("/")[0] if "hostile-" in request else "status"
        if mode == "status":
            conn.sendall(frame(status().encode()))
        elif mode == "huge":
            conn.sendall((1 << 20).to_bytes(4, "big") + (0xFFFFFFF0).to_bytes(4, "big"))
            time.sleep(30)
        elif mode == "flood":
            conn.sendall(frame(b'{"ev": "start", "pid": 2}'))
            chunk = frame(b'{"ev": "out", "fd": 1}', b"x" * (1 << 20))
            while True:
                conn.sendall(chunk)
        elif mode == "drip":
            conn.sendall((1000).to_bytes(4, "big") + (0).to_bytes(4, "big"))
            while True:
                conn.sendall(b"a")
                time.sleep(0.2)
        elif mode == "silent":
            time.sleep(60)
        elif mode == "garbage":
            conn.sendall(os.urandom(4096))
        elif mode == "deep":
            conn.sendall(frame(b"[" * 500000))
        elif mode == "types":
            conn.sendall(frame(b'{"ev": "start", "pid": "x"}'))
            conn.sendall(frame(b'{"ev": "out", "fd": "1"}', b"ignored"))
            conn.sendall(frame(b'{"ev": "exit", "exit_code": "NaN", "signal": [9], "reason": "<script>", "cpu": {}, "wall": -1e308, "maxrss": "x"}'))
        elif mode == "code":
            conn.sendall(frame(('{"ok": false, "code": "../../etc", "message": "%s"}' % ("m" * 500000)).encode()))
        elif mode == "stop":
            conn.sendall(frame(b'{"ok": true, "exists": true}'))
            stopped.set()
        else:
            conn.sendall(frame(b'{"ok": true}'))

def accept_forever(door):
    while True:
        while stopped.is_set():
            time.sleep(1)
        if door.type == socket.SOCK_DGRAM:
            _, ancillary, _, _ = door.recvmsg(1, socket.CMSG_SPACE(16))
            fds = [int.from_bytes(data[i:i + 4], sys.byteorder) for _, _, data in ancillary for i in range(0, len(data) - 3, 4)]
        else:
            fds = [door.accept()[0].detach()]
        for fd in fds:
            threading.Thread(target=guarded, args=(socket.socket(fileno=fd),), daemon=True).start()

def guarded(conn):
    try:
        serve(conn)
    except Exception:
        pass
    finally:
        conn.close()

if os.getpid() != 1:
    sys.exit(127)  # an ordinary command run through the swapped loader: just fail
stopped = threading.Event()
accept_forever(channel())
'''


def exec_program(argv: list[str]) -> bytes:
    """A static, position-independent x86_64 ELF whose whole program is execve(argv[0], argv, NULL).

    Used as the dynamic loader it runs as the interpreter of every dynamically linked
    program, so the agent's Python ends up running the attacker's program instead.
    """
    strings = [text.encode() + b"\0" for text in argv]
    header_size, code_size = 64 + 56, 2 + 8 * len(argv) + 3 + 7 + 2 + 5 + 2 + 5 + 5 + 2
    offsets, position = [], header_size + code_size
    for text in strings:
        offsets.append(position)
        position += len(text)
    code = bytearray(b"\x6a\x00")  # push 0: argv's terminator
    for offset in reversed(offsets):  # lea rax, [rip + string]; push rax
        here = header_size + len(code)
        code += b"\x48\x8d\x05" + struct.pack("<i", offset - (here + 7)) + b"\x50"
    code += b"\x48\x89\xe6"  # mov rsi, rsp (argv)
    here = header_size + len(code)
    code += b"\x48\x8d\x3d" + struct.pack("<i", offsets[0] - (here + 7))  # lea rdi, [rip + argv[0]]
    code += b"\x31\xd2" + b"\xb8\x3b\x00\x00\x00" + b"\x0f\x05"  # xor edx, edx; mov eax, 59 (execve); syscall
    code += b"\xbf\x7f\x00\x00\x00" + b"\xb8\x3c\x00\x00\x00" + b"\x0f\x05"  # exit(127) if execve failed
    assert len(code) == code_size
    body = bytes(code) + b"".join(strings)
    size = header_size + len(body)
    elf = b"\x7fELF\x02\x01\x01" + b"\0" * 9 + struct.pack("<HHIQQQIHHHHHH", 3, 0x3E, 1, header_size, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    program_header = struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, size, size, 0x1000)  # PT_LOAD, R+X, the whole file
    return elf + program_header + body


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _hostile(audit: Audit):
    """A sandbox whose agent has been replaced, from inside, by HOSTILE_SOURCE."""

    def install():
        sandbox = audit.sandbox("hostile")
        loader = os.path.realpath(LOADER)  # the real one, under /usr, which the sandbox shares read-only
        sandbox.write_file("/workspace/.agent.py", HOSTILE_SOURCE)
        sandbox.write_file("/workspace/.loader", exec_program([loader, "/usr/bin/python3", "-I", "-S", "/workspace/.agent.py"]))
        swap = audit.python(sandbox, "import os\nos.makedirs('/lib64.new')\n"
                                     "os.rename('/workspace/.loader', '/lib64.new/ld-linux-x86-64.so.2')\n"
                                     "os.chmod('/lib64.new/ld-linux-x86-64.so.2', 0o755)\n"
                                     "os.unlink('/lib64')\nos.rename('/lib64.new', '/lib64')\nprint('swapped')")
        if swap.stdout.strip() != "swapped":
            raise RuntimeError(f"could not swap /lib64: {swap.stderr[-200:]}")
        audit.manager.stop(sandbox.name)  # the next call starts the sandbox again: with the attacker's agent
        return sandbox

    return audit.memo("hostile-sandbox", install)


def _call(audit: Audit, message: dict, timeout: float = 3.0, max_payload: int = 1 << 20) -> str:
    """One request to the hostile agent through the host's real client; the error code it ends with."""
    sandbox = _hostile(audit)
    client = audit.manager.client(sandbox.name)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    try:
        client.call(message, max_payload=max_payload, timeout=timeout)
        outcome = "answered"
    except IsolateError as exc:
        outcome = exc.code
    elapsed = time.monotonic() - started
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) >> 10
    if elapsed > timeout + 2:
        return f"{outcome} after {elapsed:.1f} s"
    if grown > 100:
        return f"{outcome}, memory grew {grown} MiB"
    return outcome


@case(GROUP, "hostile-agent-still-confined", "replaced, no capabilities, seccomp 2")
def hostile_agent_confined(audit: Audit) -> str:
    """Code inside replaces the agent (swapping /lib64 for its own loader); the replacement runs,
    as PID 1, under the same confinement: no capabilities, the seccomp filter."""
    sandbox = _hostile(audit)
    reply, _ = audit.manager.client(sandbox.name).call({"op": "ping"}, timeout=10)
    if reply.get("capeff") is None:
        return "the real agent answered (the replacement did not start)"
    confined = int(str(reply["capeff"]), 16) == 0 and reply.get("seccomp") == "2"
    return "replaced, no capabilities, seccomp 2" if confined else f"replaced, CapEff {reply['capeff']}, seccomp {reply.get('seccomp')}"


@case(GROUP, "hostile-agent-huge-frame", "SANDBOX_START_FAILED")
def hostile_huge_frame(audit: Audit) -> str:
    """The agent announces a 4 GiB answer: refused from the header, nothing allocated."""
    return _call(audit, {"op": "exists", "path": "/hostile-huge"})


@case(GROUP, "hostile-agent-endless-output", "SANDBOX_START_FAILED")
def hostile_endless_output(audit: Audit) -> str:
    """The agent streams output without end for an exec: the host stops at the exec's output limit."""
    sandbox = _hostile(audit)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    try:
        sandbox.exec("hostile-flood", timeout=5)
        outcome = "answered"
    except IsolateError as exc:
        outcome = exc.code
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) >> 10
    if time.monotonic() - started > 10 or grown > 100:
        return f"{outcome} after {time.monotonic() - started:.1f} s, memory grew {grown} MiB"
    return outcome


@case(GROUP, "hostile-agent-slow-drip", "SANDBOX_START_FAILED")
def hostile_slow_drip(audit: Audit) -> str:
    """The agent drips an answer a byte at a time: the call ends at its deadline, not never."""
    return _call(audit, {"op": "exists", "path": "/hostile-drip"}, timeout=2.0)


@case(GROUP, "hostile-agent-silent", "SANDBOX_START_FAILED")
def hostile_silent(audit: Audit) -> str:
    """The agent reads the request and never answers: the call ends at its deadline."""
    return _call(audit, {"op": "exists", "path": "/hostile-silent"}, timeout=2.0)


@case(GROUP, "hostile-agent-garbage", "SANDBOX_START_FAILED")
def hostile_garbage(audit: Audit) -> str:
    """The agent answers with random bytes."""
    return _call(audit, {"op": "exists", "path": "/hostile-garbage"})


@case(GROUP, "hostile-agent-deep-json", "SANDBOX_START_FAILED")
def hostile_deep_json(audit: Audit) -> str:
    """The agent answers with JSON nested half a million levels deep."""
    return _call(audit, {"op": "exists", "path": "/hostile-deep"})


@case(GROUP, "hostile-agent-error-code", "INTERNAL_ERROR")
def hostile_error_code(audit: Audit) -> str:
    """The agent answers with an unknown error code (a path) and a 500 kB message: a generic
    error with a cut message comes back."""
    try:
        audit.manager.client(_hostile(audit).name).call({"op": "exists", "path": "/hostile-code"}, timeout=3)
    except IsolateError as exc:
        return exc.code if len(exc.message) <= 2000 else f"{exc.code} with a {len(exc.message)}-byte message"
    return "answered"


@case(GROUP, "hostile-agent-wrong-types", "exit 0, no signal, reason exited")
def hostile_wrong_types(audit: Audit) -> str:
    """The agent answers an exec with fields of the wrong types: the result is sanitized."""
    result = _hostile(audit).exec("hostile-types", timeout=5)
    return f"exit {result.exit_code}, {'no signal' if result.signal is None else result.signal}, reason {result.reason}"


@case(GROUP, "hostile-agent-stops-accepting", "SANDBOX_START_FAILED")
def hostile_stops_accepting(audit: Audit) -> str:
    """The agent stops reading its door and the door's queue fills: a call gives up instead of hanging."""
    sandbox = _hostile(audit)
    _call(audit, {"op": "exists", "path": "/hostile-stop"})
    audit.manager.client(sandbox.name).close()
    import socket

    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    filler.setblocking(False)
    try:
        filler.connect(str(audit.manager.socket_path(sandbox.name)))
        for _ in range(100000):  # more than any queue the kernel allows a datagram socket
            try:
                filler.send(b"x")
            except BlockingIOError:
                break
        started = time.monotonic()
        outcome = _call(audit, {"op": "ping"}, timeout=2.0)
        running = audit.manager.is_running(sandbox.name)
        elapsed = time.monotonic() - started
        return outcome if elapsed < 6 and running else f"{outcome}, running={running}, {elapsed:.1f} s"
    finally:
        filler.close()


@case(GROUP, "hostile-agent-destroyed", "gone")
def hostile_destroyed(audit: Audit) -> str:
    """After all that, destroying the sandbox removes it: processes, cgroups and files."""
    sandbox = _hostile(audit)
    pids = audit.host_pids(sandbox)
    folder = audit.sandbox_folder(sandbox)
    sandbox.destroy()
    deadline = time.monotonic() + 2  # the jail's supervisor may still await its reaper
    while (alive := [pid for pid in pids if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    return "gone" if not alive and not folder.exists() and not audit.host_pids(sandbox) else f"left pids {alive}"
