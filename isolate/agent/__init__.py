"""The in-sandbox agent (server.py, protocol.py) and the host's client for it (client.py)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).parent
AGENT_PYTHON = "/usr/bin/python3"


@lru_cache(maxsize=1)
def agent_source() -> str:
    """protocol.py then server.py as one program, without server.py's host-only import."""
    server = "\n".join(line for line in (HERE / "server.py").read_text().splitlines() if not line.endswith("# host-only"))
    return (HERE / "protocol.py").read_text() + "\n" + server + "\n"


SOURCE_VARIABLE = "ISOLATE_AGENT_SOURCE"
# The source travels in an environment variable (nothing to mount, and `ps` inside stays readable);
# the agent removes it from the environment its commands inherit.
BOOTSTRAP = f"import os;exec(compile(os.environ.pop({SOURCE_VARIABLE!r}),'isolate-agent','exec'))"


def agent_argv(door_fd: int, idle_timeout: float) -> list[str]:
    """The agent's command line: isolated mode, no site packages."""
    return [AGENT_PYTHON, "-I", "-S", "-c", BOOTSTRAP, str(door_fd), str(idle_timeout)]


def agent_environment() -> dict[str, str]:
    return {SOURCE_VARIABLE: agent_source()}
