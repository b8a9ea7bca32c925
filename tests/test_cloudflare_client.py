"""Cloudflare's own client (@cloudflare/sandbox from npm) drives a running worker through every route."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import unique_name
from tests.nethost import git_server

FOLDER = Path(__file__).parent / "cloudflare"


def test_the_real_cloudflare_client_passes_the_checklist(worker):
    if shutil.which("node") is None:
        pytest.skip("node is not installed (scripts/install.sh installs it)")
    if not (FOLDER / "node_modules" / "@cloudflare" / "sandbox").is_dir():
        pytest.skip("@cloudflare/sandbox is not installed in tests/cloudflare (scripts/install.sh runs npm install there)")
    name = unique_name("cf")
    with git_server() as host:
        # the sandbox may reach the git server (by address: the worker resolves names with the host's resolver)
        with worker.client(name) as client:
            client.put("/api/sandbox/network", json={"network": {"allow": [f"{host.address}:9418"]}}).raise_for_status()
        env = {**os.environ, "ISOLATE_URL": worker.url, "ISOLATE_TOKEN": worker.token, "SANDBOX_ID": name,
               "GIT_BASE": f"git://{host.address}"}
        run = subprocess.run(["node", "--import", "./register.mjs", "drive.mjs"], cwd=FOLDER, env=env, capture_output=True, text=True,
                             timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.rstrip().endswith(" passed, 0 failed")
    with worker.client(name) as client:
        client.delete("/api/sandbox")
