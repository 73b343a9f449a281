"""What a hostile or careless client can send, against ``flow serve`` on a real port:
oversized and over-numerous headers, keys in query strings, text that is not text and
times that have no UTC equivalent. Every answer is a 4xx (or the connection is closed
before the server reads further), never a 500 or a secret in the log."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from flow import localstack
from tests.api.conftest import bearer
from tests.served import ServedFlow


@pytest.fixture(scope="module")
def served(
    stack: localstack.StackInfo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedFlow]:
    log = tmp_path_factory.mktemp("served") / "flow.log"
    with ServedFlow(stack, log, FLOW_LOG_LEVEL="INFO") as flow:
        yield flow


def raw_request(port: int, head: bytes, timeout: float = 10.0) -> bytes:
    """Send ``head`` as it is and read what comes back until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as conn:
        try:
            conn.sendall(head)
        except OSError:
            pass  # the server closed before we finished: that is an answer too
        chunks = []
        try:
            while chunk := conn.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
    return b"".join(chunks)


def test_a_huge_header_is_refused_before_it_is_read(served: ServedFlow) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (4 * 1024 * 1024)
    answer = raw_request(served.port, head)
    assert answer.split(b"\r\n", 1)[0] in (b"HTTP/1.1 400 Bad Request", b"")
    assert b"200 OK" not in answer


def test_more_than_a_hundred_header_fields_is_431(served: ServedFlow) -> None:
    headers = {f"x-h{i}": "1" for i in range(101)}
    res = httpx.get(f"{served.url}/health", headers=headers, timeout=10)
    assert res.status_code == 431
    assert res.json()["error"] == "request_header_fields_too_large"
    assert httpx.get(f"{served.url}/health", headers=dict(list(headers.items())[:90])).is_success


async def test_a_key_in_the_query_string_is_refused_and_never_logged(
    served: ServedFlow, api_key: dict[str, Any]
) -> None:
    secret = api_key["plaintext"]
    async with httpx.AsyncClient(base_url=served.url, timeout=10) as client:
        for param in ("key", "api_key", "token", "access_token", "apikey"):
            res = await client.get(f"/api/usage?{param}={secret}&days=3")
            assert res.status_code == 401, res.text
            assert "Authorization" in res.json()["message"]
        ok = await client.get("/api/usage", headers=bearer(api_key))
        assert ok.status_code == 200
    log = served.log()
    assert "/api/usage?" in log, "the access log shows the requests"
    assert secret not in log
    assert "[redacted]" in log


@pytest.mark.parametrize(
    "metadata",
    [{"a": "\ud800"}, {"\udfff": 1}, {"a": ["ok", {"b": "x\udc00y"}]}],
    ids=["value", "key", "nested"],
)
def test_a_lone_surrogate_is_422(
    served: ServedFlow, api_key: dict[str, Any], metadata: dict[str, Any]
) -> None:
    import json

    body = json.dumps({"transport": "simulated", "script": ["hi"], "metadata": metadata})
    res = httpx.post(
        f"{served.url}/api/bot/join",
        content=body.encode(),
        headers={**bearer(api_key), "Content-Type": "application/json"},
        timeout=10,
    )
    assert res.status_code == 422, res.text
    assert res.json()["error"] == "validation_error"


@pytest.mark.parametrize(
    "query",
    [
        "start=0001-01-01T00:00:00%2B14:00&end=0001-01-02",
        "start=0001-01-01T00:00:00%2B01:00&end=0001-01-02",
        "end=0001-01-01T05:00:00",
        "start=9999-12-31T23:00:00-14:00&end=9999-12-31T23:59:59",
    ],
)
def test_times_without_a_utc_equivalent_are_422(
    served: ServedFlow, api_key: dict[str, Any], query: str
) -> None:
    res = httpx.get(f"{served.url}/api/usage?{query}", headers=bearer(api_key), timeout=10)
    assert res.status_code == 422, res.text


def test_every_answer_so_far_was_below_500(served: ServedFlow) -> None:
    # A reference the log keeps for each 5xx: none may appear.
    assert " 500 " not in served.log()
    assert "Traceback" not in served.log()


def test_an_unknown_call_is_404_not_500(served: ServedFlow, api_key: dict[str, Any]) -> None:
    res = httpx.get(f"{served.url}/api/bot/{uuid.uuid4()}", headers=bearer(api_key), timeout=10)
    assert res.status_code == 404
