"""The in-sandbox agent (server.py, protocol.py) and the host's client for it (client.py)."""

from __future__ import annotations

import marshal
import sys
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
CODE_VARIABLE = "ISOLATE_AGENT_CODE"
CODE_PART_CHARS = 120_000  # one environment string may not pass 128 KiB (MAX_ARG_STRLEN): the bytecode travels in parts
# The agent travels in environment variables (nothing to mount, and `ps` inside stays readable),
# which it removes from the environment its commands inherit. Compiling its source costs ~7 ms
# of every cold start, so it also travels as bytecode, used when the sandbox's Python has the
# same version as this one (the host image's does) and the source otherwise.
BOOTSTRAP = (
    "import os,sys,marshal;e=os.environ;"
    f"c=''.join(e.pop({CODE_VARIABLE!r}+str(i)) for i in range(int(e.pop({CODE_VARIABLE!r}+'_PARTS'))));"
    f"s=e.pop({SOURCE_VARIABLE!r});"
    f"exec(marshal.loads(bytes.fromhex(c)) if sys.version_info[:2]=={tuple(sys.version_info[:2])!r} "
    "else compile(s,'isolate-agent','exec'))"
)


def agent_argv(listen_fd: int, idle_timeout: float) -> list[str]:
    """The agent's command line: isolated mode, no site packages."""
    return [AGENT_PYTHON, "-I", "-S", "-c", BOOTSTRAP, str(listen_fd), str(idle_timeout)]


@lru_cache(maxsize=1)
def agent_environment() -> dict[str, str]:
    source = agent_source()
    code = marshal.dumps(compile(source, "isolate-agent", "exec")).hex()
    parts = [code[i:i + CODE_PART_CHARS] for i in range(0, len(code), CODE_PART_CHARS)]
    return {SOURCE_VARIABLE: source, CODE_VARIABLE + "_PARTS": str(len(parts)), **{f"{CODE_VARIABLE}{i}": p for i, p in enumerate(parts)}}
