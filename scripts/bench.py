#!/usr/bin/env python3
"""Benchmark: sandbox cold start, warm exec and a 1 MiB file round trip, beside baselines
measured in the same run (a bare fork+exec of `true`, and nsjail alone starting `true`).

Prints medians (and p90) in milliseconds and ratios against the baselines. Speed is
measured here, never asserted by a timed test.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from isolate import Limits, Sandbox, SandboxManager, Settings, cgroups
from isolate.jail.nsjail import stage_nsjail
from isolate.net import netns

MiB = 1 << 20


def timed(action: Callable[[], object], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def line(label: str, samples: list[float], baseline: float | None = None, baseline_name: str = "") -> float:
    median = statistics.median(samples)
    p90 = sorted(samples)[int(len(samples) * 0.9) - 1] if len(samples) >= 10 else max(samples)
    ratio = f"   {median / baseline:6.1f}x {baseline_name}" if baseline else ""
    print(f"{label:44} median {median:8.2f} ms   p90 {p90:8.2f} ms   n={len(samples):<4}{ratio}")
    return median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--cold-runs", type=int, default=20)
    args = parser.parse_args()

    state = Path(tempfile.mkdtemp(prefix="isolate-bench-", dir="/var/tmp"))
    state.chmod(0o711)
    manager = SandboxManager(Settings(state_dir=state, limits=Limits()))
    try:
        print(f"isolate benchmark: {os.cpu_count()} CPUs, kernel {os.uname().release}\n")
        bare = line("baseline: subprocess.run(['true'])", timed(lambda: subprocess.run(["true"]), args.runs))
        nsjail = str(stage_nsjail(manager.settings.libexec_dir))
        jail_argv = [nsjail, "-Mo", "-Q", "--chroot", "/", "--user", "0", "--group", "0", "--", "/bin/true"]
        bare_jail = line("baseline: nsjail -Mo chroot / true", timed(lambda: subprocess.run(jail_argv), args.runs), bare, "bare")
        print()

        counter = iter(range(10**6))

        def cold() -> None:
            sandbox = Sandbox(manager, manager.open(f"cold-{next(counter)}"))
            sandbox.exec("true", [])

        cold_samples = timed(cold, args.cold_runs)
        for name in manager.names():
            manager.destroy(name)
        cold_none = line("nsjail: cold start (create + first true)", cold_samples, bare_jail, "nsjail alone")

        # networking's share: a namespace of its own for every sandbox; a veth, addresses and rules with egress
        line("network: new namespace, lo up (every start)", timed(lambda: os.close(netns.create()), args.runs))
        for label, network in (("allowlist", {"allow": ["198.18.0.1:443", "198.18.1.0/24"]}), ("open", "open")):
            def networked(network: object = network) -> None:
                Sandbox(manager, manager.open(f"net-{next(counter)}", network=network)).exec("true", [])

            samples = timed(networked, args.cold_runs)
            for name in manager.names():
                manager.destroy(name)
            line(f"nsjail: cold start, network {label}", samples, cold_none, "network none")

        pooled = SandboxManager(replace(manager.settings, warm_pool=2))
        pooled_samples = []
        for index in range(args.cold_runs):
            pooled.pool.fill()  # not timed: the pool refills between claims
            started = time.perf_counter()
            Sandbox(pooled, pooled.open(f"pooled-{index}")).exec("true", [])
            pooled_samples.append((time.perf_counter() - started) * 1000)
        pooled.pool.fill()
        for name in pooled.names():
            pooled.destroy(name)
        pooled.pool.drain()
        line("nsjail: cold start from the warm pool", pooled_samples, bare_jail, "nsjail alone")

        sandbox = Sandbox(manager, manager.open("warm"))
        sandbox.exec("true", [])
        line("nsjail: warm exec of true", timed(lambda: sandbox.exec("true", []), args.runs), bare, "bare")
        line("nsjail: ping (agent round trip)", timed(sandbox.ping, args.runs))
        payload = os.urandom(MiB)

        def round_trip() -> None:
            sandbox.write_file("/workspace/blob", payload)
            assert sandbox.read_file("/workspace/blob", encoding="bytes").content == payload

        line("nsjail: write_file + read_file of 1 MiB", timed(round_trip, args.runs))
        print()
        embedded = line("embedded: sandbox.exec('true') (shell form)", timed(lambda: sandbox.exec("true"), args.runs))
        worker_figures(args.runs, embedded)
        print(f"\nidle memory: {manager.cgroup(manager.load('warm')).memory_bytes() / MiB:.1f} MiB charged to one idle sandbox's cgroup")
    finally:
        for name in manager.names():
            manager.destroy(name)
        cgroups.remove_parent(manager.settings.instance)
        shutil.rmtree(state, ignore_errors=True)


def worker_figures(runs: int, embedded: float) -> None:
    """The worker over HTTP on loopback (keep-alive connection), beside the embedded call."""
    import httpx

    from tests.workers import Worker

    state = Path(tempfile.mkdtemp(prefix="isolate-bench-worker-", dir="/var/tmp"))
    state.chmod(0o711)
    worker = Worker(state, token=None)
    try:
        worker.start()
        port = worker.port
        served = {"X-Sandbox-Id": "served"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as client:
            client.post("/api/execute", json={"command": "true"}, headers=served).raise_for_status()  # created and started: warm now
            line("worker: GET /api/ping", timed(lambda: client.get("/api/ping"), runs))
            line("worker: POST /api/execute {command: 'true'}",
                 timed(lambda: client.post("/api/execute", json={"command": "true"}, headers=served), runs), embedded, "embedded")
            client.delete("/api/sandbox", headers=served)
    finally:
        worker.stop()
        leftover = SandboxManager(Settings(state_dir=state))
        for name in leftover.names():
            leftover.destroy(name)
        cgroups.remove_parent(leftover.settings.instance)
        shutil.rmtree(state, ignore_errors=True)


if __name__ == "__main__":
    main()
