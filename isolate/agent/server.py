"""The agent: the one long-lived process inside every sandbox (its PID 1 there).

The host never touches a sandbox's files itself; it asks the agent, which is confined
like any command (same namespaces, seccomp policy and cgroups), so a path or symlink
made inside resolves inside. The host treats every answer as untrusted input.

Start-up time is cold-start time, so only built-in modules are imported (`_thread`,
`_socket`, `select`, `os`), and commands are started with posix_spawn rather than
`subprocess`. This file is sent into the sandbox as source, after `protocol.py`.
"""

import _signal
import _socket
import _thread
import errno
import os
import select
import stat
import sys
import time

from .protocol import MAX_JSON_BYTES, ProtocolError, _quote, decode_frame, encode_frame  # host-only

MAX_REQUEST_PAYLOAD = 1 << 30
CHUNK = 65536
LINGER_AFTER_EXIT = 0.25  # seconds to drain pipes still held open by a command's daemons
MAX_LIST_ENTRIES = 100000
MAX_LIST_BYTES = MAX_JSON_BYTES - 65536  # the host refuses larger answers: stop and say truncated
EXIT_RECORD_TTL = 60.0
STOP_GRACE = 1.0  # seconds between stopping a timed-out session command's children and ending its shell
KILL_GRACE = 5.0  # seconds between SIGTERM and SIGKILL when a background process is killed
MAX_FINISHED_PROCESSES = 256
FDS_PER_KNOCK = 4
HOST_CHECK_SECONDS = 1.0  # how often a running command checks that the host is still there
SPAWN_RETRY_SECONDS = 1.0  # the last wait before giving up; all waits add up to about twice that
MSG_FLAGS = _socket.MSG_CMSG_CLOEXEC | _socket.MSG_DONTWAIT

ERRNO_CODES = {
    errno.ENOENT: "FILE_NOT_FOUND",
    errno.EISDIR: "IS_DIRECTORY",
    errno.ENOTDIR: "NOT_DIRECTORY",
    errno.EEXIST: "FILE_EXISTS",
    errno.ENOTEMPTY: "FILE_EXISTS",
    errno.EACCES: "PERMISSION_DENIED",
    errno.EPERM: "PERMISSION_DENIED",
    errno.EROFS: "READ_ONLY",
    errno.ENOSPC: "NO_SPACE",
    errno.EDQUOT: "NO_SPACE",
    errno.ENAMETOOLONG: "NAME_TOO_LONG",
    errno.EFBIG: "FILE_TOO_LARGE",
    errno.EBUSY: "RESOURCE_BUSY",
    errno.EINVAL: "VALIDATION_FAILED",
}


class AgentError(Exception):
    def __init__(self, code, message):
        Exception.__init__(self, message)
        self.code = code
        self.message = message


def os_error(exc, path):
    code = ERRNO_CODES.get(exc.errno, "FILESYSTEM_ERROR")
    if code == "FILE_NOT_FOUND":
        return AgentError(code, "File not found: %s" % path)
    return AgentError(code, "%s: %s" % (os.strerror(exc.errno or 0), path))


def must_exist(path):
    """The path itself (a symlink counts, dangling or not), or the error a caller should see."""
    try:
        os.lstat(path)
    except OSError as exc:
        raise os_error(exc, path) from None


class SpawnError(Exception):
    def __init__(self, err, stage):
        Exception.__init__(self, err, stage)
        self.errno = err
        self.stage = stage


class Agent:
    def __init__(self, door_fd, idle_timeout):
        self.door = _socket.socket(fileno=door_fd)
        self.idle_timeout = idle_timeout
        self.lock = _thread.allocate_lock()
        self.active = 0
        self.last_activity = time.monotonic()
        self.exits = {}  # pid -> (wait status, rusage, when reaped)
        self.watchers = {}  # pid -> callback(status, rusage): long-lived children (shells, background processes)
        self.wakers = set()
        self.sessions = {}  # id -> Session
        self.processes = ProcessTable(self)
        self.child_started = _thread.allocate_lock()
        self.child_started.acquire()
        self.spawn_lock = _thread.allocate_lock()
        self.ops = {
            "ping": self.op_ping,
            "exec": self.op_exec,
            "read": self.op_read,
            "write": self.op_write,
            "mkdir": self.op_mkdir,
            "delete": self.op_delete,
            "rename": self.op_rename,
            "move": self.op_move,
            "list": self.op_list,
            "exists": self.op_exists,
            "session_create": self.op_session_create,
            "session_exec": self.op_session_exec,
            "session_delete": self.op_session_delete,
            "session_list": self.op_session_list,
            "session_cwd": self.op_session_cwd,
            "process_start": self.processes.op_start,
            "process_list": self.processes.op_list,
            "process_get": self.processes.op_get,
            "process_kill": self.processes.op_kill,
            "process_kill_all": self.processes.op_kill_all,
            "process_logs": self.processes.op_logs,
            "process_stream": self.processes.op_stream,
        }

    # --- process bookkeeping: as PID 1 the agent reaps every process in the sandbox ---

    def reap_forever(self):
        while True:
            try:
                pid, status, usage = os.wait4(-1, 0)
            except ChildProcessError:
                self.child_started.acquire()
                continue
            now = time.monotonic()
            with self.lock:  # wakers are written under the lock: an exec closes its waker only after leaving the set
                watcher = self.watchers.pop(pid, None)
                if watcher is None:
                    self.exits[pid] = (status, usage, now)
                for old in [p for p, rec in self.exits.items() if now - rec[2] > EXIT_RECORD_TTL]:
                    del self.exits[old]
                wake_all(self.wakers)
            if watcher is not None:
                watcher(status, usage)

    def watch(self, pid, callback):
        """Have the reaper call `callback(status, rusage)` when `pid` ends (at once if it already has)."""
        with self.lock:
            record = self.exits.pop(pid, None)
            if record is None:
                self.watchers[pid] = callback
        if record is not None:
            callback(record[0], record[1])

    def spawn(self, argv, env, cwd, stdin_fd, stdout_fd, stderr_fd, status_fd=None):
        """Start `argv` in a session of its own; `status_fd`, if given, becomes its fd 3.

        posix_spawn (vfork and exec), not fork: no copy of the agent's address space, which
        costs milliseconds on the host and tens of them under gVisor."""
        path = find_program(argv[0], env.get("PATH", os.defpath))
        actions = [(os.POSIX_SPAWN_DUP2, stdin_fd, 0), (os.POSIX_SPAWN_DUP2, stdout_fd, 1), (os.POSIX_SPAWN_DUP2, stderr_fd, 2)]
        spare = None
        if status_fd is not None:
            if status_fd <= 3:  # dup2 onto itself would keep close-on-exec on older C libraries: go through a copy
                spare = status_fd = os.dup(status_fd)
            actions.append((os.POSIX_SPAWN_DUP2, status_fd, 3))
        with self.spawn_lock:  # the working directory is the agent's own, lent for one spawn at a time
            try:
                os.chdir(cwd)
            except OSError as exc:
                raise SpawnError(exc.errno or 0, "cwd") from None
            try:
                pid = self.posix_spawn_retrying(path, argv, env, actions)
            except OSError as exc:
                raise SpawnError(exc.errno or 0, "exec") from None
            finally:
                os.chdir("/")
                if spare is not None:
                    os.close(spare)
        self.release_reaper()
        return pid

    @staticmethod
    def posix_spawn_retrying(path, argv, env, file_actions):
        """Retry while the process limit is full (EAGAIN), as shells do: after a fork bomb is
        killed, its processes take a moment to be reaped."""
        delay = 0.01
        while True:
            try:
                return os.posix_spawn(path, argv, env, file_actions=file_actions, setsid=True,
                                      setsigdef=(_signal.SIGPIPE, _signal.SIGXFSZ))
            except BlockingIOError:
                if delay > SPAWN_RETRY_SECONDS:
                    raise
                time.sleep(delay)
                delay *= 2

    def release_reaper(self):
        try:
            self.child_started.release()
        except RuntimeError:
            pass  # already released: the reaper is running

    # --- connections ---

    def serve_forever(self):
        _thread.start_new_thread(self.reap_forever, ())
        while True:
            ready, _, _ = select.select([self.door], [], [], 1.0)
            if ready:
                for fd in self.receive_connections():
                    _thread.start_new_thread(self.serve_connection, (_socket.socket(fileno=fd),))
            if self.idle_timeout and self.is_idle():
                os._exit(0)  # as PID 1, this ends every process in the sandbox; files stay

    def receive_connections(self):
        """The door is a datagram socket; each datagram carries one end of a new host connection.

        (gVisor cannot accept() on a host socket, but it can receive descriptors, so both
        backends use this one channel.)
        """
        try:
            _, ancillary, _, _ = self.door.recvmsg(1, _socket.CMSG_SPACE(4 * FDS_PER_KNOCK), MSG_FLAGS)
        except OSError:
            return []
        fds = []
        for level, kind, data in ancillary:
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
                fds.extend(int.from_bytes(data[i:i + 4], sys.byteorder) for i in range(0, len(data) - 3, 4))
        return fds

    def is_idle(self):
        """No call under way, none for `idle_timeout`, and no background process running."""
        with self.lock:
            quiet = self.active == 0 and time.monotonic() - self.last_activity > self.idle_timeout
        return quiet and not self.processes.running()

    def serve_connection(self, conn):
        try:
            while True:
                try:
                    request, payload = decode_frame(conn.recv, MAX_REQUEST_PAYLOAD)
                except (EOFError, ProtocolError, OSError):
                    return
                with self.lock:
                    self.active += 1
                try:
                    self.dispatch(conn, request, payload)
                except OSError:
                    return  # the host went away mid-answer
                finally:
                    with self.lock:
                        self.active -= 1
                        self.last_activity = time.monotonic()
        finally:
            conn.close()

    def dispatch(self, conn, request, payload):
        op = self.ops.get(request.get("op"))
        try:
            if op is None:
                raise AgentError("VALIDATION_FAILED", "unknown operation %r" % (request.get("op"),))
            op(conn, request, payload)
        except AgentError as exc:
            conn.sendall(encode_frame({"ok": False, "code": exc.code, "message": exc.message}))
        except (KeyError, TypeError, ValueError) as exc:
            conn.sendall(encode_frame({"ok": False, "code": "VALIDATION_FAILED", "message": "bad request: %r" % (exc,)}))

    # --- operations ---

    def op_ping(self, conn, request, payload):
        conn.sendall(encode_frame({"ok": True, "pid": os.getpid()}))

    def op_exec(self, conn, request, payload):
        argv = [str(a) for a in request["argv"]]
        if not argv:
            raise AgentError("VALIDATION_FAILED", "empty command")
        env = dict((str(k), str(v)) for k, v in request["env"].items())
        timeout = float(request.get("timeout") or 0)
        limit = int(request["output_limit"])
        Exec(self, conn, argv, env, request.get("cwd") or "/", timeout, limit, payload if request.get("stdin") else None).run()

    def op_read(self, conn, request, payload):
        path = request["path"]
        limit = int(request["max_bytes"])
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
        except OSError as exc:
            raise os_error(exc, path) from None
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise AgentError("IS_DIRECTORY", "Is a directory: %s" % path)
            if not stat.S_ISREG(info.st_mode):
                raise AgentError("FILESYSTEM_ERROR", "Not a regular file: %s" % path)
            if request.get("offset") is not None:  # one piece of a streamed read: no size cap
                data = os.pread(fd, limit, int(request["offset"]))
                conn.sendall(encode_frame({"ok": True, "size": info.st_size, "mode": info.st_mode & 0o7777}, data))
                return
            if info.st_size > limit:
                raise AgentError("FILE_TOO_LARGE", "File too large: %s (%d bytes, limit %d)" % (path, info.st_size, limit))
            chunks, total = [], 0
            while True:  # a file growing while we read is cut at the limit, never held unbounded
                try:
                    chunk = os.read(fd, min(CHUNK * 16, limit + 1 - total))
                except OSError as exc:  # e.g. EIO from /proc/self/mem
                    raise os_error(exc, path) from None
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > limit:
                    raise AgentError("FILE_TOO_LARGE", "File too large: %s (over %d bytes)" % (path, limit))
        finally:
            os.close(fd)
        data = b"".join(chunks)
        conn.sendall(encode_frame({"ok": True, "size": len(data), "mode": info.st_mode & 0o7777}, data))

    def op_write(self, conn, request, payload):
        path = request["path"]
        parent, name = os.path.split(path)
        try:
            existing = os.stat(path)
        except FileNotFoundError:
            existing = None
        except OSError as exc:
            raise os_error(exc, path) from None
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            raise AgentError("IS_DIRECTORY", "Is a directory: %s" % path)
        if existing is not None and not stat.S_ISREG(existing.st_mode):
            raise AgentError("FILESYSTEM_ERROR", "Not a regular file: %s" % path)
        mode = existing.st_mode & 0o7777 if existing is not None else int(request.get("mode", 0o644))
        temp = os.path.join(parent, ".%s.isolate-%d-%d" % (name[:200], os.getpid(), _thread.get_ident()))
        try:
            os.makedirs(parent, exist_ok=True)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode & 0o777)
            try:
                view = memoryview(payload)
                while view:
                    view = view[os.write(fd, view[: 1 << 20]) :]
                if mode & 0o7000:
                    os.fchmod(fd, mode & 0o1777)  # never recreate setuid/setgid bits
            finally:
                os.close(fd)
            os.rename(temp, path)  # atomic: a failed write leaves the old content
        except OSError as exc:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise os_error(exc, path) from None
        conn.sendall(encode_frame({"ok": True, "size": len(payload)}))

    def op_mkdir(self, conn, request, payload):
        path = request["path"]
        try:
            if request.get("recursive"):
                os.makedirs(path, exist_ok=True)
            else:
                os.mkdir(path)
        except OSError as exc:
            raise os_error(exc, path) from None
        conn.sendall(encode_frame({"ok": True}))

    def op_delete(self, conn, request, payload):
        path = request["path"]
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                raise AgentError("IS_DIRECTORY", "Is a directory: %s" % path)
            os.unlink(path)  # a symlink is removed itself, never its target
        except OSError as exc:
            raise os_error(exc, path) from None
        conn.sendall(encode_frame({"ok": True}))

    def op_rename(self, conn, request, payload):
        old, new = request["old"], request["new"]
        must_exist(old)
        try:
            os.rename(old, new)
        except OSError as exc:
            raise os_error(exc, new) from None
        conn.sendall(encode_frame({"ok": True, "path": new}))

    def op_move(self, conn, request, payload):
        source, destination = request["source"], request["destination"]
        must_exist(source)
        try:
            if os.path.isdir(destination) and not os.path.islink(destination):
                destination = os.path.join(destination, os.path.basename(source))
            os.makedirs(os.path.dirname(destination), exist_ok=True)
            os.rename(source, destination)
        except OSError as exc:
            raise os_error(exc, destination) from None
        conn.sendall(encode_frame({"ok": True, "path": destination}))

    def op_exists(self, conn, request, payload):
        conn.sendall(encode_frame({"ok": True, "exists": os.path.lexists(request["path"])}))

    def private_folder(self):
        """Where the agent makes its FIFOs: in the jail's own /dev tmpfs, which ends with the jail."""
        folder = "/dev/.isolate-agent"
        try:
            os.mkdir(folder, 0o700)
        except FileExistsError:
            pass
        except OSError:
            folder = "/tmp/.isolate-agent"
            try:
                os.mkdir(folder, 0o700)
            except FileExistsError:
                pass
        return folder

    def op_session_create(self, conn, request, payload):
        sid = str(request["id"])
        session = Session(self, sid, dict((str(k), str(v)) for k, v in request["env"].items()), str(request["cwd"]))
        with self.lock:
            if sid in self.sessions:
                raise AgentError("SESSION_ALREADY_EXISTS", "Session already exists: %s" % sid)
            self.sessions[sid] = session
        try:
            with session.lock:
                session.start()
        except AgentError:
            with self.lock:
                self.sessions.pop(sid, None)
            raise
        conn.sendall(encode_frame({"ok": True, "id": sid, "cwd": session.cwd}))

    def op_session_exec(self, conn, request, payload):
        """Run a command in a session (made on first use from `defaults`), after the session's earlier commands."""
        sid = str(request["id"])
        text = str(request["command"])
        env = dict((str(k), str(v)) for k, v in (request.get("env") or {}).items())
        for key in env:
            if not is_identifier(key):
                raise AgentError("VALIDATION_FAILED", "not a shell variable name: %r" % key)
        if env or request.get("cwd"):  # per-command settings apply to this command only: a subshell
            prefix = "".join("export %s=%s\n" % (k, sh_quote(v)) for k, v in env.items())
            if request.get("cwd"):
                prefix = "cd -- %s || exit 1\n" % sh_quote(str(request["cwd"])) + prefix
            text = "(\n%seval %s\n)" % (prefix, sh_quote(text))
        with self.lock:
            session = self.sessions.get(sid)
            if session is None:
                defaults = request["defaults"]
                session = Session(self, sid, dict((str(k), str(v)) for k, v in defaults["env"].items()), str(defaults["cwd"]))
                self.sessions[sid] = session
        with session.lock:
            if not session.alive():
                session.close()
                session.start()
            SessionCommand(self, conn, session, text, float(request.get("timeout") or 0), int(request["output_limit"])).run()

    def op_session_delete(self, conn, request, payload):
        sid = str(request["id"])
        with self.lock:
            session = self.sessions.pop(sid, None)
        if session is None:
            raise AgentError("SESSION_NOT_FOUND", "Session not found: %s" % sid)
        session.close()
        conn.sendall(encode_frame({"ok": True}))

    def op_session_list(self, conn, request, payload):
        with self.lock:
            ids = sorted(self.sessions)
        conn.sendall(encode_frame({"ok": True, "sessions": ids}))

    def op_session_cwd(self, conn, request, payload):
        with self.lock:
            session = self.sessions.get(str(request["id"]))
        conn.sendall(encode_frame({"ok": True, "cwd": session.current_cwd() if session is not None else None}))

    def op_list(self, conn, request, payload):
        root = request["path"]
        recursive = bool(request.get("recursive"))
        hidden = bool(request.get("include_hidden"))
        try:
            if not stat.S_ISDIR(os.stat(root).st_mode):
                raise AgentError("NOT_DIRECTORY", "Not a directory: %s" % root)
        except OSError as exc:
            raise os_error(exc, root) from None
        entries, pending, truncated, size = [], [root], False, 0
        while pending and not truncated:
            folder = pending.pop()
            try:
                scan = list(os.scandir(folder))
            except OSError:
                continue  # unreadable subfolder: list what can be listed
            for entry in scan:
                if not hidden and entry.name.startswith("."):
                    continue
                size += len(_quote(entry.path)) + 96  # the entry's JSON, at most
                if len(entries) >= MAX_LIST_ENTRIES or size > MAX_LIST_BYTES:
                    truncated = True
                    break
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                mode = info.st_mode
                kind = "directory" if stat.S_ISDIR(mode) else "file" if stat.S_ISREG(mode) else "symlink" if stat.S_ISLNK(mode) else "other"
                entries.append(
                    [entry.path, kind, info.st_size, info.st_mtime, mode,
                     os.access(entry.path, os.R_OK, follow_symlinks=False),
                     os.access(entry.path, os.W_OK, follow_symlinks=False),
                     os.access(entry.path, os.X_OK, follow_symlinks=False)]
                )
                if recursive and kind == "directory":
                    pending.append(entry.path)
        conn.sendall(encode_frame({"ok": True, "entries": entries, "truncated": truncated}))


class Relay:
    """Relays one command's output to the host as it comes, bounded in time and size.

    Subclasses say when the command has ended (`ended`) and how to stop it (`stop`);
    output still arriving after the end is drained for LINGER_AFTER_EXIT seconds, so
    daemons that keep a pipe open never hold the answer.
    """

    def __init__(self, agent, conn, timeout, limit):
        self.agent, self.conn = agent, conn
        self.timeout, self.limit = timeout, limit
        self.reason = None
        self.sent = {1: 0, 2: 0}
        self.stdin_w = None

    def ended(self):
        raise NotImplementedError

    def stop(self, hard):
        raise NotImplementedError

    def pump(self, outputs, started, watched, stdin_data=None):
        """Relay `outputs` ({fd: 1 or 2}) and feed `stdin_data` to `self.stdin_w`, closing it when all is written;
        `watched` maps other fds to handlers that return False to stop watching."""
        in_w = self.stdin_w
        poller = select.poll()
        for fd in list(outputs) + list(watched):
            poller.register(fd, select.POLLIN)
        host = self.conn.fileno()
        poller.register(host, select.POLLIN)  # the host sends nothing during a command: readable means gone
        pending_in = memoryview(stdin_data) if in_w is not None else None
        if in_w is not None:
            os.set_blocking(in_w, False)
            poller.register(in_w, select.POLLOUT)
        deadline = started + self.timeout if self.timeout > 0 else None
        ended_at = None
        hard_stopped = False
        while True:
            now = time.monotonic()
            if ended_at is None and self.ended():
                ended_at = now
            if ended_at is not None and (not outputs or now - ended_at > LINGER_AFTER_EXIT):
                return
            waits = [LINGER_AFTER_EXIT if ended_at is not None else HOST_CHECK_SECONDS]
            if deadline is not None and ended_at is None:
                if now >= deadline and self.reason is None:
                    self.reason = "timeout"
                    self.stop(False)
                elif now >= deadline + STOP_GRACE and self.reason == "timeout" and not hard_stopped:
                    hard_stopped = True
                    self.stop(True)
                if self.reason is None:
                    waits.append(max(deadline - now, 0.0))
                elif self.reason == "timeout" and not hard_stopped:
                    waits.append(max(deadline + STOP_GRACE - now, 0.0))
            events = poller.poll(min(waits) * 1000 + 1)
            if not events:
                check_host(self.conn)
            for fd, _ in events:
                if fd in watched:
                    if not watched[fd](fd):
                        poller.unregister(fd)
                elif fd == host:
                    raise ConnectionResetError("the host closed the connection")
                elif fd == in_w:
                    try:
                        pending_in = pending_in[os.write(in_w, pending_in[:CHUNK]):]
                    except OSError:
                        pending_in = pending_in[:0]  # the command closed its stdin
                    if not pending_in:
                        poller.unregister(in_w)
                        os.close(in_w)
                        in_w = self.stdin_w = None
                elif fd in outputs:
                    chunk = os.read(fd, CHUNK)
                    if not chunk:
                        poller.unregister(fd)
                        del outputs[fd]
                        continue
                    self.relay(outputs[fd], chunk)

    def relay(self, stream, chunk):
        room = self.limit - self.sent[stream]
        if room <= 0:
            return
        if len(chunk) > room:
            chunk = chunk[:room]
            if self.reason is None:
                self.reason = "output_limit"
                self.stop(False)
        self.sent[stream] += len(chunk)
        self.conn.sendall(encode_frame({"ev": "out", "fd": stream}, chunk))

    def exit_frame(self, started, exit_code, signal, cpu, maxrss):
        result = {"ev": "exit", "wall": time.monotonic() - started, "reason": self.reason or ("signaled" if signal else "exited"),
                  "cpu": cpu, "maxrss": maxrss, "truncated": self.reason == "output_limit", "exit_code": exit_code}
        if signal:
            result["signal"] = signal
        return result


class Exec(Relay):
    """One command: started in its own session, reported when its process ends."""

    def __init__(self, agent, conn, argv, env, cwd, timeout, limit, stdin_data):
        Relay.__init__(self, agent, conn, timeout, limit)
        self.argv, self.env, self.cwd = argv, env, cwd
        self.stdin_data = stdin_data
        self.pid = 0

    def ended(self):
        return self.pid in self.agent.exits

    def stop(self, hard):
        kill_group(self.pid)

    def run(self):
        agent = self.agent
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r, self.stdin_w = os.pipe() if self.stdin_data is not None else (os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC), None)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        with agent.lock:
            agent.wakers.add(wake_w)
        started = time.monotonic()
        try:
            try:
                self.pid = agent.spawn(self.argv, self.env, self.cwd, in_r, out_w, err_w)
            except SpawnError as exc:
                self.report_spawn_failure(exc)
                return
            finally:
                for fd in (in_r, out_w, err_w):
                    os.close(fd)
            try:
                self.conn.sendall(encode_frame({"ev": "start", "pid": self.pid}))
                self.pump({out_r: 1, err_r: 2}, started, {wake_r: drain}, self.stdin_data)
            except OSError:
                kill_group(self.pid, linger=KILL_GRACE)  # the host is gone: the command goes with it
                raise
        finally:
            with agent.lock:
                agent.wakers.discard(wake_w)
            for fd in (out_r, err_r, wake_r, wake_w, self.stdin_w):
                if fd is not None:
                    os.close(fd)
        status, usage, _ = agent.exits.pop(self.pid)
        signal = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
        code = 128 + signal if signal else os.WEXITSTATUS(status)
        self.conn.sendall(encode_frame(self.exit_frame(started, code, signal, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024)))

    def report_spawn_failure(self, exc):
        if exc.stage == "cwd":
            raise os_error(OSError(exc.errno, ""), self.cwd)
        code = 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
        text = "command not found" if code == 127 else os.strerror(exc.errno)
        self.conn.sendall(encode_frame({"ev": "start", "pid": 0}))
        self.conn.sendall(encode_frame({"ev": "out", "fd": 2}, ("%s: %s\n" % (self.argv[0], text)).encode()))
        self.conn.sendall(encode_frame({"ev": "exit", "exit_code": code, "reason": "exited", "wall": 0.0, "cpu": 0.0, "maxrss": 0, "truncated": False}))


def drain(fd):
    os.read(fd, 4096)
    return True


# --- sessions: persistent shells ---

def shell_argv():
    if os.path.exists("/bin/bash"):
        return ["/bin/bash", "--noprofile", "--norc"]
    return ["/bin/sh"]


def sh_quote(text):
    return "'" + text.replace("'", "'\\''") + "'"


def is_identifier(name):
    return bool(name) and not name[0].isdigit() and all(c == "_" or (c.isascii() and c.isalnum()) for c in name)


class Session:
    """A persistent shell: `cd`, `export` and shell variables persist between its commands.

    The shell reads command lines on its stdin. Each command runs as `eval` of a quoted
    literal (so no input can break the framing), with stdin from /dev/null and stdout and
    stderr sent to two fresh FIFOs; then the shell writes `<nonce> <status>` on fd 3, a
    pipe only the agent reads. A command that ends the shell (`exit 3`) is reported as
    SESSION_TERMINATED, and the next command gets a fresh shell. `lock` serializes commands.
    """

    def __init__(self, agent, sid, env, cwd):
        self.agent, self.id, self.env, self.cwd = agent, sid, env, cwd
        self.lock = _thread.allocate_lock()
        self.pid = 0
        self.control = self.status_r = None
        self.exit_status = None
        self.serial = 0

    def alive(self):
        return self.pid != 0 and self.exit_status is None

    def start(self):
        ctl_r, ctl_w = os.pipe()
        st_r, st_w = os.pipe()
        null = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        try:
            pid = self.agent.spawn(shell_argv(), self.env, self.cwd, ctl_r, null, null, st_w)
        except SpawnError as exc:
            os.close(ctl_w)
            os.close(st_r)
            if exc.stage == "cwd":
                raise os_error(OSError(exc.errno, ""), self.cwd) from None
            raise AgentError("COMMAND_EXECUTION_ERROR", "cannot start a shell: %s" % os.strerror(exc.errno)) from None
        finally:
            for fd in (ctl_r, st_w, null):
                os.close(fd)
        self.pid, self.control, self.status_r, self.exit_status = pid, ctl_w, st_r, None
        self.agent.watch(pid, self.on_exit)

    def on_exit(self, status, usage):
        self.exit_status = status

    def current_cwd(self):
        if self.alive():
            try:
                return os.readlink("/proc/%d/cwd" % self.pid)
            except OSError:
                pass
        return self.cwd

    def close(self):
        """End the shell and everything it started."""
        if self.pid:
            kill_tree(self.pid, 9)
        for fd in (self.control, self.status_r):
            if fd is not None:
                os.close(fd)
        self.pid, self.control, self.status_r = 0, None, None

    def cpu_seconds(self):
        """CPU time of the shell and its reaped children, from /proc (clock ticks)."""
        try:
            with open("/proc/%d/stat" % self.pid, "rb") as handle:
                fields = handle.read().rpartition(b")")[2].split()
            return sum(int(f) for f in fields[11:15]) / float(os.sysconf("SC_CLK_TCK"))
        except (OSError, ValueError, IndexError):
            return 0.0


class SessionCommand(Relay):
    def __init__(self, agent, conn, session, text, timeout, limit):
        Relay.__init__(self, agent, conn, timeout, limit)
        self.session, self.text = session, text
        self.status = None
        self.shell_gone = False
        self.pending = b""
        self.holders = []
        self.nonce = ("%x%x" % (id(self), int(time.monotonic() * 1e9)))[-16:]

    def ended(self):
        return self.status is not None or self.shell_gone

    def stop(self, hard):
        if hard:
            kill_tree(self.session.pid, 9)  # a builtin loop ignores its children's death: end the shell
        else:
            kill_tree(self.session.pid, 9, include_root=False)

    def read_status(self, fd):
        data = os.read(fd, 4096)
        if not data:
            self.shell_gone = True
            self.release_holders()
            return False
        self.pending += data
        while b"\n" in self.pending:
            line, _, self.pending = self.pending.partition(b"\n")
            nonce, _, code = line.decode("ascii", "replace").partition(" ")
            if nonce == self.nonce and code.strip().isdigit():
                self.status = int(code)
                self.release_holders()
        return True

    def release_holders(self):
        for fd in self.holders:
            os.close(fd)
        self.holders = []

    def run(self):
        session = self.session
        folder = self.agent.private_folder()
        session.serial += 1
        paths = ["%s/%s-%d-%d" % (folder, session.id.encode().hex()[:32], session.serial, fd) for fd in (1, 2)]
        readers = {}
        started = time.monotonic()
        cpu_before = session.cpu_seconds()
        try:
            for index, path in enumerate(paths):
                os.mkfifo(path, 0o600)
                readers[os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)] = index + 1
                # our own writer keeps the FIFO from reading as ended before the shell opens it
                self.holders.append(os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC))
            # eval with its own redirections (a brace group confuses bash's parser after a syntax error in eval)
            line = "eval %s </dev/null >%s 2>%s 3>&-; printf '%s %%d\\n' \"$?\" >&3\n" % (
                sh_quote(self.text), sh_quote(paths[0]), sh_quote(paths[1]), self.nonce)
            self.conn.sendall(encode_frame({"ev": "start", "pid": session.pid}))
            try:
                write_all(session.control, line.encode("utf-8", "surrogateescape"))
            except OSError:
                self.shell_gone = True
            outputs = dict(readers)
            try:
                self.pump(outputs, started, {} if self.shell_gone else {session.status_r: self.read_status})
            except OSError:
                kill_tree(session.pid, 9, include_root=False)  # the host is gone: the command goes with it
                raise
        finally:
            self.release_holders()
            for fd in readers:
                os.close(fd)
            for path in paths:
                try:
                    os.unlink(path)
                except OSError:
                    pass
        if self.status is None:
            deadline = time.monotonic() + 1.0
            while session.exit_status is None and time.monotonic() < deadline:
                time.sleep(0.005)  # the reaper reports the shell's exit a moment after its pipe closed
            code = session.exit_status
            session.close()
            if self.reason == "timeout":
                self.conn.sendall(encode_frame(self.exit_frame(started, 137, 9, 0.0, 0)))
                return
            detail = " (exit %d)" % os.WEXITSTATUS(code) if code is not None and os.WIFEXITED(code) else ""
            raise AgentError("SESSION_TERMINATED", "session %s terminated%s; the next command starts a fresh shell" % (session.id, detail))
        signal = self.status - 128 if 128 < self.status <= 128 + 64 else None
        self.conn.sendall(encode_frame(self.exit_frame(started, self.status, signal, max(session.cpu_seconds() - cpu_before, 0.0), 0)))


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


# --- background processes ---

class Process:
    """A background process: its status, and the last `log_limit` bytes of its output in order."""

    def __init__(self, pid_id, command, log_limit):
        self.id, self.command, self.log_limit = pid_id, command, log_limit
        self.pid = 0
        self.status = "starting"
        self.start_time = time.time()
        self.end_time = None
        self.exit_code = None
        self.killed = False
        self.deadline = None
        self.exited_at = None
        self.wait_status = None
        self.outputs = {}  # fd -> 1 or 2
        self.chunks = []  # [seq, stream, bytes], oldest first
        self.seq = 0
        self.log_bytes = 0
        self.subscribers = set()

    def finished(self):
        return self.status not in ("starting", "running")

    def describe(self):
        info = {"id": self.id, "pid": self.pid, "command": self.command, "status": self.status, "startTime": self.start_time}
        if self.end_time is not None:
            info["endTime"] = self.end_time
        if self.exit_code is not None:
            info["exitCode"] = self.exit_code
        return info

    def append(self, stream, data):
        self.seq += 1
        self.chunks.append([self.seq, stream, data])
        self.log_bytes += len(data)
        drop = 0
        while self.log_bytes > self.log_limit and drop < len(self.chunks) - 1:
            self.log_bytes -= len(self.chunks[drop][2])
            drop += 1
        if drop:
            del self.chunks[:drop]


class ProcessTable:
    """Background processes of a sandbox: one thread relays the output of all of them into bounded logs."""

    def __init__(self, agent):
        self.agent = agent
        self.table = {}
        self.fds = {}  # output fd -> Process
        self.poller = select.poll()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_w, False)
        self.poller.register(self.wake_r, select.POLLIN)
        self.thread_started = False

    def running(self):
        with self.agent.lock:
            return any(not p.finished() for p in self.table.values())

    def find(self, request):
        with self.agent.lock:
            process = self.table.get(str(request["id"]))
        if process is None:
            raise AgentError("PROCESS_NOT_FOUND", "Process not found: %s" % request["id"])
        return process

    def op_start(self, conn, request, payload):
        pid_id = str(request["id"])
        command = str(request["command"])
        env = dict((str(k), str(v)) for k, v in request["env"].items())
        cwd = str(request.get("cwd") or "/")
        session = self.agent.sessions.get(request.get("session") or "")
        if session is not None and not request.get("cwd_given"):
            cwd = session.current_cwd()
        process = Process(pid_id, command, int(request.get("log_limit") or 1 << 20))
        with self.agent.lock:
            old = self.table.get(pid_id)
            if old is not None and not old.finished():
                raise AgentError("RESOURCE_BUSY", "a process with id %s is already running" % pid_id)
            self.table[pid_id] = process
            self.forget_finished()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        try:
            process.pid = self.agent.spawn([shell_argv()[0], "-c", command], env, cwd, null, out_w, err_w)
        except SpawnError as exc:
            os.close(out_r)
            os.close(err_r)
            with self.agent.lock:
                process.status, process.end_time = "error", time.time()
            if exc.stage == "cwd":
                raise os_error(OSError(exc.errno, ""), cwd) from None
            raise AgentError("COMMAND_EXECUTION_ERROR", "cannot start: %s" % os.strerror(exc.errno)) from None
        finally:
            for fd in (null, out_w, err_w):
                os.close(fd)
        timeout = float(request.get("timeout") or 0)
        with self.agent.lock:
            process.status = "running"
            process.deadline = time.monotonic() + timeout if timeout > 0 else None
            process.outputs = {out_r: 1, err_r: 2}
            self.fds[out_r] = self.fds[err_r] = process
            self.poller.register(out_r, select.POLLIN)
            self.poller.register(err_r, select.POLLIN)
            if not self.thread_started:
                self.thread_started = True
                _thread.start_new_thread(self.pump_forever, ())
        wake_all([self.wake_w])  # the pump polls the new pipes from its next round
        self.agent.watch(process.pid, lambda status, usage: self.on_exit(process, status))
        conn.sendall(encode_frame({"ok": True, "process": process.describe()}))

    def forget_finished(self, keep=MAX_FINISHED_PROCESSES):
        finished = [p for p in self.table.values() if p.finished()]
        for process in finished[: max(len(finished) - keep, 0)]:
            del self.table[process.id]

    def on_exit(self, process, status):
        with self.agent.lock:
            process.wait_status = status
            process.exited_at = time.monotonic()
        wake_all([self.wake_w])

    def pump_forever(self):
        while True:
            now = time.monotonic()
            waits = [3600.0]
            with self.agent.lock:
                processes = [p for p in self.table.values() if not p.finished()]
            for process in processes:
                if process.exited_at is not None:
                    if not process.outputs or now - process.exited_at > LINGER_AFTER_EXIT:
                        self.finish(process)
                    else:
                        waits.append(process.exited_at + LINGER_AFTER_EXIT - now)
                elif process.deadline is not None:
                    if now >= process.deadline:
                        process.deadline = None
                        process.killed = True
                        kill_tree(process.pid, 9)
                    else:
                        waits.append(process.deadline - now)
            for fd, _ in self.poller.poll(min(waits) * 1000 + 1):
                if fd == self.wake_r:
                    os.read(fd, 4096)
                    continue
                process = self.fds.get(fd)
                if process is None:
                    continue
                chunk = os.read(fd, CHUNK)
                with self.agent.lock:
                    if chunk:
                        process.append(process.outputs[fd], chunk)
                    else:
                        self.close_output(process, fd)
                    wake_all(process.subscribers)  # under the lock: a subscriber closes its pipe only after leaving

    def close_output(self, process, fd):
        self.poller.unregister(fd)
        del process.outputs[fd]
        del self.fds[fd]
        os.close(fd)

    def finish(self, process):
        status = process.wait_status
        with self.agent.lock:
            for fd in list(process.outputs):
                self.close_output(process, fd)
            signal = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
            process.exit_code = 128 + signal if signal else os.WEXITSTATUS(status)
            if process.killed or signal in (2, 9, 15):
                process.status = "killed"
            else:
                process.status = "completed" if process.exit_code == 0 else "failed"
            process.end_time = time.time()
            wake_all(process.subscribers)

    def op_list(self, conn, request, payload):
        with self.agent.lock:
            items = [p.describe() for p in self.table.values()]
        conn.sendall(encode_frame({"ok": True, "processes": items}))

    def op_get(self, conn, request, payload):
        process = self.find(request)
        with self.agent.lock:
            info = process.describe()
        conn.sendall(encode_frame({"ok": True, "process": info}))

    def terminate(self, processes):
        """SIGTERM each process tree, SIGKILL what is left after KILL_GRACE seconds; wait until each is
        reported and every member of its tree is gone (reaped, not a zombie still listed in /proc).
        The trees are looked at again each round: a child forked while the signals went out, or an
        orphan that kept the session, is found and signalled too."""
        for process in processes:
            process.killed = True
        members, signalled = set(), set()
        deadline = time.monotonic() + KILL_GRACE
        sig = 15
        while True:
            for process in processes:
                members.update(tree_of(process.pid, include_root=not process.finished()))
            for pid in members - signalled:
                try:
                    os.kill(pid, sig)
                except OSError:
                    pass
                signalled.add(pid)
            with self.agent.lock:
                left = [p for p in processes if not p.finished()]
            alive = [pid for pid in members if os.path.exists("/proc/%d" % pid)]
            if not left and not alive:
                return
            now = time.monotonic()
            if now >= deadline and sig == 15:
                sig = 9
                signalled.clear()  # everything still there gets SIGKILL next round
            elif now >= deadline + KILL_GRACE:
                return
            time.sleep(0.01)

    def op_kill(self, conn, request, payload):
        process = self.find(request)
        if not process.finished():
            self.terminate([process])
        conn.sendall(encode_frame({"ok": True, "process": process.describe()}))

    def op_kill_all(self, conn, request, payload):
        with self.agent.lock:
            running = [p for p in self.table.values() if not p.finished()]
        self.terminate(running)
        conn.sendall(encode_frame({"ok": True, "count": len(running)}))

    def op_logs(self, conn, request, payload):
        process = self.find(request)
        with self.agent.lock:
            out = b"".join(c[2] for c in process.chunks if c[1] == 1)
            err = b"".join(c[2] for c in process.chunks if c[1] == 2)
            info = process.describe()
        conn.sendall(encode_frame({"ok": True, "process": info, "stdout_bytes": len(out)}, out + err))

    def op_stream(self, conn, request, payload):
        """The output so far, then output as it comes, then the exit; ends early if the host hangs up."""
        process = self.find(request)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        poller = select.poll()
        poller.register(wake_r, select.POLLIN)
        poller.register(conn.fileno(), select.POLLIN)
        with self.agent.lock:
            process.subscribers.add(wake_w)
            info = process.describe()
        seen = 0
        try:
            conn.sendall(encode_frame({"ev": "info", "process": info}))
            while True:
                with self.agent.lock:
                    fresh = [c for c in process.chunks if c[0] > seen]
                    done = process.finished()
                    info = process.describe()
                for seq, stream, data in fresh:
                    conn.sendall(encode_frame({"ev": "out", "fd": stream}, data))
                    seen = seq
                if done and not fresh:
                    conn.sendall(encode_frame({"ev": "exit", "process": info, "exit_code": info.get("exitCode")}))
                    return
                if fresh:
                    continue
                events = poller.poll(HOST_CHECK_SECONDS * 1000)
                if not events:
                    check_host(conn)
                for fd, _ in events:
                    if fd == wake_r:
                        os.read(wake_r, 4096)
                    else:
                        raise ConnectionResetError("the host closed the connection")
        finally:
            with self.agent.lock:
                process.subscribers.discard(wake_w)
            os.close(wake_r)
            os.close(wake_w)


def process_table():
    """pid -> (ppid, session id) of every process in this pid namespace."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % entry, "rb") as handle:
                fields = handle.read().rpartition(b")")[2].split()
            table[int(entry)] = (int(fields[1]), int(fields[3]))
        except (OSError, ValueError, IndexError):
            continue
    return table


def tree_of(root, include_root=True):
    """`root` and every process in its session or below it (orphans keep the session)."""
    table = process_table()
    found = set(p for p, (ppid, sid) in table.items() if sid == root)
    found.add(root)
    grew = True
    while grew:
        grew = False
        for pid, parent in table.items():
            if parent[0] in found and pid not in found:
                found.add(pid)
                grew = True
    if not include_root:
        found.discard(root)
    found.discard(os.getpid())
    return found


def kill_tree(root, sig, include_root=True):
    if root <= 1:
        return
    for pid in tree_of(root, include_root):
        try:
            os.kill(pid, sig)
        except OSError:
            pass


def check_host(conn):
    """A missed hang-up must not keep a command alive: look at the host's end now and then
    (gVisor has been seen not to report one on a descriptor passed in from the host)."""
    try:
        if not conn.recv(1, _socket.MSG_PEEK | _socket.MSG_DONTWAIT):
            raise ConnectionResetError("the host closed the connection")
    except BlockingIOError:
        return
    raise ConnectionResetError("the host sent data while it should only listen")


def wake_all(fds):
    """One byte down each waker pipe (non-blocking: a full pipe already wakes its reader).

    A waker that its owner may close is written under the agent's lock, and closed only after
    it left its set under that lock: a closed waker's number, reused by a new pipe (a
    command's stdout, say), must never get the byte."""
    for fd in fds:
        try:
            os.write(fd, b"x")
        except OSError:
            pass


def find_program(name, search_path):
    """What execvp would run for `name`, searching the command's own PATH."""
    if "/" in name:
        return name
    for folder in search_path.split(os.pathsep):
        candidate = os.path.join(folder or ".", name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise SpawnError(errno.ENOENT, "exec")


def kill_group(pid, linger=0.0):
    """SIGKILL the process group `pid` leads; with `linger`, again until none of it is left (or
    that many seconds passed): gVisor can let a child forked while the signal went out escape it."""
    deadline = time.monotonic() + linger
    while True:
        try:
            os.killpg(pid, 9)
        except OSError:
            return  # nobody left in the group
        if time.monotonic() >= deadline:
            return
        time.sleep(0.005)


def forget_stdio():
    """The agent's own stdin, stdout and stderr become /dev/null: they are the jail's (under gVisor,
    host files such as the jail's log, which /proc/self/fd would let a request reopen)."""
    null = os.open("/dev/null", os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    if null > 2:
        os.close(null)


def close_on_exec_all():
    """Whatever the jail handed over (the door, a slot lock) must not reach the commands."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the listing's own descriptor, already closed


def protect_from_commands():
    """Commands run as the agent's uid, so guard the two things they could still do to it.

    - Interrupt it: as PID 1 only signals it handles reach it, and Python handles SIGINT by
      raising KeyboardInterrupt. A handler that does nothing keeps it alive (and, unlike
      SIG_IGN, is not inherited across exec by the commands).
    - Read or write its memory and descriptors through /proc/1: a non-dumpable process
      needs CAP_SYS_PTRACE for that, which nothing in the sandbox has.
    """
    _signal.signal(_signal.SIGINT, lambda signum, frame: None)
    try:
        import _ctypes

        class Int(_ctypes._SimpleCData):
            _type_ = "i"

        class Function(_ctypes.CFuncPtr):
            _flags_ = _ctypes.FUNCFLAG_CDECL
            _restype_ = Int

        class Process:
            _handle = _ctypes.dlopen(None)

        Function(("prctl", Process))(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE, 0
    except (ImportError, AttributeError, OSError):
        pass  # a Python without ctypes: the agent still runs, readable by its commands


def main(argv):
    os.umask(0o022)
    os.chdir("/")
    close_on_exec_all()
    protect_from_commands()
    forget_stdio()
    Agent(int(argv[1]), float(argv[2])).serve_forever()


if __name__ == "__main__":
    main(sys.argv)
