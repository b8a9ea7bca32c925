"""The in-sandbox agent (server.py, protocol.py) and the host's client for it (client.py)."""

from __future__ import annotations

import marshal
import os
import sys
from functools import lru_cache
from pathlib import Path

from ..syscalls import write_all

HERE = Path(__file__).parent
AGENT_PYTHON = "/usr/bin/python3"


@lru_cache(maxsize=1)
def agent_source() -> str:
    """protocol.py then server.py as one program, without server.py's host-only import."""
    server = "\n".join(line for line in (HERE / "server.py").read_text().splitlines() if not line.endswith("# host-only"))
    return (HERE / "protocol.py").read_text() + "\n" + server + "\n"


# The agent's code comes in on a descriptor (a memory file: nothing to mount, nothing in the
# environment its commands inherit, and `ps` inside stays readable). It holds
# marshal((python version, bytecode, source)), read once and closed: compiling the source costs
# ~7 ms of a cold start, so the bytecode is used when the sandbox's Python has this one's
# version (the host image's does), the source otherwise. (Through the environment, 270 KB of it
# cost ~35 ms of every gVisor start, parsed by three runsc processes, and ~1 ms under nsjail.)
BOOTSTRAP = (
    "import os,sys,marshal;"
    "v,c,s=marshal.loads(b''.join(iter(lambda:os.read({fd},1<<20),b'')));os.close({fd});"
    "exec(marshal.loads(c) if sys.version_info[:2]==v else compile(s,'isolate-agent','exec'))"
)


def agent_argv(door_fd: int, idle_timeout: float, code_fd: int) -> list[str]:
    """The agent's command line: isolated mode, no site packages; its code on `code_fd` (`agent_code_file`)."""
    return [AGENT_PYTHON, "-I", "-S", "-c", BOOTSTRAP.format(fd=code_fd), str(door_fd), str(idle_timeout)]


@lru_cache(maxsize=1)
def _agent_code() -> bytes:
    return marshal.dumps(compile(agent_source(), "isolate-agent", "exec"))


def agent_code_file() -> int:
    """A memory file holding the agent's code for BOOTSTRAP (the caller closes it)."""
    fd = os.memfd_create("isolate-agent", os.MFD_CLOEXEC)
    write_all(fd, marshal.dumps((tuple(sys.version_info[:2]), _agent_code(), agent_source())))
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
