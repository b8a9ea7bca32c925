"""Framing spoken between the host and the agent inside a sandbox.

A frame is an 8-byte header (JSON length, payload length), a JSON object, then raw
bytes. Raw payloads keep file contents and command output out of JSON, so a 1 MiB
file costs one copy, not a base64 round trip.

This file is also sent, as source, into every sandbox, where start-up time is the cold
start users wait for: it uses the C halves of `json` (`_json`) and no other import, so
the agent starts without loading `re`, `enum` or `json`'s Python layers. Keep it
standard-library only and runnable on older Pythons.
"""

import _json

MAX_JSON_BYTES = 1 << 20
HEADER_BYTES = 8


class ProtocolError(Exception):
    """The peer sent something that is not a well-formed frame."""


class _ScannerContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo = None

    @staticmethod
    def parse_constant(name):
        raise ProtocolError("non-finite number in frame: %s" % name)


_scan = _json.make_scanner(_ScannerContext())
_quote = _json.encode_basestring_ascii


def dumps(value):
    """JSON text of plain data (dict, list, str, int, float, bool, None)."""
    if isinstance(value, str):
        return _quote(value)
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return int.__repr__(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError("non-finite float")
        return float.__repr__(value)
    if isinstance(value, dict):
        return "{" + ",".join(_quote(str(k)) + ":" + dumps(v) for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in value) + "]"
    raise TypeError("cannot encode %s" % type(value).__name__)


def loads(data):
    """Parse one JSON object; anything malformed is a ProtocolError, never another exception."""
    try:
        text = data.decode("utf-8")
        value, end = _scan(text, 0)
    except (StopIteration, UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError("malformed JSON in frame: %r" % (exc,)) from None
    if text[end:].strip() or not isinstance(value, dict):
        raise ProtocolError("frame is not one JSON object")
    return value


def encode_frame(message, payload=b""):
    body = dumps(message).encode("utf-8", "surrogatepass")
    return len(body).to_bytes(4, "big") + len(payload).to_bytes(4, "big") + body + payload


def _read_exact(read, size):
    chunks = []
    while size:
        chunk = read(size)
        if not chunk:
            raise EOFError("connection closed mid-frame")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def decode_frame(read, max_payload):
    """Read one frame with `read(n)`; never allocates more than the caps allow."""
    head = read(HEADER_BYTES)
    if not head:
        raise EOFError("connection closed")
    if len(head) < HEADER_BYTES:
        head += _read_exact(read, HEADER_BYTES - len(head))
    json_len = int.from_bytes(head[:4], "big")
    payload_len = int.from_bytes(head[4:], "big")
    if json_len > MAX_JSON_BYTES or payload_len > max_payload:
        raise ProtocolError("frame too large (%d, %d)" % (json_len, payload_len))
    message = loads(_read_exact(read, json_len))
    payload = _read_exact(read, payload_len) if payload_len else b""
    return message, payload
