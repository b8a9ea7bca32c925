"""The pure rules behind networking and git_checkout: policies, address slots, URLs and branch names.

No sandbox here; inputs vary without end, so hypothesis checks properties beside the examples.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from isolate import IsolateError, ValidationError
from isolate.errors import GitError
from isolate.git import ProgressReader, check_branch, classify, parse_url
from isolate.net import nft
from isolate.net.policy import AllowEntry, Destination, NetworkPolicy, never_reachable
from isolate.net.pool import AddressPool, Slot, check_pool
from tests.nethost import RemoteHost

SCHEMES = ("https", "http", "git", "ssh")


# --- policies ---

@pytest.mark.parametrize(("value", "mode", "allow"), [
    (None, "none", []), ("none", "none", []), ("open", "open", []), ({"allow": []}, "allowlist", []),
    ({"allow": ["Example.COM.", "example.com:443", "10.0.0.0/8", "1.2.3.4:53", "192.168.1.7/24:8080"]}, "allowlist",
     ["example.com", "example.com:443", "10.0.0.0/8", "1.2.3.4:53", "192.168.1.0/24:8080"]),
    ({"mode": "allowlist", "allow": ["a.b"]}, "allowlist", ["a.b"]), ({"mode": "open"}, "open", []),
])
def test_policies_parse_to_a_canonical_form(value, mode, allow):
    policy = NetworkPolicy.parse(value)
    assert policy.mode == mode and [str(entry) for entry in policy.allow] == allow
    assert NetworkPolicy.parse(policy.to_dict()) == policy


@pytest.mark.parametrize("value", [
    "closed", 1, ["a"], {"allow": "a.com"}, {"deny": []}, {"allow": ["a.com:0"]}, {"allow": ["a.com:65536"]}, {"allow": ["a.com:x"]},
    {"allow": ["::1"]}, {"allow": ["[2001:db8::1]:443"]}, {"allow": ["fe80::/10"]}, {"allow": ["-a.com"]}, {"allow": ["a..com"]},
    {"allow": ["a b"]}, {"allow": [""]}, {"allow": [None]}, {"allow": ["127.0.0.1"]}, {"allow": ["169.254.169.254:80"]},
    {"allow": ["169.254.0.0/16"]}, {"allow": ["224.0.0.1"]}, {"allow": ["100.100.100.200"]}, {"allow": ["1.2.3"]}, {"allow": ["300.1.1.1"]},
    {"allow": ["a.com"] * 257}, {"mode": "none", "allow": []},
])
def test_bad_policies_are_validation_errors(value):
    with pytest.raises(ValidationError):
        NetworkPolicy.parse(value)


def test_resolution_keeps_only_reachable_addresses_of_listed_names():
    names = {"good.test": ["198.18.0.2", "198.18.0.3"], "rebind.test": ["169.254.169.254", "127.0.0.1", "198.18.0.9"]}
    resolved = NetworkPolicy.parse({"allow": ["good.test:443", "rebind.test", "10.1.0.0/16"]}).resolve(lambda n: names.get(n, []))
    assert {(str(d.network), d.port) for d in resolved.destinations} == {
        ("198.18.0.2/32", 443), ("198.18.0.3/32", 443), ("198.18.0.9/32", None), ("10.1.0.0/16", None)}
    assert ("169.254.169.254", "rebind.test") not in resolved.hosts
    assert resolved.allows("good.test", 443) and not resolved.allows("good.test", 80)
    assert resolved.allows("rebind.test", 80) and resolved.allows("10.1.2.3", 22)
    assert not resolved.allows("unlisted.test", 443) and not resolved.allows("169.254.169.254", 80)
    assert NetworkPolicy.parse("open").resolve(lambda n: []).allows("anything.test", 1)
    assert not NetworkPolicy.parse("open").resolve(lambda n: []).allows("127.0.0.1", 1)


host_names = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]([a-z0-9-]{0,10}[a-z0-9])?){0,3}", fullmatch=True)


@given(host=host_names, port=st.none() | st.integers(1, 65535))
def test_any_host_entry_round_trips(host, port):
    text = host if port is None else f"{host}:{port}"
    if host.replace(".", "").isdigit():
        return  # all-digit names read as (bad) addresses
    entry = AllowEntry.parse(text)
    assert (entry.host, entry.port) == (host, port) and str(entry) == text


@given(network=st.ip_addresses(v=4).flatmap(lambda a: st.integers(0, 32).map(lambda p: ipaddress.IPv4Network((a, p), strict=False))),
       port=st.none() | st.integers(1, 65535))
def test_any_ipv4_entry_is_accepted_unless_wholly_unreachable(network, port):
    text = str(network) if port is None else f"{network}:{port}"
    if never_reachable(network):
        with pytest.raises(ValidationError):
            AllowEntry.parse(text)
    else:
        entry = AllowEntry.parse(text)
        assert (entry.network, entry.port) == (network, port)


@given(st.text(max_size=80))
def test_arbitrary_entries_fail_with_a_validation_error_or_round_trip(text):
    try:
        entry = AllowEntry.parse(text)
    except ValidationError:
        return
    assert AllowEntry.parse(str(entry)) == entry


# --- address slots ---

def test_slots_carve_the_pool_into_30s_with_a_loopback_mirror():
    pool = check_pool("10.213.0.0/16")
    slot = Slot(pool, 5)
    assert (str(slot.subnet), slot.host_address, slot.sandbox_address, slot.expose_address) == (
        "10.213.0.20/30", "10.213.0.21", "10.213.0.22", "127.128.0.22")
    assert Slot(pool, 16383).expose_address == "127.128.255.254"
    for bad in ("10.0.0.0/8x", "8.8.8.0/24", "10.0.0.0/30", "10.0.0.0/8".replace("8", "7"), "127.0.0.0/16", "169.254.0.0/16"):
        with pytest.raises(ValidationError):
            check_pool(bad)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a test namespace (a route to collide with) needs root")
def test_claims_skip_what_the_host_routes_stick_to_their_sandbox_and_run_out_cleanly(tmp_path):
    host = RemoteHost()  # its /29 is routed on the host: two of the four /30s of the /28 around it
    try:
        routed = ipaddress.IPv4Network(f"{host.gateway}/29", strict=False)
        pool = AddressPool(str(routed.supernet(new_prefix=28)), tmp_path)
        first, second = pool.claim("a"), pool.claim("b")
        assert not first.subnet.overlaps(routed) and not second.subnet.overlaps(routed) and first != second
        assert pool.claim("a") == first  # sticky
        with pytest.raises(IsolateError) as caught:
            pool.claim("c")
        assert caught.value.code == "RESOURCE_BUSY"
        pool.release(["a"])
        assert pool.recorded("a") is None and pool.claim("c") == first
    finally:
        host.close()


# --- git URLs and branches ---

@pytest.mark.parametrize(("url", "host", "port", "name"), [
    ("https://github.com/owner/repo.git", "github.com", 443, "repo"), ("http://git.test:8080/a/b/", "git.test", 8080, "b"),
    ("git://198.18.0.2/demo.git", "198.18.0.2", 9418, "demo"), ("ssh://git@Host.Example/x/y.git", "host.example", 22, "y"),
    ("https://user:token@git.test/r", "git.test", 443, "r"),
])
def test_good_urls_give_host_port_and_repository_name(url, host, port, name):
    source = parse_url(url, SCHEMES)
    assert (source.host, source.port, source.name) == (host, port, name)
    assert "token" not in source.display


def test_schemes_are_configurable():
    with pytest.raises(GitError):
        parse_url("http://git.test/a.git", ("https",))
    assert parse_url("https://git.test/a.git", ("https",)).scheme == "https"


@given(st.text(max_size=200))
@settings(max_examples=300)
def test_any_url_is_refused_or_has_an_allowed_scheme_and_a_host(text):
    try:
        source = parse_url(text, SCHEMES)
    except GitError as exc:
        assert exc.code == "INVALID_GIT_URL"
        return
    assert source.url == text and not text.startswith("-")
    assert text.split("://", 1)[0].lower() in SCHEMES and source.host and not source.host.startswith("-")
    assert source.name not in ("", ".", "..") and not source.name.startswith("-")


@given(st.text(max_size=60))
def test_urls_starting_with_a_dash_are_always_refused(text):
    with pytest.raises(GitError):
        parse_url("-" + text, SCHEMES)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=30))
@settings(max_examples=200, deadline=None)
def test_accepted_branch_names_are_ones_git_accepts_and_never_options(branch):
    try:
        check_branch(branch)
    except ValidationError:
        return
    assert not branch.startswith("-")
    assert subprocess.run(["git", "check-ref-format", "--branch", branch], capture_output=True).returncode == 0


@pytest.mark.parametrize(("stderr", "code"), [
    ("fatal: remote error: access denied or repository not exported: /x.git", "GIT_REPOSITORY_NOT_FOUND"),
    ("remote: Repository not found.\nfatal: repository 'https://h/x/' not found", "GIT_REPOSITORY_NOT_FOUND"),
    ("fatal: Remote branch nope not found in upstream origin", "GIT_BRANCH_NOT_FOUND"),
    ("fatal: could not read Username for 'https://h': terminal prompts disabled", "GIT_AUTH_FAILED"),
    ("git@h: Permission denied (publickey).", "GIT_AUTH_FAILED"),
    ("fatal: unable to access 'https://h/x/': Could not resolve host: h", "GIT_NETWORK_ERROR"),
    ("fatal: unable to connect to h:\nh[0: 1.2.3.4]: errno=Connection refused", "GIT_NETWORK_ERROR"),
    ("fatal: destination path 'x' already exists and is not an empty directory.", "FILE_EXISTS"),
    ("fatal: index-pack failed", "GIT_CLONE_FAILED"),
])
def test_git_messages_map_to_the_api_codes(stderr, code):
    assert classify(stderr) == code


def test_progress_lines_split_across_chunks_are_read_whole():
    reader = ProgressReader()
    events = reader.feed("Receiving objects:  4") + reader.feed("5% (45/100)\rReceiving objects: 100% (100/100), done.\nResol")
    events += reader.feed("ving deltas: 100% (3/3)", final=True)
    assert [(e.phase, e.percent) for e in events] == [("Receiving objects", 45), ("Receiving objects", 100), ("Resolving deltas", 100)]


# --- the firewall's elements, against the real kernel ---

networks_and_ports = st.lists(
    st.tuples(st.ip_addresses(v=4).flatmap(lambda a: st.integers(8, 32).map(lambda p: ipaddress.IPv4Network((a, p), strict=False))),
              st.none() | st.integers(1, 65535)),
    max_size=8)


@pytest.mark.skipif(os.geteuid() != 0 or not nft.available(), reason="needs root and libnftables (apt-get install nftables)")
@given(destinations=networks_and_ports, ports=st.lists(st.integers(1, 65535), max_size=4), mode=st.sampled_from(["allowlist", "open", "none"]))
@settings(max_examples=25, deadline=None)
def test_any_policy_is_written_whole_and_removed_whole(destinations, ports, mode):
    table = f"isolate-rules-test-{os.getpid()}"
    nft.run(nft.skeleton(table, check_pool("10.213.0.0/16")))
    try:
        wanted = [Destination(network, port) for network, port in destinations]
        nft.apply_sandbox(table, "ivrulestest", mode, wanted, "127.128.0.2", "10.213.0.2", ports)
        nft.apply_sandbox(table, "ivother", "open", [], "127.128.0.6", "10.213.0.6", [80])  # a neighbour, untouched below
        expected = nft.sandbox_elements("ivrulestest", mode, wanted, "127.128.0.2", "10.213.0.2", ports)
        listed = nft.listed_elements(table, "ivrulestest")
        assert sorted(listed) == sorted((name, element.split(" : ")[0]) for name, element in expected)
        nft.apply_sandbox(table, "ivrulestest", "none", [], "127.128.0.2", "10.213.0.2", [])  # narrowing drops the rest
        assert nft.listed_elements(table, "ivrulestest") == [("ifaces", '"ivrulestest"')]
        assert nft.remove_sandbox(table, "ivrulestest") and nft.listed_elements(table, "ivrulestest") == []
        assert nft.sandbox_interfaces(table) == ["ivother"]
    finally:
        nft.delete_table(table)
