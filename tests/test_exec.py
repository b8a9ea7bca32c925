"""exec: buffered and streamed, argv and shell forms, exit reasons, limits."""

from __future__ import annotations

import time

import pytest

from isolate import ExecResult, ValidationError


def test_argv_form_runs_without_a_shell(sandbox):
    result = sandbox.exec("echo", ["$HOME", "a b"])
    assert result.stdout == "$HOME a b\n"
    assert result.exit_code == 0 and result.success and result.reason == "exited"


def test_shell_string_runs_under_sh(sandbox):
    result = sandbox.exec("echo $HOME; exit 3")
    assert result.stdout == "/root\n"
    assert result.exit_code == 3 and not result.success


def test_result_carries_what_it_ran_and_used(sandbox):
    result = sandbox.exec("python3", ["-c", "x = bytearray(30 << 20); print(len(x))"])
    assert isinstance(result, ExecResult)
    assert result.command == "python3" and result.args[0] == "-c"
    assert result.usage.memory_peak >= 30 << 20
    assert result.usage.cpu_time > 0 and result.usage.wall_time > 0
    assert result.timestamp.endswith("Z") and result.duration >= result.usage.wall_time * 0.5


def test_missing_command_is_exit_127_not_an_error(sandbox):
    result = sandbox.exec("no-such-command", [])
    assert result.exit_code == 127
    assert "command not found" in result.stderr
    shell = sandbox.exec("no-such-command")
    assert shell.exit_code == 127 and "not found" in shell.stderr


def test_stdin_is_dev_null_unless_given(sandbox):
    started = time.monotonic()
    assert sandbox.exec("cat", []).stdout == ""
    assert time.monotonic() - started < 5
    assert sandbox.exec("tr", ["a-z", "A-Z"], stdin="hello").stdout == "HELLO"
    big = b"x" * (1 << 20)
    assert sandbox.exec("wc", ["-c"], stdin=big).stdout.strip() == str(len(big))


def test_env_and_cwd(sandbox):
    sandbox.mkdir("/workspace/sub")
    result = sandbox.exec("echo $GREETING; pwd", env={"GREETING": "hi"}, cwd="sub")
    assert result.stdout == "hi\n/workspace/sub\n"


def test_host_environment_never_reaches_the_sandbox(sandbox, monkeypatch):
    monkeypatch.setenv("ISOLATE_HOST_SECRET", "s3cr3t-host-value")
    result = sandbox.exec("env; cat /proc/1/environ | tr '\\0' '\\n'")
    assert "s3cr3t-host-value" not in result.stdout
    assert "ISOLATE_AGENT" not in sandbox.exec("env").stdout


def test_missing_cwd_is_a_file_not_found_error(sandbox):
    with pytest.raises(Exception) as caught:
        sandbox.exec("true", [], cwd="/nope")
    assert getattr(caught.value, "code", None) == "FILE_NOT_FOUND"
    assert sandbox.exec("true", []).success


def test_timeout_ends_with_reason_timeout_within_two_seconds(sandbox):
    started = time.monotonic()
    result = sandbox.exec("sleep", ["100"], timeout=1)
    assert result.reason == "timeout"
    assert not result.success
    assert time.monotonic() - started < 2.0
    assert sandbox.exec("echo", ["alive"]).stdout == "alive\n"


def test_signal_is_reported(sandbox):
    result = sandbox.exec("kill -TERM $$")
    assert result.reason == "signaled" and result.signal == 15 and result.exit_code == 143


def test_output_over_the_limit_is_cut_and_flagged(make_sandbox):
    from isolate import Limits

    sandbox = make_sandbox(limits=Limits(output_bytes=100_000))
    result = sandbox.exec("yes")
    assert result.reason == "output_limit" and result.truncated
    assert len(result.stdout) == 100_000


def test_streamed_exec_delivers_chunks_as_they_happen(sandbox):
    arrivals = {}
    started = time.monotonic()
    stream = sandbox.exec("echo a; sleep 2; echo b", stream=True)
    types = []
    for event in stream:
        types.append(event.type)
        if event.type == "stdout":
            arrivals[event.data.strip()] = time.monotonic() - started
    assert types[0] == "start" and types[-1] == "complete"
    assert arrivals["b"] - arrivals["a"] >= 1.5
    assert arrivals["a"] < 1.0
    assert stream.result is not None and stream.result.stdout == "a\nb\n" and stream.result.exit_code == 0


def test_stream_and_buffered_results_agree(sandbox):
    script = "echo out; echo err >&2; exit 4"
    buffered = sandbox.exec(script)
    stream = sandbox.exec(script, stream=True)
    events = list(stream)
    assert [e.data for e in events if e.type == "stderr"] == ["err\n"]
    assert (stream.result.stdout, stream.result.stderr, stream.result.exit_code) == (buffered.stdout, buffered.stderr, 4)


def test_abandoned_stream_kills_its_command(sandbox):
    stream = sandbox.exec("echo started; sleep 30; echo never", stream=True)
    for event in stream:
        if event.type == "stdout":
            break
    stream.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if "sleep 30" not in sandbox.exec("ps", ["-eo", "args"]).stdout:
            break
        time.sleep(0.1)
    assert "sleep 30" not in sandbox.exec("ps", ["-eo", "args"]).stdout


def test_background_daemon_does_not_hold_exec_open(sandbox):
    started = time.monotonic()
    result = sandbox.exec("sleep 30 & echo done")
    assert result.stdout == "done\n"
    assert time.monotonic() - started < 3


def test_concurrent_execs_in_one_sandbox(sandbox):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: sandbox.exec("echo", [str(i)]).stdout, range(32)))
    assert results == [f"{i}\n" for i in range(32)]


@pytest.mark.parametrize(
    ("command", "args", "options"),
    [
        ("", None, {}),
        ("ls", ["a\x00b"], {}),
        ("ls", None, {"timeout": -1}),
        ("ls", None, {"env": {"A=B": "c"}}),
        ("ls\x00", None, {}),
    ],
)
def test_bad_exec_input_is_a_validation_error(sandbox, command, args, options):
    with pytest.raises(ValidationError) as caught:
        sandbox.exec(command, args, **options)
    assert caught.value.code == "VALIDATION_FAILED"
    assert sandbox.exec("true", []).success
