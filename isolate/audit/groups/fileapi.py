"""The host-side file API: no caller path, and no link, FIFO, device or huge file made inside,
makes a file call touch anything outside the sandbox, hang the caller, or exhaust its memory;
not even while code inside swaps a folder for a symlink in a tight loop."""

from __future__ import annotations

import time
from dataclasses import replace
from functools import partial

from ...errors import IsolateError
from ..battery import AUDIT_LIMITS, Audit, add, case

GROUP = "file-api"
RACE_SECONDS = 2.0


def _code(call) -> str:
    """The error code a file call fails with, or "ok"."""
    try:
        call()
        return "ok"
    except IsolateError as exc:
        return exc.code


def _read(audit: Audit, path: str) -> str:
    """Whose file a read through the API returned: the host's canary, or the sandbox's decoy at that path."""
    sandbox = _prepared(audit)
    sandbox.write_file(str(audit.canaries.file), "decoy\n")  # inside: the path the attack names holds a decoy
    try:
        content = sandbox.read_file(path).content
    except IsolateError as exc:
        return exc.code
    return "the host's canary" if content == audit.canaries.file.read_text() else "the sandbox's own file"


def _timed(call, bound: float) -> str:
    started = time.monotonic()
    outcome = _code(call)
    elapsed = time.monotonic() - started
    return outcome if elapsed < bound else f"{outcome} after {elapsed:.1f} s"


def _prepared(audit: Audit):
    """The file-API sandbox, with links to the host canary made inside."""

    def setup():
        sandbox = audit.sandbox(GROUP)
        canary, folder = audit.canaries.file, audit.canaries.folder
        audit.exec(sandbox, "mkdir -p /workspace/links && cd /workspace/links && "
                            f"ln -sfn {canary} absolute && ln -sfn ../../../../../../../../..{canary} relative && "
                            f"ln -sfn {folder} folder && ln -sfn {folder}/{audit.canaries.marker} dangling && "
                            "ln -sfn /etc/passwd passwd && ln -sfn / root && ln -sfn /dev/zero zero && mkfifo fifo && "
                            # the folder the links name also exists inside, so calls through them succeed: if one
                            # resolved on the host, it would write there
                            f"mkdir -p {folder} && echo decoy > {canary}")
        return sandbox

    return audit.memo("file-api-sandbox", setup)


OWN = "the sandbox's own file"


@case(GROUP, "traversal", OWN)
def traversal(audit: Audit) -> str:
    """`../` far above the root, then the host canary's path."""
    return _read(audit, "../" * 20 + str(audit.canaries.file).lstrip("/"))


@case(GROUP, "absolute-host-path-read", OWN)
def absolute_read(audit: Audit) -> str:
    """Read the host canary by its absolute host path."""
    return _read(audit, str(audit.canaries.file))


@case(GROUP, "absolute-host-path-write", "written inside only")
def absolute_write(audit: Audit) -> str:
    """Write a marker at an absolute host path: it lands in the sandbox's own tree."""
    sandbox = _prepared(audit)
    target = f"{audit.canaries.folder}/{audit.canaries.marker}"
    sandbox.write_file(target, "pwned")
    return "written inside only" if sandbox.read_file(target).content == "pwned" else "missing inside"


@case(GROUP, "absolute-symlink", OWN)
def absolute_symlink(audit: Audit) -> str:
    """Read through a symlink made inside that names the host canary absolutely."""
    return _read(audit, "/workspace/links/absolute")


@case(GROUP, "relative-symlink", OWN)
def relative_symlink(audit: Audit) -> str:
    """Read through a relative symlink climbing far above the root to the host canary."""
    return _read(audit, "/workspace/links/relative")


@case(GROUP, "magic-link-proc-root", OWN)
def magic_link_proc_root(audit: Audit) -> str:
    """Read the host canary through /proc/self/root and /proc/1/root, the links that jump roots."""
    return " ".join(sorted({_read(audit, f"{prefix}{audit.canaries.file}") for prefix in ("/proc/self/root", "/proc/1/root")}))


@case(GROUP, "magic-link-descriptor", "FILESYSTEM_ERROR")
def magic_link_descriptor(audit: Audit) -> str:
    """Read the agent's own descriptors (its stdin, its channel) through /proc/self/fd."""
    sandbox = _prepared(audit)
    codes = {_code(lambda n=fd: sandbox.read_file(f"/proc/self/fd/{n}")) for fd in range(0, 6)}
    return " ".join(sorted(codes - {"FILE_NOT_FOUND"}))


@case(GROUP, "proc-self-mem", "FILESYSTEM_ERROR")
def proc_self_mem(audit: Audit) -> str:
    """Read the agent's memory through the API; it answers with an error and keeps serving."""
    sandbox = _prepared(audit)
    outcome = _code(lambda: sandbox.read_file("/proc/self/mem"))
    return outcome if sandbox.ping() == "pong" else f"{outcome}, then the agent died"


@case(GROUP, "dangling-symlink-write", "the link is replaced inside")
def dangling_symlink_write(audit: Audit) -> str:
    """Write through a dangling symlink whose target is a host path: the link itself is replaced."""
    sandbox = _prepared(audit)
    sandbox.write_file("/workspace/links/dangling", "pwned")
    kind = {e.name: e.type for e in sandbox.list_files("/workspace/links")}.get("dangling")
    return "the link is replaced inside" if kind == "file" else f"dangling is now a {kind}"


@case(GROUP, "symlink-to-file-write", "target unchanged")
def symlink_to_file_write(audit: Audit) -> str:
    """Write through a symlink to /etc/passwd: the link is replaced, its target keeps its content."""
    sandbox = _prepared(audit)
    before = sandbox.read_file("/etc/passwd").content
    sandbox.write_file("/workspace/links/passwd", "pwned")
    return "target unchanged" if sandbox.read_file("/etc/passwd").content == before else "target changed"


def _staged(sandbox, path: str) -> str:
    sandbox.write_file(path, "x")
    return path


# name -> (what it attempts, the call given the sandbox and a path under the link, the path it makes under the folder)
THROUGH_THE_LINK = {
    "symlinked-parent-write": ("Write a marker into a folder that is a symlink to the host canary folder's path.",
                               lambda sandbox, path: sandbox.write_file(path, "x"), "{marker}"),
    "symlinked-parent-mkdir": ("mkdir (recursive) under a symlink to the host canary folder's path.",
                               lambda sandbox, path: sandbox.mkdir(path, recursive=True), "{marker}-dir/x"),
    "symlinked-parent-rename": ("Rename a file into a symlink to the host canary folder's path.",
                                lambda sandbox, path: sandbox.rename_file(_staged(sandbox, "/workspace/to-rename"), path), "{marker}-renamed"),
    "symlinked-parent-move": ("Move a file to a new folder under a symlink to the host canary folder's path.",
                              lambda sandbox, path: sandbox.move_file(_staged(sandbox, "/workspace/to-move"), path), "sub/{marker}-moved"),
}


def _through_the_link(audit: Audit, call, relative: str) -> str:
    """Make a call through the link to the host canary folder; report where its effect is."""
    sandbox, relative = _prepared(audit), relative.format(marker=audit.canaries.marker)
    outcome = _code(lambda: call(sandbox, f"/workspace/links/folder/{relative}"))
    if outcome != "ok":
        return outcome
    inside = f"{audit.canaries.folder}/{relative}"
    return "landed inside" if audit.exec(sandbox, "test", ["-e", inside]).exit_code == 0 else "landed nowhere inside"


for _name, (_doc, _call, _relative) in THROUGH_THE_LINK.items():
    add(GROUP, _name, "landed inside", partial(_through_the_link, call=_call, relative=_relative), _doc)


@case(GROUP, "symlinked-parent-delete", "deleted inside only")
def symlinked_parent_delete(audit: Audit) -> str:
    """Delete canary.txt through a symlink to the host canary folder's path."""
    sandbox = _prepared(audit)
    outcome = _code(lambda: sandbox.delete_file("/workspace/links/folder/canary.txt"))
    return "deleted inside only" if outcome == "ok" else outcome


@case(GROUP, "delete-symlink-to-root", "only the link removed")
def delete_symlink_to_root(audit: Audit) -> str:
    """Delete a symlink to /: the link goes, nothing it points to."""
    sandbox = _prepared(audit)
    sandbox.exec("ln -sfn / /workspace/rootlink")
    sandbox.delete_file("/workspace/rootlink")
    intact = sandbox.exists("/etc/passwd") and sandbox.exists("/workspace/links")
    return "only the link removed" if intact and not sandbox.exists("/workspace/rootlink") else "more was removed"


@case(GROUP, "fifo-read", "FILESYSTEM_ERROR")
def fifo_read(audit: Audit) -> str:
    """Read a FIFO nobody writes to: refused at once, the caller never blocks."""
    return _timed(lambda: _prepared(audit).read_file("/workspace/links/fifo"), 5.0)


@case(GROUP, "fifo-write", "FILESYSTEM_ERROR")
def fifo_write(audit: Audit) -> str:
    """Write a FIFO nobody reads: refused at once."""
    return _timed(lambda: _prepared(audit).write_file("/workspace/links/fifo", "x" * 100000), 5.0)


@case(GROUP, "dev-zero", "FILESYSTEM_ERROR")
def dev_zero(audit: Audit) -> str:
    """Read /dev/zero, endless, directly and through a symlink."""
    sandbox = _prepared(audit)
    codes = {_timed(lambda p=path: sandbox.read_file(p), 5.0) for path in ("/dev/zero", "/workspace/links/zero", "/dev/urandom")}
    return " ".join(sorted(codes))


@case(GROUP, "sparse-huge-file", "FILE_TOO_LARGE")
def sparse_huge_file(audit: Audit) -> str:
    """Read a 60 MiB sparse file (over the read cap), which costs no disk to make."""
    sandbox = _prepared(audit)
    sandbox.exec("truncate", ["-s", "60M", "/workspace/sparse"])
    return _timed(lambda: sandbox.read_file("/workspace/sparse"), 5.0)


@case(GROUP, "growing-file", "never more than the cap")
def growing_file(audit: Audit) -> str:
    """Read, again and again, a file another process keeps appending to: each read either
    fails FILE_TOO_LARGE or returns at most the cap, and returns promptly."""
    sandbox = _prepared(audit)
    audit.exec(sandbox, "rm -f /workspace/grow; (timeout 10 python3 -c \"f = open('/workspace/grow', 'wb')\n"
                        "for _ in range(60): f.write(b'x' * (1 << 20)); f.flush()\" >/dev/null 2>&1 &); sleep 0.05")
    for _ in range(6):
        started = time.monotonic()
        try:
            size = sandbox.read_file("/workspace/grow", encoding="bytes").size
        except IsolateError as exc:
            if exc.code not in ("FILE_TOO_LARGE", "FILE_NOT_FOUND"):
                return exc.code
            size = 0
        if size > 32 << 20 or time.monotonic() - started > 10:
            return f"returned {size} bytes in {time.monotonic() - started:.1f} s"
    return "never more than the cap"


@case(GROUP, "nul-byte-in-path", "VALIDATION_FAILED")
def nul_byte(audit: Audit) -> str:
    """A path with a NUL byte, which C would cut short."""
    return _code(lambda: _prepared(audit).write_file("/workspace/ok\x00/../../etc/passwd", "x"))


@case(GROUP, "over-long-path", "VALIDATION_FAILED")
def over_long_path(audit: Audit) -> str:
    """A path of 64 KiB."""
    return _code(lambda: _prepared(audit).read_file("/workspace/" + "a/" * 32768))


@case(GROUP, "over-long-name", "NAME_TOO_LONG")
def over_long_name(audit: Audit) -> str:
    """A single name of 300 bytes."""
    return _code(lambda: _prepared(audit).write_file("/workspace/" + "n" * 300, "x"))


@case(GROUP, "invalid-utf8-path", "VALIDATION_FAILED")
def invalid_utf8(audit: Audit) -> str:
    """A path holding a lone surrogate (undecodable bytes)."""
    return _code(lambda: _prepared(audit).write_file("/workspace/\udcff\udcfe", "x"))


@case(GROUP, "odd-names", "round trip, nothing run")
def odd_names(audit: Audit) -> str:
    """Names with newlines, tabs, quotes, `$(...)`, backslashes, leading dashes and non-ASCII
    are plain names: written, read back, and never run."""
    sandbox = _prepared(audit)
    names = ["a\nb", "tab\there", "$(touch /workspace/ran)", "`touch /workspace/ran`", "-rf", "--help", "back\\slash",
             "quote'\"", " lead space", "é✓", "..dots..", "a;b|c&d"]
    bad = []
    for name in names:
        path = "/workspace/odd/" + name
        sandbox.write_file(path, name)
        if sandbox.read_file(path).content != name:
            bad.append(repr(name))
    if sandbox.exists("/workspace/ran"):
        bad.append("a name ran a command")
    return "round trip, nothing run" if not bad else " ".join(bad)


@case(GROUP, "recursive-list-of-links", "links not followed")
def recursive_list_of_links(audit: Audit) -> str:
    """A recursive listing over symlink loops and a link to / lists the links, never their targets."""
    sandbox = _prepared(audit)
    sandbox.exec("mkdir -p /workspace/loops/a && ln -sfn .. /workspace/loops/a/up && ln -sfn / /workspace/loops/root")
    entries = sandbox.list_files("/workspace/loops", recursive=True)
    paths = {e.relative_path for e in entries}
    return "links not followed" if paths == {"a", "a/up", "root"} else " ".join(sorted(paths)[:8])


def _race(audit: Audit, sandbox, target: str) -> None:
    """Start, inside, a loop swapping /workspace/race/d between a folder and a symlink to `target`."""
    audit.exec(sandbox, "mkdir -p /workspace/race && cd /workspace/race && rm -rf d A L && mkdir A && "
                        f"ln -s {target} L && echo inside > A/canary.txt && "
                        f"(timeout {RACE_SECONDS + 2} python3 -c \"import os\nos.chdir('/workspace/race')\n"
                        "while True:\n for x in ('A', 'L'): os.rename(x, 'd'); os.rename('d', x)\" >/dev/null 2>&1 &)")


@case(GROUP, "symlink-swap-race-write", "contained")
def swap_race_write(audit: Audit) -> str:
    """While a folder flips to a symlink to the host canary folder and back, write, mkdir,
    rename and delete through it: nothing appears on the host (the canaries say so)."""
    sandbox = audit.sandbox("race")
    _race(audit, sandbox, str(audit.canaries.folder))
    marker, deadline = audit.canaries.marker, time.monotonic() + RACE_SECONDS
    calls = [
        lambda: sandbox.write_file(f"/workspace/race/d/{marker}", "pwned"),
        lambda: sandbox.mkdir(f"/workspace/race/d/{marker}-dir", recursive=True),
        lambda: sandbox.rename_file(f"/workspace/race/d/{marker}", f"/workspace/race/d/{marker}-renamed"),
        lambda: sandbox.delete_file("/workspace/race/d/canary.txt"),
    ]
    count = 0
    while time.monotonic() < deadline:
        _code(calls[count % len(calls)])
        count += 1
    return "contained" if count > 20 else f"only {count} calls"


@case(GROUP, "symlink-swap-race-read", "contained")
def swap_race_read(audit: Audit) -> str:
    """While a folder flips to a symlink to the host canary folder and back, read canary.txt
    through it: only the sandbox's own file is ever returned."""
    sandbox = audit.sandbox("race")
    _race(audit, sandbox, str(audit.canaries.folder))
    host_text, deadline, count = audit.canaries.file.read_text(), time.monotonic() + RACE_SECONDS, 0
    while time.monotonic() < deadline:
        try:
            content = sandbox.read_file("/workspace/race/d/canary.txt").content
        except IsolateError:
            continue
        finally:
            count += 1
        if content == host_text:
            return "read the host canary"
    return "contained" if count > 20 else f"only {count} calls"


@case(GROUP, "symlink-swap-race-host-walk", "contained")
def swap_race_host_walk(audit: Audit) -> str:
    """The host itself walks the sandbox's layer to report disk use (`info()`); while two hundred
    folders keep flipping to symlinks to the host's / and back, the walk never leaves the layer."""
    sandbox = audit.fresh(replace(AUDIT_LIMITS, disk_mb=None))  # a layer that is a plain folder: the host walks it
    audit.exec(sandbox, "mkdir -p /workspace/walk && cd /workspace/walk && for i in $(seq 200); do mkdir -p s$i; done && "
                        f"(timeout {RACE_SECONDS + 2} python3 -c \"import os\nos.chdir('/workspace/walk')\n"
                        "while True:\n for i in range(1, 201): os.rename('s%d' % i, 'h%d' % i); os.symlink('/', 's%d' % i)\n"
                        " for i in range(1, 201): os.unlink('s%d' % i); os.rename('h%d' % i, 's%d' % i)\" >/dev/null 2>&1 &)")
    deadline, largest = time.monotonic() + RACE_SECONDS, 0
    while time.monotonic() < deadline:
        started = time.monotonic()
        largest = max(largest, sandbox.info().disk_bytes)
        if time.monotonic() - started > 5:
            return "a walk took over 5 s"
    return "contained" if largest < 200 << 20 else f"counted {largest >> 20} MiB"
