"""The file API: every call resolves inside the sandbox and fails with a stable code."""

from __future__ import annotations

import base64

import pytest

from isolate import FileSystemError, ValidationError


def test_write_then_read_text(sandbox):
    assert sandbox.write_file("/workspace/app.py", "print(1)\n") == "/workspace/app.py"
    result = sandbox.read_file("/workspace/app.py")
    assert result.content == "print(1)\n"
    assert (result.encoding, result.is_binary, result.size) == ("utf-8", False, 9)
    assert result.mime_type == "text/x-python"
    assert sandbox.exec("python3", ["/workspace/app.py"]).stdout == "1\n"


def test_binary_round_trip_as_base64_and_bytes(sandbox):
    data = bytes(range(256)) * 64
    sandbox.write_file("blob.bin", data)
    auto = sandbox.read_file("blob.bin")
    assert auto.is_binary and auto.encoding == "base64"
    assert base64.b64decode(auto.content) == data
    raw = sandbox.read_file("blob.bin", encoding="bytes")
    assert raw.content == data and raw.data == data
    sandbox.write_file("b64.bin", base64.b64encode(b"\x00\x01").decode(), encoding="base64")
    assert sandbox.read_file("b64.bin", encoding="bytes").content == b"\x00\x01"


def test_write_creates_parent_folders(sandbox):
    sandbox.write_file("deep/er/file.txt", "x")
    assert sandbox.exists("/workspace/deep/er")
    assert sandbox.read_file("/workspace/deep/er/file.txt").content == "x"


def test_overwrite_keeps_mode(sandbox):
    sandbox.write_file("run.sh", "#!/bin/sh\necho one\n")
    sandbox.exec("chmod", ["755", "run.sh"])
    sandbox.write_file("run.sh", "#!/bin/sh\necho two\n")
    assert sandbox.exec("./run.sh", []).stdout == "two\n"


def test_relative_paths_resolve_against_the_working_directory(sandbox):
    sandbox.write_file("rel.txt", "r")
    assert sandbox.exec("cat", ["/workspace/rel.txt"]).stdout == "r"
    sandbox.write_file("../../../../etc-ish", "clamped")  # '..' cannot climb above '/'
    assert sandbox.exec("cat", ["/etc-ish"]).stdout == "clamped"


def test_mkdir_plain_and_recursive(sandbox):
    sandbox.mkdir("/workspace/a/b", recursive=True)
    assert sandbox.exists("/workspace/a/b")
    with pytest.raises(FileSystemError) as caught:
        sandbox.mkdir("/workspace/a")
    assert caught.value.code == "FILE_EXISTS"
    with pytest.raises(FileSystemError) as caught:
        sandbox.mkdir("/workspace/x/y")
    assert caught.value.code == "FILE_NOT_FOUND"


def test_rename_move_delete(sandbox):
    sandbox.write_file("/workspace/app.py", "1")
    sandbox.mkdir("/workspace/a/b", recursive=True)
    assert sandbox.rename_file("/workspace/app.py", "/workspace/main.py") == "/workspace/main.py"
    assert sandbox.move_file("/workspace/main.py", "/workspace/a/b") == "/workspace/a/b/main.py"
    assert sandbox.read_file("/workspace/a/b/main.py").content == "1"
    sandbox.delete_file("/workspace/a/b/main.py")
    assert not sandbox.exists("/workspace/a/b/main.py")


def test_delete_of_a_folder_is_refused_and_keeps_it(sandbox):
    sandbox.write_file("keep/inner.txt", "k")
    with pytest.raises(FileSystemError) as caught:
        sandbox.delete_file("keep")
    assert caught.value.code == "IS_DIRECTORY" and caught.value.http_status == 400
    assert sandbox.read_file("keep/inner.txt").content == "k"


@pytest.mark.parametrize("operation", ["delete", "rename", "move", "read"])
def test_missing_paths_are_file_not_found(sandbox, operation):
    calls = {
        "delete": lambda: sandbox.delete_file("nope"),
        "rename": lambda: sandbox.rename_file("nope", "other"),
        "move": lambda: sandbox.move_file("nope", "other"),
        "read": lambda: sandbox.read_file("nope"),
    }
    with pytest.raises(FileSystemError) as caught:
        calls[operation]()
    assert caught.value.code == "FILE_NOT_FOUND" and caught.value.http_status == 404
    assert "File not found: /workspace/nope" in caught.value.message


def test_read_of_a_folder_is_is_directory(sandbox):
    with pytest.raises(FileSystemError) as caught:
        sandbox.read_file("/workspace")
    assert caught.value.code == "IS_DIRECTORY"


def test_list_files(sandbox):
    sandbox.write_file("l/one.txt", "1")
    sandbox.write_file("l/.hidden", "h")
    sandbox.write_file("l/sub/two.txt", "22")
    sandbox.exec("ln", ["-s", "one.txt", "/workspace/l/link"])
    flat = {e.name: e for e in sandbox.list_files("l")}
    assert set(flat) == {"one.txt", "sub", "link"}
    assert flat["one.txt"].type == "file" and flat["one.txt"].size == 1
    assert flat["sub"].type == "directory" and flat["link"].type == "symlink"
    assert flat["one.txt"].readable and flat["one.txt"].writable and not flat["one.txt"].executable
    deep = {e.relative_path for e in sandbox.list_files("l", recursive=True, include_hidden=True)}
    assert deep == {"one.txt", ".hidden", "sub", "sub/two.txt", "link"}
    with pytest.raises(FileSystemError) as caught:
        sandbox.list_files("l/one.txt")
    assert caught.value.code == "NOT_DIRECTORY"
    with pytest.raises(FileSystemError) as caught:
        sandbox.list_files("missing")
    assert caught.value.code == "FILE_NOT_FOUND"


def test_exists_on_missing_is_false_not_an_error(sandbox):
    assert sandbox.exists("/workspace") is True
    assert sandbox.exists("/workspace/none") is False


def test_files_written_by_commands_are_visible_to_the_api_and_back(sandbox):
    sandbox.exec("echo from-shell > /workspace/s.txt")
    assert sandbox.read_file("s.txt").content == "from-shell\n"
    sandbox.write_file("api.txt", "from-api")
    assert sandbox.exec("cat api.txt").stdout == "from-api"


def test_special_files_are_refused_without_hanging(sandbox):
    sandbox.exec("mkfifo", ["/workspace/fifo"])
    for path in ("/workspace/fifo", "/dev/zero", "/dev/urandom"):
        with pytest.raises(FileSystemError) as caught:
            sandbox.read_file(path)
        assert caught.value.code == "FILESYSTEM_ERROR"
    with pytest.raises(FileSystemError):
        sandbox.write_file("/workspace/fifo", "x")


def test_read_over_the_cap_is_file_too_large(sandbox):
    sandbox.exec("truncate", ["-s", "40M", "/workspace/sparse"])
    with pytest.raises(FileSystemError) as caught:
        sandbox.read_file("/workspace/sparse")
    assert caught.value.code == "FILE_TOO_LARGE" and caught.value.http_status == 413


@pytest.mark.parametrize("path", ["", "a\x00b", "x" * 5000])
def test_bad_paths_are_validation_errors(sandbox, path):
    with pytest.raises(ValidationError) as caught:
        sandbox.read_file(path)
    assert caught.value.code == "VALIDATION_FAILED"
    assert sandbox.ping() == "pong"


def test_over_long_name_is_name_too_long(sandbox):
    with pytest.raises(FileSystemError) as caught:
        sandbox.write_file("n" * 300, "x")
    assert caught.value.code == "NAME_TOO_LONG"


def test_read_only_places_report_their_code(sandbox):
    with pytest.raises(FileSystemError) as caught:
        sandbox.write_file("/usr/bin/evil", "x")
    assert caught.value.code in ("READ_ONLY", "PERMISSION_DENIED")
