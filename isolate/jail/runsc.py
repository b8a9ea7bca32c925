"""The runsc binary: where it is, its version, and which gVisor platforms really start on this host.

A platform is probed by booting `runsc do true` on it under a hard deadline, inside a
throwaway cgroup so that a probe that hangs (kvm does, on some VMs) is killed whole.
Probing takes a few seconds, so results are cached on disk, keyed by the runsc
binary and the kernel; a change of either probes again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from ..cgroups import SandboxCgroup, remove_parent
from ..errors import HostError
from ..types import Limits

# In order of preference: systrap (fast, no special hardware), kvm (only where it boots), ptrace (slow system calls).
PLATFORMS = ("systrap", "kvm", "ptrace")
PROBE_DEADLINE = {"systrap": 20.0, "ptrace": 20.0, "kvm": 5.0}
PLATFORM_VARIABLE = "ISOLATE_GVISOR_PLATFORM"
PROBE_LIMITS = Limits(memory_mb=1024, pids=4096)


@dataclass(frozen=True)
class PlatformProbe:
    platform: str
    works: bool
    detail: str
    seconds: float


def find_runsc() -> Path:
    for candidate in (shutil.which("runsc"), "/usr/bin/runsc", "/usr/local/bin/runsc"):
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    raise HostError("runsc (gVisor) not found: apt-get install -t bookworm-backports runsc (see README)")


def version(binary: Path) -> str:
    probe = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10)
    return (probe.stdout.splitlines() or ["unknown"])[0].removeprefix("runsc version ").strip()


def probe(binary: Path, platform: str, deadline: float | None = None) -> PlatformProbe:
    """Boot `runsc do true` on `platform`; a probe that outlives its deadline is killed with its whole cgroup."""
    deadline = deadline or PROBE_DEADLINE.get(platform, 10.0)
    work = Path(tempfile.mkdtemp(prefix="isolate-runsc-probe-"))
    cgroup = SandboxCgroup("isolate-probes", work.name)
    started = time.monotonic()
    try:
        cgroup.create(PROBE_LIMITS)
        procs = " ".join(f"'{path}'" for path in cgroup.procs_files())
        command = [str(binary), f"--root={work}/state", f"--platform={platform}", "--network=none", "--ignore-cgroups", "do", "/bin/true"]
        process = subprocess.Popen(["/bin/sh", "-c", f'for f in {procs}; do echo $$ > "$f" || exit 97; done; exec "$@"', "probe", *command],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=work)
        try:
            _, err = process.communicate(timeout=deadline)
        except subprocess.TimeoutExpired:
            cgroup.kill()
            process.communicate()
            return PlatformProbe(platform, False, f"no answer within {deadline:.0f} s (killed)", time.monotonic() - started)
        seconds = time.monotonic() - started
        if process.returncode == 0:
            return PlatformProbe(platform, True, f"boots in {seconds * 1000:.0f} ms", seconds)
        lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
        return PlatformProbe(platform, False, (lines[-1] if lines else f"exit {process.returncode}")[:200], seconds)
    finally:
        cgroup.remove()
        remove_parent(cgroup.parent)
        shutil.rmtree(work, ignore_errors=True)


def cache_path(libexec_dir: Path) -> Path:
    return libexec_dir / "runsc-platforms.json"


def _cache_key(binary: Path) -> dict[str, object]:
    info = binary.stat()
    return {"runsc": str(binary), "size": info.st_size, "mtime": info.st_mtime, "kernel": os.uname().release}


def probe_platforms(cache: Path, *, all_platforms: bool) -> list[PlatformProbe]:
    """Probe results, from the cache where it matches this runsc and kernel.

    Without `all_platforms`, probing stops at the first platform that works (what a
    sandbox start needs); the doctor asks for all of them.
    """
    binary = find_runsc()
    key = _cache_key(binary)
    known: dict[str, PlatformProbe] = {}
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
        data = json.loads(cache.read_text())
        if data["key"] == key:
            known = {item["platform"]: PlatformProbe(**item) for item in data["probes"]}
    results = []
    for platform in PLATFORMS:
        if platform not in known:
            known[platform] = probe(binary, platform)
            cache.parent.mkdir(parents=True, exist_ok=True)
            temp = cache.with_name(f".{cache.name}.{os.getpid()}")
            temp.write_text(json.dumps({"key": key, "probes": [asdict(p) for p in known.values()]}))
            os.replace(temp, cache)
        results.append(known[platform])
        if known[platform].works and not all_platforms:
            break
    return results


def best_platform(cache: Path) -> str:
    """The platform sandboxes use: ISOLATE_GVISOR_PLATFORM if set, else the first of PLATFORMS that boots."""
    chosen = os.environ.get(PLATFORM_VARIABLE)
    if chosen:
        if chosen not in PLATFORMS:
            raise HostError(f"{PLATFORM_VARIABLE}={chosen!r} is not a gVisor platform ({', '.join(PLATFORMS)})")
        return chosen
    for result in probe_platforms(cache, all_platforms=False):
        if result.works:
            return result.platform
    raise HostError("no gVisor platform boots on this host (run `isolate doctor`)")
