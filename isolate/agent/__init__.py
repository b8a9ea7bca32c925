"""The in-sandbox agent (server.py, protocol.py) and the host's client for it (client.py)."""

from __future__ import annotations

import marshal
import os
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


# Where the agent's code comes from a descriptor instead (gVisor: the environment is part of the
# OCI spec, which runsc parses in three processes; 260 KB of it cost ~35 ms of every cold start).
# The descriptor holds marshal((python version, bytecode, source)), read once and closed.
BOOTSTRAP_FROM_FD = (
    "import os,sys,marshal;"
    "v,c,s=marshal.loads(b''.join(iter(lambda:os.read({fd},1<<20),b'')));os.close({fd});"
    "exec(marshal.loads(c) if sys.version_info[:2]==v else compile(s,'isolate-agent','exec'))"
)


def agent_argv(door_fd: int, idle_timeout: float, code_fd: int | None = None) -> list[str]:
    """The agent's command line: isolated mode, no site packages; its code in the environment
    (`agent_environment`) or, with `code_fd`, on that descriptor (`agent_code_file`)."""
    bootstrap = BOOTSTRAP if code_fd is None else BOOTSTRAP_FROM_FD.format(fd=code_fd)
    return [AGENT_PYTHON, "-I", "-S", "-c", bootstrap, str(door_fd), str(idle_timeout)]


@lru_cache(maxsize=1)
def _agent_code() -> bytes:
    return marshal.dumps(compile(agent_source(), "isolate-agent", "exec"))


@lru_cache(maxsize=1)
def agent_environment() -> dict[str, str]:
    code = _agent_code().hex()
    parts = [code[i:i + CODE_PART_CHARS] for i in range(0, len(code), CODE_PART_CHARS)]
    return {SOURCE_VARIABLE: agent_source(), CODE_VARIABLE + "_PARTS": str(len(parts)),
            **{f"{CODE_VARIABLE}{i}": p for i, p in enumerate(parts)}}


def agent_code_file() -> int:
    """A memory file holding the agent's code for BOOTSTRAP_FROM_FD (the caller closes it)."""
    fd = os.memfd_create("isolate-agent", os.MFD_CLOEXEC)
    payload = marshal.dumps((tuple(sys.version_info[:2]), _agent_code(), agent_source()))
    view = memoryview(payload)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
