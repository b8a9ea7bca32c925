"""The worker as a service: readiness, graceful stop, restart after SIGKILL, the systemd unit."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from isolate import SandboxManager, Settings
from isolate.worker.server import Listen, parse_listen
from tests.conftest import unique_name
from tests.workers import Worker

UNIT = Path(__file__).parent.parent / "scripts" / "isolate-worker.service"


def test_listen_addresses_and_which_are_local():
    assert parse_listen("127.0.0.1:8080") == Listen(host="127.0.0.1", port=8080)
    assert parse_listen("[::1]:9") == Listen(host="::1", port=9)
    assert parse_listen("unix:/run/isolate/w.sock").unix == "/run/isolate/w.sock"
    assert [parse_listen(a).is_local for a in ("127.0.0.2:1", "localhost:1", "[::1]:1", "0.0.0.0:1", "10.1.2.3:1")] == [
        True, True, True, False, False]
    for bad in ("8080", "host:", "host:99999", "unix:relative"):
        with pytest.raises(Exception):  # noqa: B017 - any IsolateError subclass
            parse_listen(bad)


def test_without_a_token_the_worker_refuses_to_listen_beyond_loopback(worker_state_dir):
    env = {k: v for k, v in os.environ.items() if k != "ISOLATE_TOKEN"}
    run = subprocess.run([sys.executable, "-m", "isolate.cli", "serve", "--listen", "0.0.0.0:1"], capture_output=True, text=True,
                         timeout=60, env={**env, "ISOLATE_STATE_DIR": str(worker_state_dir)}, cwd=Path(__file__).parent.parent)
    assert run.returncode == 2 and "token" in run.stderr


def test_sigterm_finishes_in_flight_requests_then_stops_sandboxes_keeping_files(worker_state_dir, backend):
    worker = Worker(worker_state_dir, backend=backend).start()
    name = unique_name("term")
    manager = SandboxManager(Settings(state_dir=worker_state_dir))
    try:
        with worker.client(name) as client:
            client.post("/api/write", json={"path": "/workspace/kept", "content": "kept"}).raise_for_status()
            answer: dict = {}
            slow = threading.Thread(target=lambda: answer.update(client.post("/api/execute", json={"command": "sleep 2; echo done"}).json()))
            slow.start()
            time.sleep(0.7)
            assert worker.signal(signal.SIGTERM) == 0
            slow.join()
        assert answer.get("stdout") == "done\n"
        worker.wait_for("STOPPING=1", 5)  # sent as the stop began (the datagram waits in the socket)
        assert not manager.is_running(name) and manager.cgroup(manager.load(name)).pids() == []  # cgroups are named by uid
        assert (worker_state_dir / "sandboxes" / name / "meta.json").is_file()
    finally:
        worker.stop()
    again = Worker(worker_state_dir, backend=backend).start()
    try:
        with again.client(name) as client:
            assert client.post("/api/read", json={"path": "/workspace/kept"}).json()["content"] == "kept"
            client.delete("/api/sandbox")
    finally:
        again.stop()


def test_after_sigkill_a_new_worker_serves_the_same_sandboxes_and_nothing_of_the_old_run_remains(worker_state_dir, backend):
    worker = Worker(worker_state_dir, backend=backend).start()
    name = unique_name("kill")
    manager = SandboxManager(Settings(state_dir=worker_state_dir))
    try:
        with worker.client(name) as client:
            client.post("/api/write", json={"path": "/workspace/kept", "content": "survives"}).raise_for_status()
            client.post("/api/process/start", json={"command": "sleep 300", "processId": "orphan"}).raise_for_status()
        worker.signal(signal.SIGKILL)
        assert manager.is_running(name)  # jails are detached: the killed worker's jail is still there
    finally:
        worker.stop()
    again = Worker(worker_state_dir, backend=backend).start()  # start-up stops the old run's jails and cleans leftovers
    try:
        assert manager.clean_leftovers() == []
        with again.client(name) as client:
            assert client.post("/api/read", json={"path": "/workspace/kept"}).json()["content"] == "survives"
            assert "sleep 300" not in client.post("/api/execute", json={"command": "ps -eo args"}).json()["stdout"]
            assert client.get("/api/process/orphan").status_code == 404
            client.delete("/api/sandbox")
    finally:
        again.stop()
    assert manager.clean_leftovers() == []


def test_the_worker_listens_on_a_unix_socket(worker_state_dir, tmp_path, backend):
    path = Path("/run/isolate-test-" + unique_name() + ".sock")
    worker = Worker(worker_state_dir, extra=("--listen", f"unix:{path}"), backend=backend)
    try:
        worker.start()
        transport = httpx.HTTPTransport(uds=str(path))
        with httpx.Client(transport=transport, base_url="http://worker", headers=worker.headers()) as client:
            assert client.get("/api/ping").json()["message"] == "pong"
    finally:
        worker.stop()
    assert not path.exists()


def test_the_systemd_unit_verifies():
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (scripts/install.sh installs systemd)")
    run = subprocess.run(["systemd-analyze", "verify", str(UNIT)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (run.stdout + run.stderr).splitlines() if UNIT.name in line or "isolate" in line]
    assert run.returncode == 0 and not problems, run.stdout + run.stderr
    text = UNIT.read_text()
    for directive in ("Type=notify", "Restart=on-failure", "NotifyAccess=main", "KillMode=", "TimeoutStopSec="):
        assert directive in text
