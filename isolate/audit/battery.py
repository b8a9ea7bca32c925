"""The attack battery: what a case is, the context cases run in, and the runner that checks
the host canaries after every case.

A case is one real attack (inside a sandbox, or through the API) that names the one
observable outcome it expects: an errno, a kill and its reason, an error code, a file
left unchanged. It returns what it observed, in the same words; it passes when the two
are equal and every host canary still holds.
"""

from __future__ import annotations

import contextlib
import secrets
import shlex
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .. import rootfs
from ..errors import IsolateError
from ..manager import SandboxManager
from ..sandbox import Sandbox
from ..types import ExecResult, Limits
from .canaries import HostCanaries

# Small limits keep the resource cases fast; cases that need others ask for a fresh sandbox.
AUDIT_LIMITS = Limits(memory_mb=256, pids=128, exec_timeout=30, output_bytes=1 << 20, open_files=256, file_size_mb=64)


@dataclass(frozen=True)
class Case:
    group: str
    name: str
    expected: str
    attack: Callable[[Audit], str]
    doc: str
    backends: tuple[str, ...] = ()  # where the case applies; empty: every backend
    # where a backend's own kernel answers differently, still safely: backend -> (expected, why)
    differs: tuple[tuple[str, str, str], ...] = ()

    @property
    def id(self) -> str:
        return f"{self.group}/{self.name}"

    def expected_on(self, backend: str) -> str:
        return next((expected for name, expected, _ in self.differs if name == backend), self.expected)


@dataclass(frozen=True)
class Result:
    case: Case
    observed: str
    passed: bool | None  # None: the case does not apply to this backend
    detail: str = ""  # canary violations or the error that ended the case
    seconds: float = 0.0
    expected: str = ""  # what this backend should show (the case's own expectation unless it differs there)

    @property
    def status(self) -> str:
        return "SKIP" if self.passed is None else "PASS" if self.passed else "FAIL"

    def line(self) -> str:
        observed = self.observed if len(self.observed) <= 60 else self.observed[:57] + "..."
        text = f"{self.case.group:13} {self.case.name:34} {self.expected or self.case.expected:26} {observed:30} {self.status}"
        return text + (f"  ({self.detail})" if self.detail and self.passed is not True else "")


CASES: list[Case] = []
# Host-side scripts get the layer as `layer`: argv[1] is a disk image to loop-mount (or empty), argv[2]
# the layer's folder (inside the image when there is one).
LAYER_PRELUDE = """
import atexit, os, subprocess, sys, tempfile
from pathlib import Path
if sys.argv[1]:
    mountpoint = tempfile.mkdtemp(prefix="isolate-audit-layer-")
    atexit.register(os.rmdir, mountpoint)
    subprocess.run(["mount", "-o", "loop,nosuid,nodev", sys.argv[1], mountpoint], check=True)
    atexit.register(subprocess.run, ["umount", mountpoint], check=True)
    layer = Path(mountpoint) / sys.argv[2]
else:
    layer = Path(sys.argv[2])
args = sys.argv[3:]
"""


class NotApplicable(Exception):
    """Raised by a case that cannot run on this host (it is reported, never counted as passed)."""


def add(group: str, name: str, expected: str, attack: Callable[[Audit], str], doc: str, backends: tuple[str, ...] = (),
        differs: tuple[tuple[str, str, str], ...] = ()) -> None:
    if any(c.group == group and c.name == name for c in CASES):
        raise ValueError(f"two audit cases named {group}/{name}")
    CASES.append(Case(group, name, expected, attack, doc, backends, differs))


def case(group: str, name: str, expected: str, *, backends: tuple[str, ...] = (),
         differs: tuple[tuple[str, str, str], ...] = ()) -> Callable[[Callable[[Audit], str]], Callable[[Audit], str]]:
    """Register an attack; its docstring says what it tries."""

    def register(attack: Callable[[Audit], str]) -> Callable[[Audit], str]:
        add(group, name, expected, attack, (attack.__doc__ or "").strip(), backends, differs)
        return attack

    return register


def all_cases() -> list[Case]:
    from . import groups  # noqa: F401  (registers every group's cases)

    return list(CASES)


@dataclass
class Audit:
    """One run of the battery against one backend: shared sandboxes, host canaries, results."""

    manager: SandboxManager
    backend: str
    policy: str | None = None  # the seccomp policy of the sandboxes attacked (None: the configured default)
    token: str = field(default_factory=lambda: secrets.token_hex(4))
    canaries: HostCanaries = field(init=False)
    _shared: dict[str, Sandbox] = field(default_factory=dict)
    _fresh: list[Sandbox] = field(default_factory=list)
    _outputs: list[str] = field(default_factory=list)
    _memo: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.canaries = HostCanaries.plant(self.token)

    # --- sandboxes ---

    def _new(self, label: str, limits: Limits | None, env: dict[str, str] | None = None) -> Sandbox:
        name = f"audit-{self.token}-{label}-{secrets.token_hex(2)}"
        record = self.manager.open(name, backend=self.backend, limits=limits or AUDIT_LIMITS, env=env, policy=self.policy)
        return Sandbox(self.manager, record)

    def sandbox(self, key: str = "main") -> Sandbox:
        """A sandbox shared by the cases that do not damage it."""
        if key not in self._shared:
            self._shared[key] = self._new(key, None)
        return self._shared[key]

    def background(self, sandbox: Sandbox, command: str, seconds: float) -> None:
        """Start the shell `command` inside, detached, for at most `seconds`."""
        self.exec(sandbox, f"(timeout {seconds} sh -c {shlex.quote(command)} >/dev/null 2>&1 &)")

    def background_python(self, sandbox: Sandbox, source: str, seconds: float) -> None:
        """Start a Python program inside, detached, for at most `seconds`."""
        self.background(sandbox, f"python3 -c {shlex.quote(source)}", seconds)

    def fresh(self, limits: Limits | None = None, env: dict[str, str] | None = None) -> Sandbox:
        """A sandbox of the current case's own, destroyed when the case ends."""
        sandbox = self._new("x", limits, env)
        self._fresh.append(sandbox)
        return sandbox

    def host_uid(self, sandbox: Sandbox) -> int:
        return sandbox._record.uid

    def host_pids(self, sandbox: Sandbox) -> list[int]:
        """Host pids of every process in the sandbox's cgroup (the jail's supervisor included)."""
        return self.manager.cgroup(sandbox._record).pids()

    def host_pid_of(self, sandbox: Sandbox, argv: list[str]) -> int:
        """The host pid of the sandbox's process running exactly `argv`."""
        wanted = "\0".join(argv).encode() + b"\0"
        for pid in self.host_pids(sandbox):
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/cmdline").read_bytes() == wanted:
                    return pid
        raise LookupError(f"no process {argv} in sandbox {sandbox.name}")

    def sandbox_folder(self, sandbox: Sandbox) -> Path:
        """The sandbox's host-only folder (holding its writable layer, or the disk image the layer lives in)."""
        return self.manager.sandbox_dir(sandbox.name)

    def in_layer(self, sandbox: Sandbox, source: str, *args: str) -> str:
        """Run Python `source` as host root with `layer` bound to the sandbox's writable layer, as the
        host sees it; return its output. A layer inside a disk image is reached by stopping the sandbox
        and loop-mounting the image in a private mount namespace (no mount is left on the host)."""
        plan = rootfs.plan(sandbox._record.image, self.manager.settings.images_dir, self.sandbox_folder(sandbox))
        if plan.disk_image is None:
            argv = [sys.executable, "-c", LAYER_PRELUDE + source, "", str(plan.upper), *args]
        else:
            self.manager.stop(sandbox.name)
            argv = ["unshare", "--mount", "--propagation", "private", "--", sys.executable, "-c", LAYER_PRELUDE + source,
                    str(plan.disk_image), str(plan.upper.relative_to(plan.disk_mount)), *args]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"host-side layer script failed: {done.stderr[-300:]}")
        return done.stdout.strip()

    def memo(self, key: str, compute: Callable[[], object]) -> object:
        """A value several cases share (one probe run answers many cases)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    # --- what cases see, recorded for the secret canary ---

    def exec(self, sandbox: Sandbox, command: str, args: list[str] | None = None, **options: object) -> ExecResult:
        result: ExecResult = sandbox.exec(command, args, **options)  # type: ignore[arg-type]
        self.saw(result.stdout, result.stderr)
        return result

    def python(self, sandbox: Sandbox, source: str, *args: str, **options: object) -> ExecResult:
        """Run a Python program inside the sandbox."""
        return self.exec(sandbox, "python3", ["-c", source, *args], **options)

    def saw(self, *texts: object) -> None:
        self._outputs.extend(str(text) for text in texts)

    # --- running ---

    def run(self, case: Case) -> Result:
        if case.backends and self.backend not in case.backends:
            return Result(case, "-", None, f"applies to {', '.join(case.backends)} only")
        self._outputs.clear()
        started = time.monotonic()
        try:
            observed = case.attack(self)
            detail = ""
        except NotApplicable as exc:
            return Result(case, "-", None, str(exc), time.monotonic() - started)
        except IsolateError as exc:
            observed, detail = exc.code, exc.message[:200]
        except Exception as exc:  # a broken case is a failed case, never a crashed audit
            observed, detail = f"error: {type(exc).__name__}", "".join(traceback.format_exception_only(exc)).strip()[:300]
        finally:
            for sandbox in self._fresh:
                with contextlib.suppress(Exception):
                    sandbox.destroy()
            self._fresh.clear()
        violations = self.canaries.violations([*self._outputs, observed, detail])
        if violations:
            detail = "; ".join(violations)
        expected = case.expected_on(self.backend)
        passed = observed == expected and not violations
        return Result(case, observed, passed, detail, time.monotonic() - started, expected)

    def close(self) -> None:
        for sandbox in self._shared.values():
            with contextlib.suppress(Exception):
                sandbox.destroy()
        self._shared.clear()
        self.canaries.remove()


def unavailable(manager: SandboxManager, backend: str) -> str | None:
    """Why the battery cannot run on `backend` here, or None: it must start a sandbox and get an answer."""
    from ..manager import BACKENDS

    if backend not in BACKENDS:
        return f"backend {backend!r} is not part of this isolate (known: {', '.join(BACKENDS)})"
    name = f"audit-probe-{secrets.token_hex(4)}"
    try:
        Sandbox(manager, manager.open(name, backend=backend)).ping()
    except IsolateError as exc:
        return f"{backend}: {exc.message}"
    finally:
        with contextlib.suppress(IsolateError):
            manager.destroy(name)
    return None


def run_all(manager: SandboxManager, backend: str, cases: list[Case]) -> Iterator[Result]:
    audit = Audit(manager, backend)
    try:
        for item in cases:
            yield audit.run(item)
    finally:
        audit.close()


def summary(results: list[Result], backend: str, seconds: float) -> str:
    counts = {status: sum(1 for r in results if r.status == status) for status in ("PASS", "FAIL", "SKIP")}
    verdict = "all attacks contained" if counts["FAIL"] == 0 else "SOME ATTACKS WERE NOT CONTAINED"
    return (f"audit on {backend}: {len(results)} cases, {counts['PASS']} passed, {counts['FAIL']} failed, "
            f"{counts['SKIP']} not applicable, {seconds:.1f} s: {verdict}")
