"""The agent: the one long-lived process inside every sandbox (its PID 1 there).

The host never touches a sandbox's files itself; it asks the agent, which is confined
like any command (same namespaces, seccomp policy and cgroups), so a path or symlink
made inside resolves inside. The host treats every answer as untrusted input.

Start-up time is cold-start time, so only built-in modules are imported (`_thread`,
`_socket`, `select`, `os`), and commands are started with fork/exec rather than
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


class SpawnError(Exception):
    def __init__(self, err, stage):
        Exception.__init__(self, err, stage)
        self.errno = err
        self.stage = stage


class Agent:
    def __init__(self, listen_fd, idle_timeout):
        os.set_inheritable(listen_fd, False)
        self.listener = _socket.socket(fileno=listen_fd)
        self.idle_timeout = idle_timeout
        self.lock = _thread.allocate_lock()
        self.active = 0
        self.last_activity = time.monotonic()
        self.exits = {}  # pid -> (wait status, rusage, when reaped)
        self.wakers = set()
        self.child_started = _thread.allocate_lock()
        self.child_started.acquire()
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
            with self.lock:
                self.exits[pid] = (status, usage, now)
                for old in [p for p, rec in self.exits.items() if now - rec[2] > EXIT_RECORD_TTL]:
                    del self.exits[old]
                wakers = list(self.wakers)
            for fd in wakers:
                try:
                    os.write(fd, b"x")
                except OSError:
                    pass

    def spawn(self, argv, env, cwd, stdin_fd, stdout_fd, stderr_fd):
        err_r, err_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: only async-signal-safe-ish os calls until exec
            stage = b"cwd"
            try:
                os.setsid()
                os.dup2(stdin_fd, 0)
                os.dup2(stdout_fd, 1)
                os.dup2(stderr_fd, 2)
                _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
                _signal.signal(_signal.SIGXFSZ, _signal.SIG_DFL)
                os.chdir(cwd)
                stage = b"exec"
                os.execvpe(argv[0], argv, env)
            except OSError as exc:
                os.write(err_w, stage + b":" + str(exc.errno or 0).encode())
            finally:
                os._exit(127)
        os.close(err_w)
        try:
            self.release_reaper()
            report = b""
            while True:
                chunk = os.read(err_r, 64)
                if not chunk:
                    break
                report += chunk
        finally:
            os.close(err_r)
        if report:
            stage, _, err = report.partition(b":")
            raise SpawnError(int(err or 0), stage.decode())
        return pid

    def release_reaper(self):
        try:
            self.child_started.release()
        except RuntimeError:
            pass  # already released: the reaper is running

    # --- connections ---

    def serve_forever(self):
        _thread.start_new_thread(self.reap_forever, ())
        while True:
            ready, _, _ = select.select([self.listener], [], [], 1.0)
            if ready:
                fd, _ = self.listener._accept()
                _thread.start_new_thread(self.serve_connection, (_socket.socket(fileno=fd),))
            if self.idle_timeout and self.is_idle():
                os._exit(0)  # as PID 1, this ends every process in the sandbox; files stay

    def is_idle(self):
        with self.lock:
            return self.active == 0 and time.monotonic() - self.last_activity > self.idle_timeout

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
        try:
            os.lstat(old)
        except OSError as exc:
            raise os_error(exc, old) from None
        try:
            os.rename(old, new)
        except OSError as exc:
            raise os_error(exc, new) from None
        conn.sendall(encode_frame({"ok": True, "path": new}))

    def op_move(self, conn, request, payload):
        source, destination = request["source"], request["destination"]
        try:
            os.lstat(source)
        except OSError as exc:
            raise os_error(exc, source) from None
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


class Exec:
    """One command: started in its own session, its output relayed as it comes, bounded in time and size."""

    def __init__(self, agent, conn, argv, env, cwd, timeout, limit, stdin_data):
        self.agent, self.conn = agent, conn
        self.argv, self.env, self.cwd = argv, env, cwd
        self.timeout, self.limit, self.stdin_data = timeout, limit, stdin_data
        self.reason = None
        self.sent = {1: 0, 2: 0}

    def run(self):
        agent = self.agent
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_r, in_w = os.pipe() if self.stdin_data is not None else (os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC), None)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        with agent.lock:
            agent.wakers.add(wake_w)
        started = time.monotonic()
        try:
            try:
                pid = agent.spawn(self.argv, self.env, self.cwd, in_r, out_w, err_w)
            except SpawnError as exc:
                self.report_spawn_failure(exc)
                return
            finally:
                for fd in (in_r, out_w, err_w):
                    os.close(fd)
            try:
                self.conn.sendall(encode_frame({"ev": "start", "pid": pid}))
                status, usage = self.pump(pid, {out_r: 1, err_r: 2}, in_w, wake_r, started)
            except OSError:
                kill_group(pid)  # the host is gone: the command goes with it
                raise
        finally:
            with agent.lock:
                agent.wakers.discard(wake_w)
            for fd in (out_r, err_r, wake_r, wake_w, in_w):
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass
        result = {"ev": "exit", "wall": time.monotonic() - started, "reason": self.reason or "exited",
                  "cpu": usage.ru_utime + usage.ru_stime, "maxrss": usage.ru_maxrss * 1024,
                  "truncated": self.reason == "output_limit"}
        if os.WIFSIGNALED(status):
            result["signal"] = os.WTERMSIG(status)
            result["exit_code"] = 128 + os.WTERMSIG(status)
            result["reason"] = self.reason or "signaled"
        else:
            result["exit_code"] = os.WEXITSTATUS(status)
        self.conn.sendall(encode_frame(result))

    def report_spawn_failure(self, exc):
        if exc.stage == "cwd":
            raise os_error(OSError(exc.errno, ""), self.cwd)
        code = 127 if exc.errno in (errno.ENOENT, errno.ENOTDIR) else 126
        text = "command not found" if code == 127 else os.strerror(exc.errno)
        self.conn.sendall(encode_frame({"ev": "start", "pid": 0}))
        self.conn.sendall(encode_frame({"ev": "out", "fd": 2}, ("%s: %s\n" % (self.argv[0], text)).encode()))
        self.conn.sendall(encode_frame({"ev": "exit", "exit_code": code, "reason": "exited", "wall": 0.0, "cpu": 0.0, "maxrss": 0, "truncated": False}))

    def pump(self, pid, outputs, in_w, wake_r, started):
        poller = select.poll()
        for fd in outputs:
            poller.register(fd, select.POLLIN)
        poller.register(wake_r, select.POLLIN)
        host = self.conn.fileno()
        poller.register(host, select.POLLIN)  # the host sends nothing during an exec: readable means gone
        pending_in = memoryview(self.stdin_data) if in_w is not None else None
        if in_w is not None:
            os.set_blocking(in_w, False)
            poller.register(in_w, select.POLLOUT)
        deadline = started + self.timeout if self.timeout > 0 else None
        exited_at = None
        while True:
            now = time.monotonic()
            record = self.agent.exits.get(pid)
            if record is not None and exited_at is None:
                exited_at = now
            if exited_at is not None and (not outputs or now - exited_at > LINGER_AFTER_EXIT):
                break
            if deadline is not None and now >= deadline and self.reason is None:
                self.reason = "timeout"
                kill_group(pid)
            waits = [LINGER_AFTER_EXIT if exited_at is not None else 3600.0]
            if deadline is not None and self.reason is None:
                waits.append(max(deadline - now, 0.0))
            for fd, _ in poller.poll(min(waits) * 1000 + 1):
                if fd == wake_r:
                    os.read(wake_r, 4096)
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
                        in_w = None
                elif fd in outputs:
                    chunk = os.read(fd, CHUNK)
                    if not chunk:
                        poller.unregister(fd)
                        del outputs[fd]
                        continue
                    self.relay(pid, outputs[fd], chunk)
        status, usage, _ = self.agent.exits.pop(pid)
        return status, usage

    def relay(self, pid, stream, chunk):
        room = self.limit - self.sent[stream]
        if room <= 0:
            return
        if len(chunk) > room:
            chunk = chunk[:room]
            if self.reason is None:
                self.reason = "output_limit"
                kill_group(pid)
        self.sent[stream] += len(chunk)
        self.conn.sendall(encode_frame({"ev": "out", "fd": stream}, chunk))


def kill_group(pid):
    try:
        os.killpg(pid, 9)
    except OSError:
        pass


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
    protect_from_commands()
    Agent(int(argv[1]), float(argv[2])).serve_forever()


if __name__ == "__main__":
    main(sys.argv)
