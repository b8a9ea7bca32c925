"""The worker over HTTP: auth, validation, size caps, error shapes, OpenAPI, metrics and logs."""

from __future__ import annotations

import json

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import unique_name

ERROR_KEYS = {"code", "message", "context", "httpStatus", "timestamp"}


def test_requests_without_the_right_token_get_401_and_touch_nothing(worker):
    name = unique_name("auth")
    for headers in ({}, {"X-Isolate-Token": "wrong"}, {"Authorization": f"Bearer {worker.token}"}):
        response = httpx.post(f"{worker.url}/api/execute", json={"command": "touch /workspace/x"},
                              headers={"X-Sandbox-Id": name, **headers})
        assert response.status_code == 401 and response.json()["code"] == "UNAUTHORIZED"
    with worker.client(name) as client:
        assert client.post("/api/exists", json={"path": "/workspace/x"}).json()["exists"] is False
        client.delete("/api/sandbox")


def test_errors_have_cloudflares_shape(worker):
    with worker.client(unique_name("err")) as client:
        response = client.post("/api/read", json={"path": "/workspace/none"})
        body = response.json()
        assert response.status_code == 404 and set(body) >= ERROR_KEYS and body["code"] == "FILE_NOT_FOUND"
        assert body["httpStatus"] == 404 and body["message"] == "File not found: /workspace/none"
        client.delete("/api/sandbox")


def test_the_sandbox_header_is_required_and_checked(worker):
    with worker.client() as client:
        assert client.post("/api/exists", json={"path": "/"}).json()["code"] == "VALIDATION_FAILED"
        bad = client.post("/api/exists", json={"path": "/"}, headers={"X-Sandbox-Id": "Not_Valid"})
        assert bad.status_code == 400 and bad.json()["code"] == "INVALID_NAME"


def test_one_worker_holds_many_separate_sandboxes(worker):
    first, second = unique_name("many"), unique_name("many")
    with worker.client(first) as one, worker.client(second) as two:
        one.post("/api/write", json={"path": "/workspace/mine", "content": "first"})
        assert two.post("/api/exists", json={"path": "/workspace/mine"}).json()["exists"] is False
        assert one.post("/api/read", json={"path": "/workspace/mine"}).json()["content"] == "first"
        one.delete("/api/sandbox")
        two.delete("/api/sandbox")


def test_bodies_over_the_cap_get_413(worker):
    with worker.client(unique_name("big")) as client:
        response = client.post("/api/write", content=b'{"path":"/workspace/big","content":"' + b"x" * (65 << 20) + b'"}',
                               headers={"Content-Type": "application/json"})
        assert response.status_code == 413 and response.json()["code"] == "FILE_TOO_LARGE"


def test_openapi_describes_the_routes(worker):
    with worker.client() as client:
        spec = client.get("/openapi.json").json()
    for route in ("/api/execute", "/api/execute/stream", "/api/read/stream", "/api/process/{process_id}/stream", "/api/git/checkout"):
        assert route in spec["paths"]


def test_metrics_count_requests_sandboxes_and_exec_outcomes(worker):
    name = unique_name("met")
    with worker.client(name) as client:
        client.post("/api/execute", json={"command": "true"})
        client.post("/api/execute", json={"command": "sleep 5", "timeoutMs": 200})
        text = client.get("/metrics").text
        client.delete("/api/sandbox")
    assert 'isolate_http_requests_total{method="POST",route="/api/execute",status="200"}' in text
    assert 'isolate_exec_total{outcome="timeout"}' in text and 'isolate_exec_total{outcome="exited"}' in text
    assert 'isolate_sandboxes{state="running"}' in text
    assert "isolate_http_request_duration_seconds_bucket" in text


def test_one_log_line_per_request_without_contents(worker):
    name = unique_name("log")
    with worker.client(name) as client:
        client.post("/api/write", json={"path": "/workspace/secret", "content": "do-not-log-this-content"})
        client.post("/api/execute", json={"command": "echo do-not-log-this-output"})
        client.delete("/api/sandbox")
    log = worker.log.read_text()
    assert "do-not-log-this" not in log
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    mine = [line for line in lines if line.get("sandbox") == name]
    assert {(line["route"], line["status"]) for line in mine} >= {("/api/write", 200), ("/api/execute", 200)}
    assert all(isinstance(line["duration_ms"], float) for line in mine)


JSON_VALUES = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
                           max_leaves=12)
ROUTES = ["/api/execute", "/api/read", "/api/write", "/api/delete", "/api/rename", "/api/move", "/api/mkdir", "/api/list-files",
          "/api/exists", "/api/git/checkout", "/api/process/start", "/api/session/create", "/api/session/delete", "/api/read/stream"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(route=st.sampled_from(ROUTES), body=st.one_of(JSON_VALUES, st.binary(max_size=64)))
def test_malformed_bodies_are_400_never_500(worker, route, body):
    """Whatever arrives, the answer is a well-formed error or a success; never an internal error."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    with worker.client("fuzz") as client:
        response = client.post(route, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code < 500 or response.json()["code"] not in ("INTERNAL_ERROR",), response.text
    if response.status_code >= 400:
        assert set(response.json()) >= ERROR_KEYS
