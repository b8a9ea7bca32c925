#!/usr/bin/env python3
"""Soak: many sandboxes used at once over HTTP (exec, streamed exec, write, read) against one worker.

Not part of the test run. Prints errors, requests, the worker's RSS at the start and the
end, and what is left behind (sandbox processes, cgroups, threads, file descriptors).
Only loopback is used; the run is bounded by --seconds.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from isolate import SandboxManager, Settings, cgroups
from tests.workers import Worker


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def counts(pid: int) -> tuple[int, int]:
    return len(os.listdir(f"/proc/{pid}/task")), len(os.listdir(f"/proc/{pid}/fd"))


def one_user(url: str, name: str, deadline: float, tally: dict[str, int], errors: list[str], lock: threading.Lock) -> None:
    rng = random.Random(name)
    with httpx.Client(base_url=url, headers={"X-Sandbox-Id": name}, timeout=120) as client:
        while time.monotonic() < deadline:
            kind = rng.choice(("exec", "stream", "write", "read"))
            try:
                if kind == "exec":
                    body = client.post("/api/execute", json={"command": "echo $((6*7))"}).json()
                    ok = body.get("stdout") == "42\n"
                elif kind == "stream":
                    with client.stream("POST", "/api/execute/stream", json={"command": "for i in 1 2 3; do echo $i; done"}) as response:
                        text = "".join(response.iter_text())
                    ok = '"type":"complete"' in text and '"data":"1\\n' in text
                elif kind == "write":
                    body = client.post("/api/write", json={"path": "/workspace/soak.txt", "content": name * 100}).json()
                    ok = body.get("success") is True
                else:
                    body = client.post("/api/read", json={"path": "/workspace/soak.txt"}).json()
                    ok = body.get("content") == name * 100 or body.get("code") == "FILE_NOT_FOUND"
            except httpx.HTTPError as exc:
                ok, body = False, {"error": repr(exc)}
            with lock:
                tally[kind] = tally.get(kind, 0) + 1
                if not ok:
                    errors.append(f"{name} {kind}: {str(body)[:200]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sandboxes", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="isolate-soak-", dir="/var/tmp"))
    state.chmod(0o711)
    worker = Worker(state, token=None)
    manager = SandboxManager(Settings(state_dir=state))
    url = worker.url
    names = [f"soak-{i:03d}" for i in range(args.sandboxes)]
    try:
        worker.start()
        pid = worker.process.pid  # type: ignore[union-attr]
        started = time.monotonic()
        with httpx.Client(base_url=url, timeout=120) as client:  # create and start every sandbox first
            for name in names:
                client.post("/api/execute", json={"command": "true"}, headers={"X-Sandbox-Id": name}).raise_for_status()
        print(f"{len(names)} sandboxes started in {time.monotonic() - started:.1f} s")
        rss_start, (threads_start, fds_start) = rss_mib(pid), counts(pid)
        tally: dict[str, int] = {}
        errors: list[str] = []
        lock = threading.Lock()
        deadline = time.monotonic() + args.seconds
        users = [threading.Thread(target=one_user, args=(url, name, deadline, tally, errors, lock)) for name in names]
        for user in users:
            user.start()
        samples = []
        while any(user.is_alive() for user in users):
            samples.append(rss_mib(pid))
            time.sleep(5)
        for user in users:
            user.join()
        rss_end, (threads_end, fds_end) = rss_mib(pid), counts(pid)
        total = sum(tally.values())
        print(f"requests: {total} in {args.seconds:.0f} s ({total / args.seconds:.0f}/s): {tally}")
        print(f"errors: {len(errors)}")
        for error in errors[:10]:
            print("  " + error)
        print(f"worker RSS: start {rss_start:.1f} MiB, end {rss_end:.1f} MiB, samples {[round(s) for s in samples]}")
        print(f"worker threads: {threads_start} -> {threads_end}; open fds: {fds_start} -> {fds_end}")
        processes = {name: len(manager.cgroup(manager.load(name)).pids()) for name in names}
        print(f"processes per sandbox after the run (agent + its shells): max {max(processes.values())}")
    finally:
        worker.stop()  # SIGTERM, as systemd would
        code = worker.process.returncode if worker.process is not None else None
        running = [n for n in manager.names() if manager.is_running(n)]
        print(f"worker exit status after SIGTERM: {code}; sandboxes still running: {len(running)}")
        for name in manager.names():
            manager.destroy(name)
        left = cgroups.list_sandbox_cgroups(manager.settings.instance)
        manager.discard()
        print(f"cgroups left after destroy: {len(left)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
