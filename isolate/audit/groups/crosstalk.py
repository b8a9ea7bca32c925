"""Processes and IPC across sandboxes: signals, kill -1, System V and POSIX IPC, abstract
unix sockets, file locks and inotify watches on the files every sandbox shares."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from functools import partial

from .. import probes
from ..battery import Audit, add, case

GROUP = "cross-sandbox"
NEIGHBOUR_SLEEP = "317.5"  # a recognizable argument: the neighbour's long-lived process


def _neighbour(audit: Audit):
    """A second sandbox with a long-lived process in it."""

    def start():
        sandbox = audit.sandbox("neighbour")
        audit.exec(sandbox, f"sleep {NEIGHBOUR_SLEEP} >/dev/null 2>&1 &")
        return sandbox

    return audit.memo("neighbour", start)


def _neighbour_alive(audit: Audit) -> bool:
    return NEIGHBOUR_SLEEP in audit.exec(_neighbour(audit), "ps", ["-eo", "args"]).stdout


@case(GROUP, "kill-minus-one", "neighbour and host untouched")
def kill_minus_one(audit: Audit) -> str:
    """`kill -9 -1` (every process the caller may signal) reaches only the caller's sandbox."""
    _neighbour(audit)
    attacker = audit.fresh()
    audit.exec(attacker, "kill -9 -1; true")
    if not _neighbour_alive(audit):
        return "the neighbour's process died"
    return "neighbour and host untouched" if attacker.ping() == "pong" else "the attacker's own agent died"


@case(GROUP, "signals-to-the-agent", "the agent still answers")
def signals_to_the_agent(audit: Audit) -> str:
    """A command sends the agent (PID 1 inside) every signal there is, SIGKILL and SIGSTOP included."""
    sandbox = audit.fresh()
    audit.exec(sandbox, "for s in $(seq 1 31) $(seq 34 64); do kill -s $s 1 2>/dev/null; done; true")
    answered = audit.exec(sandbox, "echo", ["alive"]).stdout == "alive\n" and sandbox.ping() == "pong"
    return "the agent still answers" if answered else "the agent is gone"


@case(GROUP, "signal-host-process", "ESRCH")
def signal_host_process(audit: Audit) -> str:
    """SIGKILL the host canary process by its host pid."""
    return audit.python(audit.sandbox(GROUP), probes.ERRNO_OF, f"os.kill({audit.canaries.process.pid}, 9)").stdout.strip()


@case(GROUP, "signal-neighbour-by-host-pid", "ESRCH", backends=("nsjail",))
def signal_neighbour(audit: Audit) -> str:
    """SIGKILL the neighbour's process by its host pid."""
    pid = audit.host_pid_of(_neighbour(audit), ["sleep", NEIGHBOUR_SLEEP])
    return audit.python(audit.sandbox(GROUP), probes.ERRNO_OF, f"os.kill({pid}, 9)").stdout.strip()


@case(GROUP, "neighbour-processes-invisible", "invisible")
def neighbour_processes(audit: Audit) -> str:
    """The neighbour's processes (and the host's) appear nowhere in this sandbox's /proc."""
    _neighbour(audit)
    listing = audit.exec(audit.sandbox(GROUP), "ps", ["-eo", "args"]).stdout
    seen = [marker for marker in (NEIGHBOUR_SLEEP, "sleep 86400") if marker in listing]
    return "invisible" if not seen else "sees " + " ".join(seen)


IPC = {
    "sysv-shared-memory": "libc('shmget', {key}, 4096, {create})",
    "sysv-message-queue": "libc('msgget', {key}, {create})",
    "sysv-semaphore": "libc('semget', {key}, 1, {create})",
}


def _ipc(audit: Audit, call: str) -> str:
    key = 0x15A0 + len(call)
    made = audit.python(audit.sandbox(GROUP), probes.ERRNO_OF, call.format(key=key, create="0o1600")).stdout.strip()
    if made != "ok":
        return f"could not create it: {made}"
    return audit.python(_neighbour(audit), probes.ERRNO_OF, call.format(key=key, create=0)).stdout.strip()


for _name, _call in IPC.items():
    add(GROUP, _name, "ENOENT", partial(_ipc, call=_call), f"An object made with a fixed key in one sandbox ({_name}) is not found by that key in another.")


@case(GROUP, "posix-shared-memory", "ENOENT")
def posix_shared_memory(audit: Audit) -> str:
    """A POSIX shared-memory object (/dev/shm) made in one sandbox does not exist in another."""
    name = f"/dev/shm/{audit.canaries.marker}"
    if audit.exec(audit.sandbox(GROUP), "sh", ["-c", f"echo secret > {name} && test -s {name}"]).exit_code != 0:
        return "could not create it"
    return audit.python(_neighbour(audit), probes.ERRNO_OF, f"open({name!r})").stdout.strip()


@case(GROUP, "posix-message-queue", "ENOENT")
def posix_message_queue(audit: Audit) -> str:
    """A POSIX message queue made in one sandbox cannot be opened in another."""
    name = f"/{audit.canaries.marker}".encode()
    made = audit.python(audit.sandbox(GROUP), probes.ERRNO_OF, f"libc('mq_open', {name!r}, os.O_CREAT | os.O_RDWR, 0o600, None)")
    if made.stdout.strip() != "ok":
        return f"could not create it: {made.stdout.strip()}"
    return audit.python(_neighbour(audit), probes.ERRNO_OF, f"libc('mq_open', {name!r}, os.O_RDWR)").stdout.strip()


@case(GROUP, "abstract-socket-of-neighbour", "ECONNREFUSED")
def abstract_socket_of_neighbour(audit: Audit) -> str:
    """A neighbour listens on an abstract unix socket (which has no file to hide): it is unreachable."""
    name, neighbour = audit.canaries.marker, _neighbour(audit)
    audit.background_python(neighbour, f"import socket, time\ns = socket.socket(socket.AF_UNIX)\ns.bind('\\0{name}')\n"
                                       "s.listen()\nwhile True: s.accept()[0].close()", 6)
    statement = f"s = socket.socket(socket.AF_UNIX); s.connect('\\0{name}')"
    deadline = time.monotonic() + 3
    while audit.python(neighbour, probes.ERRNO_OF, statement).stdout.strip() != "ok":  # the control: it listens
        if time.monotonic() > deadline:
            return "the neighbour's listener did not start"
        time.sleep(0.1)
    return audit.python(audit.sandbox(GROUP), probes.ERRNO_OF, statement).stdout.strip()


@case(GROUP, "abstract-socket-of-host", "ECONNREFUSED")
def abstract_socket_of_host(audit: Audit) -> str:
    """The host listens on an abstract unix socket: it is unreachable from inside."""
    name = audit.canaries.marker + "-host"
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind("\0" + name)
        listener.listen()
        listener.setblocking(False)
        statement = f"s = socket.socket(socket.AF_UNIX); s.connect('\\0{name}')"
        seen = audit.python(audit.sandbox(GROUP), probes.ERRNO_OF, statement).stdout.strip()
        try:
            listener.accept()[0].close()
            return "the host accepted a connection from inside"
        except BlockingIOError:
            return seen
    finally:
        listener.close()


@case(GROUP, "unix-socket-of-host", "ENOENT")
def unix_socket_of_host(audit: Audit) -> str:
    """The host listens on a unix socket in /tmp: its path does not exist inside."""
    path = f"/tmp/{audit.canaries.marker}.sock"
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(path)
        listener.listen()
        statement = f"s = socket.socket(socket.AF_UNIX); s.connect({path!r})"
        return audit.python(audit.sandbox(GROUP), probes.ERRNO_OF, statement).stdout.strip()
    finally:
        listener.close()
        os.unlink(path)


def _lock_stays_home(audit: Audit, path: str) -> str:
    """One sandbox holds an exclusive flock on `path`; another sandbox and the host can still take it."""
    holder = audit.sandbox(GROUP)
    if audit.exec(holder, "flock", ["-n", "-x", path, "true"]).exit_code != 0:
        return "no lock can be taken on it"  # gVisor's own devices take no lock: nothing to share
    audit.background(holder, f"flock -x {path} sleep 4", 5)
    time.sleep(0.3)
    if audit.exec(holder, "flock", ["-n", "-x", path, "true"]).exit_code == 0:
        return "the holder's lock did not take"
    neighbour = audit.exec(_neighbour(audit), "flock", ["-n", "-x", path, "true"]).exit_code == 0
    host = True
    if os.path.exists(path) and path.startswith(("/usr/", "/dev/")):  # the same file on the host
        with open(path, "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(handle, fcntl.LOCK_UN)
            except BlockingIOError:
                host = False
    if neighbour and host:
        return "the lock stays in its sandbox"
    return f"blocks {'the neighbour' if not neighbour else ''}{' and ' if not neighbour and not host else ''}{'the host' if not host else ''}"


LOCKED_FILES = {
    "lock-on-system-file": ("/usr/bin/env", "a file every sandbox and the host share underneath"),
    "lock-on-device": ("/dev/null", "a device every sandbox has"),
    "lock-on-image-file": ("/etc/passwd", "a file of the shared read-only image"),
}
for _name, (_path, _what) in LOCKED_FILES.items():
    add(GROUP, _name, "the lock stays in its sandbox", partial(_lock_stays_home, path=_path), f"An exclusive lock on {_path}, {_what}.",
        differs=(("gvisor", "no lock can be taken on it", "gVisor's own devices refuse flock"),) if _path.startswith("/dev/") else ())


@case(GROUP, "inotify-on-system-file", "no event from outside, its own seen")
def inotify_on_system_file(audit: Audit) -> str:
    """A watch on /usr/bin/env sees nothing when the neighbour and the host open and read it
    (and, as a control, does see its own process open it)."""
    watcher = audit.sandbox(GROUP)
    source = (
        "import ctypes, os, select, time\nlibc = ctypes.CDLL(None)\nfd = libc.inotify_init1(0)\n"
        "libc.inotify_add_watch(fd, b'/usr/bin/env', 0x1 | 0x20)\nopen('/workspace/watching', 'w').close()\n"
        "def events(done):\n"
        "    seen, until = 0, time.time() + 6\n"
        "    while time.time() < until and not done():\n"
        "        if select.select([fd], [], [], 0.05)[0]: os.read(fd, 4096); seen += 1\n"
        "    return seen\n"
        "outside = events(lambda: os.path.exists('/workspace/outside-done'))\n"
        "open('/usr/bin/env', 'rb').close()\nown = int(bool(select.select([fd], [], [], 2)[0]))\n"
        "open('/workspace/events', 'w').write('%d %d' % (outside, own))"
    )
    audit.exec(watcher, "rm -f /workspace/watching /workspace/events /workspace/outside-done")
    audit.background_python(watcher, source, 10)
    deadline = time.monotonic() + 5
    while not watcher.exists("/workspace/watching") and time.monotonic() < deadline:
        time.sleep(0.05)
    audit.exec(_neighbour(audit), "cat /usr/bin/env > /dev/null")
    with open("/usr/bin/env", "rb") as handle:
        handle.read()
    time.sleep(0.3)  # let any event that crossed over arrive before the watcher's phase ends
    watcher.write_file("/workspace/outside-done", "")
    deadline = time.monotonic() + 5
    while not watcher.exists("/workspace/events") and time.monotonic() < deadline:
        time.sleep(0.05)
    if not watcher.exists("/workspace/events"):
        return "the watcher never finished"
    outside, own = (int(n) for n in watcher.read_file("/workspace/events").content.split())
    return f"{'no event' if not outside else f'{outside} events'} from outside, {'its own seen' if own else 'its own not seen'}"
