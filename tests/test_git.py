"""git_checkout: git runs inside the sandbox, against a real git server in a namespace the test made.

`git.test` is that server (tests/nethost.py: `git_server`).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from isolate import FileSystemError, IsolateError, Sandbox, SandboxManager
from isolate.errors import GitError
from isolate.net import nft
from tests.conftest import unique_name
from tests.nethost import TEST_NAMES, RemoteHost, git_server


@pytest.fixture(scope="module")
def server(manager: SandboxManager) -> Iterator[RemoteHost]:
    if not nft.available():
        pytest.skip("nftables (libnftables) is not installed: apt-get install nftables")
    with git_server() as host:
        TEST_NAMES["git.test"] = [host.address]
        try:
            yield host
        finally:
            TEST_NAMES.pop("git.test", None)


@pytest.fixture(scope="module")
def cloner(manager: SandboxManager, server: RemoteHost) -> Iterator[Sandbox]:
    """One sandbox allowed to reach git.test on any port, shared by the module (each test clones elsewhere)."""
    name = unique_name("git")
    yield Sandbox(manager, manager.open(name, network={"allow": ["git.test"]}))
    manager.destroy(name)


def test_clone_into_workspace_repo_name_with_the_default_branch(cloner):
    result = cloner.git_checkout("git://git.test/demo.git")
    assert (result.target_dir, result.branch, result.repo_url) == ("/workspace/demo", "main", "git://git.test/demo.git")
    assert cloner.read_file("/workspace/demo/README").content == "main two\n"
    assert cloner.exec("git -C /workspace/demo rev-list --count HEAD").stdout.strip() == "2"
    with pytest.raises(FileSystemError) as caught:
        cloner.git_checkout("git://git.test/demo.git")
    assert caught.value.code == "FILE_EXISTS"
    assert cloner.read_file("/workspace/demo/README").content == "main two\n"  # untouched


def test_clone_a_branch_shallow_with_streamed_progress(cloner):
    stream = cloner.git_checkout("git://git.test/demo.git", branch="feature", depth=1, target_dir="shallow", stream=True)
    events = list(stream)
    assert events[-1].type == "complete" and stream.result is not None
    assert {"Receiving objects"} <= {event.phase for event in events}
    assert any(event.percent == 100 for event in events)
    assert (stream.result.branch, stream.result.target_dir) == ("feature", "/workspace/shallow")
    assert cloner.read_file("/workspace/shallow/feature.txt").content == "feature\n"
    assert cloner.exec("git -C /workspace/shallow rev-list --count HEAD").stdout.strip() == "1"


def test_clone_over_http(cloner):
    result = cloner.git_checkout("http://git.test:8400/demo.git", target_dir="/workspace/over-http")
    assert cloner.read_file(f"{result.target_dir}/README").content == "main two\n"


def test_an_empty_existing_folder_is_a_fine_target(cloner):
    cloner.mkdir("/workspace/empty")
    assert cloner.git_checkout("git://git.test/demo.git", target_dir="/workspace/empty").target_dir == "/workspace/empty"
    assert cloner.exists("/workspace/empty/README")


@pytest.mark.parametrize(("url", "options", "code"), [
    ("git://git.test/missing.git", {}, "GIT_REPOSITORY_NOT_FOUND"),
    ("http://git.test:8400/missing.git", {}, "GIT_REPOSITORY_NOT_FOUND"),
    ("git://git.test/demo.git", {"branch": "no-such-branch"}, "GIT_BRANCH_NOT_FOUND"),
    ("http://git.test:8400/private/demo.git", {}, "GIT_AUTH_FAILED"),
    ("git://git.test:9419/demo.git", {}, "GIT_NETWORK_ERROR"),  # nothing listens there
    ("git://git.test:8402/demo.git", {"timeout": 2}, "GIT_NETWORK_ERROR"),  # accepts, never answers
])
def test_failures_have_the_api_codes_and_leave_no_folder(cloner, url, options, code):
    target = f"/workspace/{unique_name('fail')}"
    with pytest.raises(GitError) as caught:
        cloner.git_checkout(url, target_dir=target, **options)
    assert caught.value.code == code, caught.value.message
    assert caught.value.http_status in (401, 404, 502)
    assert not cloner.exists(target)


def test_a_sandbox_without_egress_to_the_host_is_told_what_it_needs(make_sandbox, server):
    for network in ("none", {"allow": [f"{server.other_address}"]}, {"allow": ["git.test:443"]}):
        sandbox = make_sandbox(network=network)
        with pytest.raises(GitError) as caught:
            sandbox.git_checkout("git://git.test/demo.git")
        assert caught.value.code == "GIT_NETWORK_ERROR"
        assert "needs egress to the repository's host" in caught.value.message and "git.test:9418" in caught.value.message
        assert not sandbox.exists("/workspace/demo")


def test_git_config_hooks_and_templates_of_the_sandbox_are_ignored(cloner):
    hooks = "/root/templates/hooks"
    cloner.write_file(f"{hooks}/post-checkout", "#!/bin/sh\ntouch /tmp/hook-ran\n")
    cloner.exec("chmod", ["+x", f"{hooks}/post-checkout"])
    cloner.write_file("/root/.gitconfig", "\n".join([
        "[init]", "\ttemplateDir = /root/templates",
        "[core]", f"\thooksPath = {hooks}", "\tfsmonitor = /root/templates/hooks/post-checkout",
        '[url "git://nowhere.invalid/"]', "\tinsteadOf = git://git.test/",
    ]) + "\n")
    try:
        result = cloner.git_checkout("git://git.test/demo.git", target_dir="/workspace/hardened")
        assert cloner.exists(f"{result.target_dir}/README")  # the insteadOf redirect was not followed
        assert not cloner.exists("/tmp/hook-ran")
        assert not cloner.exists(f"{result.target_dir}/.git/hooks/post-checkout")
    finally:
        cloner.delete_file("/root/.gitconfig")


def test_submodules_only_when_asked(cloner):
    plain = cloner.git_checkout("git://git.test/super.git", target_dir="/workspace/super-plain")
    assert cloner.list_files(f"{plain.target_dir}/sub") == []
    deep = cloner.git_checkout("git://git.test/super.git", target_dir="/workspace/super-deep", submodules=True)
    assert cloner.read_file(f"{deep.target_dir}/sub/inside.txt").content == "from the submodule\n"


@pytest.mark.parametrize("url", [
    "ext::sh -c touch% /tmp/pwned", "ext::sh", "file:///etc", "/etc", "../repo", "-uhttps://x/y", "--upload-pack=touch /tmp/p",
    "git@git.test:demo.git", "https::git.test/demo", "ftp://git.test/demo.git", "git://", "git:///demo.git", "git://-oProxy=x/demo.git",
    "https://git.test/", "https://[::1]/demo.git", "https://git.test/demo.git\n", "fd::git://git.test/demo.git",
])
def test_unsafe_or_malformed_urls_are_refused_before_anything_runs(cloner, url):
    with pytest.raises(GitError) as caught:
        cloner.git_checkout(url)
    assert caught.value.code == "INVALID_GIT_URL"
    assert caught.value.http_status == 400


@pytest.mark.parametrize(("options", "code"), [
    ({"branch": "-c"}, "VALIDATION_FAILED"), ({"branch": "--upload-pack=x"}, "VALIDATION_FAILED"), ({"branch": "a..b"}, "VALIDATION_FAILED"),
    ({"depth": 0}, "VALIDATION_FAILED"), ({"depth": -1}, "VALIDATION_FAILED"), ({"depth": True}, "VALIDATION_FAILED"),
    ({"depth": "1"}, "VALIDATION_FAILED"), ({"target_dir": "a\x00b"}, "VALIDATION_FAILED"),
])
def test_bad_branch_depth_and_target_are_validation_errors(cloner, options, code):
    with pytest.raises(IsolateError) as caught:
        cloner.git_checkout("git://git.test/demo.git", **options)
    assert caught.value.code == code


def test_cli_git_clones_with_progress(manager, state_dir, server):
    from tests.test_lifecycle import cli

    name = unique_name("cli")
    try:
        # a CLI process resolves names with the host's resolver: use the server's address, so no query leaves the machine
        refused = cli(state_dir, "git", name, f"git://{server.address}/demo.git")
        assert refused.returncode == 125 and "GIT_NETWORK_ERROR" in refused.stderr  # network none
        assert cli(state_dir, "network", name, "--allow", f"{server.address}:9418").returncode == 0
        result = cli(state_dir, "git", name, f"git://{server.address}/demo.git", "--branch", "feature", "--depth", "1")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "/workspace/demo (feature)"
        assert "Receiving objects" in result.stderr
    finally:
        manager.destroy(name)


def test_the_worker_clones_into_workspace_and_streams_progress(worker, server):
    from isolate.client import get_sandbox as remote_sandbox

    remote = remote_sandbox(unique_name("wk"), url=worker.url, token=worker.token)
    url = f"git://{server.address}/demo.git"  # by address: the worker resolves names with the host's own resolver
    try:
        with pytest.raises(GitError) as caught:
            remote.git_checkout(url)
        assert caught.value.code == "GIT_NETWORK_ERROR" and "needs egress" in caught.value.message
        assert remote.set_network({"allow": [f"{server.address}:9418"]}).mode == "allowlist"
        result = remote.git_checkout(url)
        assert (result.target_dir, result.branch) == ("/workspace/demo", "main")
        assert remote.read_file("/workspace/demo/README").content == "main two\n"
        stream = remote.git_checkout(url, branch="feature", depth=1, target_dir="/workspace/feature", stream=True)
        phases = {event.phase for event in stream}
        assert "Receiving objects" in phases and stream.result is not None and stream.result.branch == "feature"
        with pytest.raises(GitError) as caught:
            list(remote.git_checkout(f"git://{server.address}/missing.git", stream=True))
        assert caught.value.code == "GIT_REPOSITORY_NOT_FOUND"
    finally:
        remote.destroy()
