"""Property tests where inputs vary without end: names, paths, protocol frames."""

from __future__ import annotations

import contextlib
import io
import posixpath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from isolate import FileSystemError, InvalidNameError, ValidationError
from isolate.agent.protocol import ProtocolError, decode_frame, encode_frame
from isolate.validation import NAME_PATTERN, check_name, resolve_path

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(st.text(max_size=80))
def test_a_name_is_accepted_exactly_when_it_follows_cloudflares_rule(name):
    valid = 1 <= len(name) <= 63 and set(name) <= set("abcdefghijklmnopqrstuvwxyz0123456789-") and name[0] != "-" and name[-1] != "-"
    if valid:
        assert check_name(name) == name
    else:
        with pytest.raises(InvalidNameError):
            check_name(name)


@given(st.from_regex(NAME_PATTERN, fullmatch=True))
def test_every_generated_valid_name_passes(name):
    assert check_name(name) == name


@given(st.text(min_size=1, max_size=300).filter(lambda p: "\x00" not in p))
def test_resolved_paths_are_absolute_normal_and_never_climb_out(path):
    try:
        resolved = resolve_path(path, "/workspace")
    except (ValidationError, FileSystemError) as exc:
        assert exc.code in ("VALIDATION_FAILED", "NAME_TOO_LONG")
        return
    assert resolved.startswith("/") and not resolved.startswith("//")
    assert posixpath.normpath(resolved) == resolved
    assert ".." not in resolved.split("/")


@given(st.dictionaries(st.text(max_size=10), json_values, max_size=6), st.binary(max_size=2000))
def test_frames_round_trip(message, payload):
    frame = encode_frame(message, payload)
    assert decode_frame(io.BytesIO(frame).read, 1 << 20) == (message, payload)


@given(st.binary(max_size=300))
def test_garbage_frames_fail_cleanly(data):
    stream = io.BytesIO(data)
    with contextlib.suppress(ProtocolError, EOFError):
        decode_frame(stream.read, 1 << 16)


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))
def test_oversized_frames_are_refused_before_allocation(json_len, payload_len):
    header = json_len.to_bytes(4, "big") + payload_len.to_bytes(4, "big")
    with pytest.raises((ProtocolError, EOFError)):
        decode_frame(io.BytesIO(header).read, 1 << 16)


path_parts = st.text(alphabet=st.characters(blacklist_characters="/\x00", blacklist_categories=("Cs",)), min_size=1, max_size=20)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(path_parts, min_size=1, max_size=4), content=st.binary(max_size=4096))
def test_any_written_path_reads_back_and_stays_inside(sandbox, state_dir, parts, content):
    sandbox.ping()  # started, so the state folder holds all it will hold
    before = sorted(p.name for p in state_dir.iterdir())
    path = "/workspace/p/" + "/".join(parts)
    try:
        written = sandbox.write_file(path, content)
    except FileSystemError as exc:
        assert exc.code in ("FILE_EXISTS", "NOT_DIRECTORY", "IS_DIRECTORY", "NAME_TOO_LONG", "FILESYSTEM_ERROR")
        return
    assert sandbox.read_file(written, encoding="bytes").content == content
    assert sorted(p.name for p in state_dir.iterdir()) == before
