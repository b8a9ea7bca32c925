"""Sessions: persistent shells in which cd, export and variables persist, one command at a time."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from isolate import IsolateError, Sandbox, ValidationError
from tests.conftest import unique_name


@pytest.fixture(scope="module")
def sandbox(manager) -> Sandbox:
    name = unique_name("sess")
    yield Sandbox(manager, manager.open(name))
    manager.destroy(name)


def test_cd_export_and_variables_persist_between_commands(sandbox):
    session = sandbox.create_session()
    session.exec("mkdir -p /tmp/here && cd /tmp/here && export GREETING=hi && COUNT=2")
    result = session.exec("pwd; echo $GREETING $COUNT")
    assert result.stdout == "/tmp/here\nhi 2\n" and result.exit_code == 0


def test_sessions_are_separate_shells_sharing_files(sandbox):
    first, second = sandbox.create_session(), sandbox.create_session()
    first.exec("cd /tmp && export ONLY_FIRST=1 && echo shared > /workspace/shared.txt")
    assert second.exec("pwd; echo ${ONLY_FIRST:-unset}; cat /workspace/shared.txt").stdout == "/workspace\nunset\nshared\n"
    assert first.id in sandbox.list_sessions() and second.id in sandbox.list_sessions()


def test_relative_paths_follow_the_shells_folder(sandbox):
    session = sandbox.create_session(cwd="/tmp")
    session.exec("mkdir -p sub && cd sub")
    session.write_file("note.txt", "x")
    assert sandbox.read_file("/tmp/sub/note.txt").content == "x"


def test_exit_terminates_the_session_and_the_next_command_gets_a_fresh_shell(sandbox):
    session = sandbox.create_session()
    session.exec("cd /tmp")
    with pytest.raises(IsolateError) as caught:
        session.exec("exit 3")
    assert caught.value.code == "SESSION_TERMINATED" and caught.value.http_status == 410
    assert session.exec("pwd").stdout == "/workspace\n"


def test_timeout_ends_the_command_and_the_session_stays_usable(sandbox):
    session = sandbox.create_session()
    session.exec("cd /tmp")
    started = time.monotonic()
    result = session.exec("sleep 30", timeout=1)
    assert result.reason == "timeout" and not result.success
    assert time.monotonic() - started < 10
    assert session.exec("pwd").stdout == "/tmp\n"


def test_a_builtin_loop_past_its_timeout_costs_the_shell_not_the_session(sandbox):
    session = sandbox.create_session()
    assert session.exec("while :; do :; done", timeout=1).reason == "timeout"
    assert session.exec("echo alive").stdout == "alive\n"


def test_syntax_errors_and_quotes_never_break_the_shell(sandbox):
    session = sandbox.create_session()
    broken = session.exec("echo 'unclosed")
    assert broken.exit_code == 2 and "unexpected EOF" in broken.stderr
    tricky = "printf '%s\\n' \"it's\" '$HOME' \"}\"; echo '\"; exit 9'"
    assert session.exec(tricky).stdout == "it's\n$HOME\n}\n\"; exit 9\n"
    assert session.exec("cat").stdout == ""  # stdin is /dev/null


def test_per_command_env_and_cwd_apply_to_that_command_only(sandbox):
    session = sandbox.create_session()
    assert session.exec("echo $ONE; pwd", env={"ONE": "1"}, cwd="/tmp").stdout == "1\n/tmp\n"
    assert session.exec("echo ${ONE:-unset}; pwd").stdout == "unset\n/workspace\n"


def test_commands_of_one_session_are_serialized_and_never_interleave(sandbox):
    session = sandbox.create_session()
    script = "for i in 1 2 3; do echo {n}-$i; sleep 0.05; done"
    with ThreadPoolExecutor(4) as pool:
        outputs = list(pool.map(lambda n: session.exec(script.format(n=n)).stdout, range(4)))
    assert outputs == ["".join(f"{n}-{i}\n" for i in (1, 2, 3)) for n in range(4)]


def test_streamed_session_command(sandbox):
    session = sandbox.create_session()
    stream = session.exec("echo a; echo b >&2; exit_code=5; (exit $exit_code)", stream=True)
    kinds = [event.type for event in stream]
    assert kinds[0] == "start" and kinds[-1] == "complete" and {"stdout", "stderr"} <= set(kinds)
    assert stream.result.exit_code == 5 and stream.result.stdout == "a\n"


def test_duplicate_missing_and_bad_session_ids(sandbox):
    session = sandbox.create_session("dup-session")
    with pytest.raises(IsolateError) as caught:
        sandbox.create_session("dup-session")
    assert caught.value.code == "SESSION_ALREADY_EXISTS"
    sandbox.delete_session(session.id)
    with pytest.raises(IsolateError) as caught:
        sandbox.delete_session(session.id)
    assert caught.value.code == "SESSION_NOT_FOUND"
    for bad in ("", "a b", "x" * 200, "../x"):
        with pytest.raises(ValidationError):
            sandbox.create_session(bad)


def test_deleting_a_session_ends_what_it_started(sandbox):
    session = sandbox.create_session()
    session.exec("sleep 77 &")
    sandbox.delete_session(session.id)
    assert "sleep 77" not in sandbox.exec("ps", ["-eo", "args"]).stdout
