"""isolate.client: the embedded Sandbox API, served by a worker; the same calls give the same answers."""

from __future__ import annotations

import asyncio

import pytest

from isolate import AsyncSandbox, IsolateError, Sandbox, SandboxManager, Settings
from isolate.client import get_sandbox
from tests.conftest import unique_name


@pytest.fixture(scope="module")
def pair(worker, worker_state_dir):
    """The same sandbox twice: through a worker, and embedded on the worker's state folder."""
    name = unique_name("cli")
    remote = get_sandbox(name, url=worker.url, token=worker.token)
    remote.ping()
    manager = SandboxManager(Settings(state_dir=worker_state_dir))
    yield remote, Sandbox(manager, manager.open(name))
    remote.destroy()


def test_exec_results_match_the_embedded_api(pair):
    remote, local = pair
    for command, args in (("echo $HOME; echo err >&2; exit 3", None), ("printf", ["%s|", "a b", "$X"]), ("no-such-command", [])):
        a, b = remote.exec(command, args), local.exec(command, args)
        assert (a.stdout, a.stderr, a.exit_code, a.reason, a.success) == (b.stdout, b.stderr, b.exit_code, b.reason, b.success)
    assert remote.exec("tr a-z A-Z", stdin="hi").stdout == "HI"


def test_a_timeout_is_a_result_with_reason_timeout_as_embedded(pair):
    remote, _ = pair
    result = remote.exec("sleep 30", timeout=0.5)
    assert result.reason == "timeout" and not result.success


def test_streams_and_files_round_trip(pair):
    remote, local = pair
    stream = remote.exec("echo a; echo b >&2; (exit 4)", stream=True)
    kinds = [event.type for event in stream]
    assert kinds[0] == "start" and kinds[-1] == "complete" and stream.result.exit_code == 4 and stream.result.stdout == "a\n"
    remote.write_file("/workspace/bin", bytes(range(256)))
    assert local.read_file("/workspace/bin", encoding="bytes").content == bytes(range(256))
    assert remote.read_file("/workspace/bin", encoding="bytes").content == bytes(range(256))
    remote.mkdir("/workspace/d/e", recursive=True)
    remote.rename_file("/workspace/bin", "/workspace/d/bin2")
    assert [e.relative_path for e in remote.list_files("/workspace/d", recursive=True)] == [
        e.relative_path for e in local.list_files("/workspace/d", recursive=True)]
    with pytest.raises(IsolateError) as caught:
        remote.delete_file("/workspace/d")
    assert caught.value.code == "IS_DIRECTORY"


def test_sessions_and_processes(pair):
    remote, _ = pair
    session = remote.create_session()
    session.exec("cd /tmp && export K=v")
    assert session.exec("pwd; echo $K").stdout == "/tmp\nv\n"
    assert session.id in remote.list_sessions()
    remote.start_process("echo one; sleep 0.3; echo two", process_id="remote-p")
    events = list(remote.stream_process_logs("remote-p"))
    assert "".join(e.data for e in events if e.type == "stdout") == "one\ntwo\n"
    assert events[-1].type == "exit" and events[-1].process.status == "completed"
    assert remote.get_process_logs("remote-p").stdout == "one\ntwo\n"
    with pytest.raises(IsolateError) as caught:
        remote.kill_process("missing")
    assert caught.value.code == "PROCESS_NOT_FOUND"


def test_the_async_wrapper_works_over_http_too(pair):
    remote, _ = pair

    async def main() -> list[str]:
        sandbox = AsyncSandbox(remote)  # type: ignore[arg-type]
        kinds = [event.type async for event in await sandbox.exec("echo hi", stream=True)]
        results = await asyncio.gather(*(sandbox.exec("echo", [str(i)]) for i in range(5)))
        return kinds + [r.stdout for r in results]

    assert asyncio.run(main()) == ["start", "stdout", "complete", *[f"{i}\n" for i in range(5)]]
