#!/usr/bin/env python3
"""Benchmark: sandbox cold start, warm exec and a 1 MiB file round trip on each backend, side by
side, beside baselines measured in the same run (a bare fork+exec of `true`, nsjail alone
starting `true`, `runsc do true` for gVisor, and gVisor's own cost of a process: `true`
spawned and waited for by a program inside `runsc do`), and the idle memory (PSS) of a sandbox.
For gVisor it also measures, in turns with `runsc do true`, the floor that the design's two
fixed parts set: `runsc do` with host networking in an empty network namespace (what lets
network policies change live) starting the agent's interpreter (`python3 -I -S -c pass`).

Prints medians (and p90) in milliseconds and ratios against the baselines. Speed is
measured here, never asserted by a timed test. Goals for gVisor: cold start at most 1.5x
`runsc do true`, warm exec at most 10 ms (median).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from isolate import Limits, Sandbox, SandboxManager, Settings
from isolate.jail import runsc
from isolate.jail.nsjail import stage_nsjail
from isolate.net import netns

MiB = 1 << 20

# Inside `runsc do`: spawn and wait for /bin/true, print each time in ms (the first few, warming up, left out)
SPAWN_LOOP = """import os, sys, time
for i in range(int(sys.argv[1]) + 5):
    started = time.perf_counter()
    os.waitpid(os.posix_spawn('/bin/true', ['/bin/true'], {}), 0)
    if i >= 5:
        print((time.perf_counter() - started) * 1000)
"""


def timed(action: Callable[[], object], runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def in_turns(actions: dict[str, Callable[[], object]], runs: int) -> dict[str, list[float]]:
    """Each action once per round: the VM's speed drifts within minutes, so figures that are
    compared with each other are taken in the same rounds."""
    samples: dict[str, list[float]] = {label: [] for label in actions}
    for _ in range(runs):
        for label, action in actions.items():
            samples[label] += timed(action, 1)
    return samples


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def p90(samples: list[float]) -> float:
    return sorted(samples)[int(len(samples) * 0.9) - 1] if len(samples) >= 10 else max(samples)


def line(label: str, samples: list[float], baseline: float | None = None, baseline_name: str = "") -> float:
    ratio = f"   {median(samples) / baseline:6.2f}x {baseline_name}" if baseline else ""
    print(f"{label:48} median {median(samples):8.2f} ms   p90 {p90(samples):8.2f} ms   n={len(samples):<4}{ratio}")
    return median(samples)


def backend_figures(manager: SandboxManager, backend: str, runs: int, cold_runs: int,
                    process_cost: Callable[[int], list[float]] | None = None) -> dict[str, list[float]]:
    """Cold start (fresh and from the warm pool), warm exec, ping, 1 MiB round trip, idle PSS; with
    `process_cost`, the backend's own cost of a process, measured in turns with the warm execs (the
    VM's speed drifts within minutes: a baseline taken apart from them would not compare)."""
    counter = iter(range(10**6))
    figures: dict[str, list[float]] = {"cold": [], "pooled": []}
    for _ in range(cold_runs):
        name = f"cold-{backend}-{next(counter)}"
        started = time.perf_counter()
        Sandbox(manager, manager.open(name, backend=backend)).exec("true", [])
        figures["cold"].append((time.perf_counter() - started) * 1000)
        manager.destroy(name)  # not timed; a gVisor run must stay under the host's bound anyway

    # networking's share: a veth, addresses and rules when the sandbox has egress (it always gets a namespace)
    for label, network in (("allowlist", {"allow": ["198.18.0.1:443", "198.18.1.0/24"]}), ("open", "open")):
        figures[f"network {label}"] = []
        for _ in range(cold_runs):
            name = f"net-{backend}-{next(counter)}"
            started = time.perf_counter()
            Sandbox(manager, manager.open(name, backend=backend, network=network)).exec("true", [])
            figures[f"network {label}"].append((time.perf_counter() - started) * 1000)
            manager.destroy(name)

    pooled = SandboxManager(replace(manager.settings, warm_pool=2, backend=backend))
    for index in range(cold_runs):
        pooled.pool.fill()  # not timed: the pool refills between claims
        name = f"pooled-{backend}-{index}"
        started = time.perf_counter()
        Sandbox(pooled, pooled.open(name)).exec("true", [])
        figures["pooled"].append((time.perf_counter() - started) * 1000)
        pooled.destroy(name)
    pooled.pool.fill()  # waits for the refill that the last claim set off, so nothing is draining under it
    pooled.pool.drain()

    sandbox = Sandbox(manager, manager.open(f"warm-{backend}", backend=backend))
    sandbox.exec("true", [])
    figures["warm"], figures["process"] = [], []
    for _ in range(5):
        figures["warm"] += timed(lambda: sandbox.exec("true", []), runs // 5)
        if process_cost:
            figures["process"] += process_cost(runs // 5)
    figures["ping"] = timed(sandbox.ping, runs)
    payload = os.urandom(MiB)

    def round_trip() -> None:
        sandbox.write_file("/workspace/blob", payload)
        assert sandbox.read_file("/workspace/blob", encoding="bytes").content == payload

    figures["file"] = timed(round_trip, max(runs // 2, 5))
    figures["pss"] = idle_pss(manager, backend)
    return figures


def idle_pss(manager: SandboxManager, backend: str, count: int = 4) -> list[float]:
    """PSS (MiB) of all host processes of each of `count` idle sandboxes running side by side
    (pages of the jail's binaries are shared between them, as on a busy host)."""
    names = [f"idle-{backend}-{index}" for index in range(count)]
    for name in names:
        Sandbox(manager, manager.open(name, backend=backend)).exec("true", [])
    time.sleep(2)  # let start-up garbage settle
    values = [manager.cgroup(manager.load(name)).pss_bytes() / MiB for name in names]
    for name in names:
        manager.destroy(name)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--cold-runs", type=int, default=20)
    parser.add_argument("--backends", default="nsjail,gvisor", help="comma-separated; gvisor is left out if runsc is missing")
    args = parser.parse_args()
    backends = [b for b in args.backends.split(",") if b]
    if "gvisor" in backends:
        try:
            runsc_binary = runsc.find_runsc()
        except Exception as exc:
            print(f"gvisor left out: {exc}")
            backends.remove("gvisor")

    state = Path(tempfile.mkdtemp(prefix="isolate-bench-", dir="/var/tmp"))
    state.chmod(0o711)
    manager = SandboxManager(Settings(state_dir=state, limits=Limits()))
    try:
        print(f"isolate benchmark: {os.cpu_count()} CPUs, kernel {os.uname().release}\n")
        bare = line("baseline: subprocess.run(['true'])", timed(lambda: subprocess.run(["true"]), args.runs))
        nsjail = str(stage_nsjail(manager.settings.libexec_dir))
        jail_argv = [nsjail, "-Mo", "-Q", "--chroot", "/", "--user", "0", "--group", "0", "--", "/bin/true"]
        baselines = {"nsjail": line("baseline: nsjail -Mo chroot / true", timed(lambda: subprocess.run(jail_argv), args.runs), bare, "bare")}
        if "gvisor" in backends:
            platform = runsc.best_platform(runsc.cache_path(manager.settings.libexec_dir))
            do_root = state / "runsc-do"
            do_argv = [str(runsc_binary), f"--root={do_root}", f"--platform={platform}", "--network=none", "do", "/bin/true"]
            floor_argv = ["unshare", "--net", *do_argv[:3], "--network=host", "do", "/usr/bin/python3", "-I", "-S", "-c", "pass"]
            do_samples = in_turns({"do": lambda: subprocess.run(do_argv, check=True),
                                   "floor": lambda: subprocess.run(floor_argv, check=True)}, args.cold_runs)
            baselines["gvisor"] = line(f"baseline: runsc do true ({platform})", do_samples["do"], bare, "bare")
            baselines["gvisor floor"] = line("floor: runsc do python3, host network (in turns)", do_samples["floor"],
                                             baselines["gvisor"], "runsc do true")

            def gvisor_process_cost(count: int) -> list[float]:
                loop = subprocess.run([*do_argv[:-1], "/usr/bin/python3", "-I", "-S", "-c", SPAWN_LOOP, str(count)],
                                      check=True, capture_output=True, text=True).stdout
                return [float(v) for v in loop.split()]
        line("network: new namespace, lo up (every start)", timed(lambda: os.close(netns.create()), args.runs))
        print()

        results = {}
        for backend in backends:
            results[backend] = figures = backend_figures(manager, backend, args.runs, args.cold_runs,
                                                         gvisor_process_cost if backend == "gvisor" else None)
            alone = "runsc do true" if backend == "gvisor" else "nsjail alone"
            line(f"{backend}: cold start (create + first true)", figures["cold"], baselines[backend], alone)
            for label in ("allowlist", "open"):
                line(f"{backend}: cold start, network {label}", figures[f"network {label}"], median(figures["cold"]), "network none")
            line(f"{backend}: cold start from the warm pool", figures["pooled"], baselines[backend], alone)
            if figures["process"]:
                baselines[f"{backend} process"] = line(f"{backend}: in runsc do, spawn + wait of true", figures["process"], bare, "bare")
                line(f"{backend}: warm exec of true (in turns with it)", figures["warm"], baselines[f"{backend} process"], "spawn in runsc do")
            else:
                line(f"{backend}: warm exec of true", figures["warm"], bare, "bare")
            line(f"{backend}: ping (agent round trip)", figures["ping"])
            line(f"{backend}: write_file + read_file of 1 MiB", figures["file"])
            print(f"{backend + ': idle memory (PSS, all host processes)':48} {statistics.mean(figures['pss']):8.1f} MiB per sandbox"
                  f" (4 idle side by side: {', '.join(f'{v:.1f}' for v in figures['pss'])})\n")
        summary(results, baselines)

        sandbox = Sandbox(manager, manager.open("embedded"))
        embedded = line("embedded: sandbox.exec('true') (shell form)", timed(lambda: sandbox.exec("true"), args.runs))
        worker_figures(args.runs, embedded)
    finally:
        manager.discard()


def summary(results: dict[str, dict[str, list[float]]], baselines: dict[str, float]) -> None:
    """The backends side by side (medians), and gVisor against its goals."""
    rows = [("cold start, ms", "cold"), ("cold start from the pool, ms", "pooled"), ("warm exec of true, ms", "warm"),
            ("ping, ms", "ping"), ("1 MiB write + read, ms", "file"), ("idle PSS per sandbox, MiB", "pss")]
    backends = list(results)
    print(f"{'':32}" + "".join(f"{b:>12}" for b in backends))
    for label, key in rows:
        values = [statistics.mean(results[b][key]) if key == "pss" else median(results[b][key]) for b in backends]
        print(f"{label:32}" + "".join(f"{v:12.1f}" for v in values))
    if "gvisor" in results:
        cold, warm = median(results["gvisor"]["cold"]), median(results["gvisor"]["warm"])
        floor = (baselines["gvisor floor"] + baselines["gvisor process"]) / baselines["gvisor"]
        print(f"\ngVisor cold start / runsc do true: {cold / baselines['gvisor']:.2f}x (goal <= 1.5x; the floor, runsc do "
              f"python3 with host networking plus one spawn + wait: {floor:.2f}x); warm exec median {warm:.1f} ms "
              f"(goal <= 10 ms; a bare spawn + wait inside runsc do: {baselines['gvisor process']:.1f} ms)\n")


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
        SandboxManager(Settings(state_dir=state)).discard()


if __name__ == "__main__":
    main()
