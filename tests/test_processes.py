"""Background processes: started, listed, logged, streamed and killed with their whole tree."""

from __future__ import annotations

import time

import pytest

from isolate import IsolateError, Sandbox
from tests.conftest import unique_name


@pytest.fixture(scope="module")
def sandbox(manager) -> Sandbox:
    name = unique_name("proc")
    yield Sandbox(manager, manager.open(name))
    manager.destroy(name)


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_process_runs_in_the_background_and_its_logs_are_kept(sandbox):
    started = time.monotonic()
    process = sandbox.start_process("echo out; echo err >&2; sleep 0.5; exit 3", process_id="logs-1")
    assert time.monotonic() - started < 3 and process.status == "running" and process.pid > 0
    wait_for(lambda: sandbox.get_process("logs-1").status == "failed")
    info = sandbox.get_process("logs-1")
    assert info.exit_code == 3 and info.end_time >= info.start_time
    logs = sandbox.get_process_logs("logs-1")
    assert (logs.stdout, logs.stderr) == ("out\n", "err\n")


def test_stream_replays_earlier_output_then_follows_until_exit(sandbox):
    sandbox.start_process("echo early; sleep 1; echo late", process_id="stream-1")
    time.sleep(0.5)
    events = list(sandbox.stream_process_logs("stream-1"))
    assert [e.data for e in events if e.type == "stdout"] == ["early\n", "late\n"]
    assert events[-1].type == "exit" and events[-1].process.status == "completed" and events[-1].process.exit_code == 0


def test_background_processes_never_block_foreground_commands(sandbox):
    sandbox.start_process("sleep 30", process_id="blocker")
    started = time.monotonic()
    assert sandbox.exec("echo quick").stdout == "quick\n"
    assert sandbox.create_session().exec("echo quick").stdout == "quick\n"
    assert time.monotonic() - started < 5
    sandbox.kill_process("blocker")


def test_kill_ends_the_whole_tree_three_levels_deep(sandbox):
    sandbox.start_process("sh -c 'sh -c \"sleep 301 & sleep 302\" & sleep 303' ; sleep 304", process_id="tree")
    wait_for(lambda: "sleep 302" in sandbox.exec("ps", ["-eo", "args"]).stdout)
    info = sandbox.kill_process("tree")
    assert info.status == "killed"
    assert not any(f"sleep 30{i}" in sandbox.exec("ps", ["-eo", "args"]).stdout for i in range(1, 5))


def test_a_process_ignoring_sigterm_is_killed_after_the_grace_period(sandbox):
    sandbox.start_process("trap '' TERM; echo ready; while :; do sleep 0.1; done", process_id="stubborn")
    wait_for(lambda: "ready" in sandbox.get_process_logs("stubborn").stdout)
    started = time.monotonic()
    assert sandbox.kill_process("stubborn").status == "killed"
    assert 4 < time.monotonic() - started < 15


def test_kill_all_and_list_by_status(sandbox):
    for index in range(3):
        sandbox.start_process("sleep 60", process_id=f"many-{index}")
    assert {p.id for p in sandbox.list_processes("running")} >= {"many-0", "many-1", "many-2"}
    assert sandbox.kill_all_processes() >= 3
    assert sandbox.list_processes("running") == []
    assert {"many-0", "many-1", "many-2"} <= {p.id for p in sandbox.list_processes("killed")}


def test_unknown_process_and_duplicate_running_id(sandbox):
    for call in (sandbox.kill_process, sandbox.get_process, sandbox.get_process_logs):
        with pytest.raises(IsolateError) as caught:
            call("no-such-process")
        assert caught.value.code == "PROCESS_NOT_FOUND" and caught.value.http_status == 404
    sandbox.start_process("sleep 30", process_id="twice")
    with pytest.raises(IsolateError) as caught:
        sandbox.start_process("sleep 30", process_id="twice")
    assert caught.value.code == "RESOURCE_BUSY"
    sandbox.kill_process("twice")


def test_process_timeout_kills_it(sandbox):
    sandbox.start_process("sleep 60", process_id="timed", timeout=1)
    wait_for(lambda: sandbox.get_process("timed").status == "killed")


def test_logs_are_bounded_to_the_latest_output(sandbox):
    sandbox.start_process("head -c 3000000 /dev/zero | tr '\\0' 'x'; echo; echo tail-marker", process_id="noisy")
    wait_for(lambda: sandbox.get_process("noisy").status == "completed")
    logs = sandbox.get_process_logs("noisy")
    assert logs.stdout.endswith("tail-marker\n") and len(logs.stdout) <= (1 << 20) + 65536


def test_a_session_starts_processes_in_its_current_folder(sandbox):
    session = sandbox.create_session()
    session.exec("cd /tmp")
    session.start_process("pwd", process_id="where")
    wait_for(lambda: sandbox.get_process("where").status == "completed")
    assert sandbox.get_process_logs("where").stdout == "/tmp\n"
