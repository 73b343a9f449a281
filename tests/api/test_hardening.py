"""What a hostile or careless client can send, against ``flow serve`` on a real port:
oversized and over-numerous headers (on WebSocket handshakes too), keys in query
strings, text that is not text and times that have no UTC equivalent. Every answer is a
4xx (or the connection is closed before the server reads further), never a 500 or a
secret in the log."""

from __future__ import annotations

import contextlib
import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.protocol import State

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


def peak_memory_bytes(pid: int) -> int:
    """The process's peak resident memory (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_a_64_mb_header_is_refused_before_it_is_read_and_the_server_stays_up(
    served: ServedFlow,
) -> None:
    """The header is streamed a chunk at a time (the test never holds 64 MB): the server
    stops reading it long before its end, its memory does not grow with it, and the
    next request is served."""
    assert served.proc is not None
    peak_before = peak_memory_bytes(served.proc.pid)
    total = 64 * 1024 * 1024
    chunk = b"a" * (64 * 1024)
    sent = 0
    answer = b""
    with socket.create_connection(("127.0.0.1", served.port), timeout=10) as conn:
        try:
            conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
            while sent < total:
                conn.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the server closed the connection: what it refused was never read
        with contextlib.suppress(OSError):
            answer = conn.recv(65536)
    assert sent < total, "the server read the whole 64 MB header"
    assert answer.split(b"\r\n", 1)[0] in (b"HTTP/1.1 400 Bad Request", b"")
    assert peak_memory_bytes(served.proc.pid) - peak_before < 16 * 1024 * 1024
    assert httpx.get(f"{served.url}/health", timeout=10).status_code == 200


def test_more_than_a_hundred_header_fields_is_431(served: ServedFlow) -> None:
    headers = {f"x-h{i}": "1" for i in range(101)}
    res = httpx.get(f"{served.url}/health", headers=headers, timeout=10)
    assert res.status_code == 431
    assert res.json()["error"] == "request_header_fields_too_large"
    assert httpx.get(f"{served.url}/health", headers=dict(list(headers.items())[:90])).is_success


def test_more_than_16_kb_of_headers_is_431(served: ServedFlow) -> None:
    """Ten 2 KB headers: few fields, too many bytes; the server reads the block whole
    and the app says what is too large."""
    headers = {f"x-h{i}": "b" * 2048 for i in range(10)}
    res = httpx.get(f"{served.url}/health", headers=headers, timeout=10)
    assert res.status_code == 431, res.text
    assert res.json()["error"] == "request_header_fields_too_large"
    assert "16384 bytes" in res.json()["message"]
    assert httpx.get(f"{served.url}/health", headers=dict(list(headers.items())[:6])).is_success


@pytest.mark.parametrize(
    "headers",
    [
        {f"x-h{i}": "1" for i in range(101)},
        {f"x-h{i}": "b" * 2048 for i in range(10)},
    ],
    ids=["101 fields", "10 x 2 KB"],
)
async def test_a_websocket_handshake_over_the_header_limits_is_refused_431(
    served: ServedFlow, headers: dict[str, str]
) -> None:
    url = f"ws://127.0.0.1:{served.port}/api/telephony/twilio/stream"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url, additional_headers=headers, open_timeout=10):
            pass
    assert refused.value.response.status_code == 431
    assert json.loads(refused.value.response.body or b"")["error"] == (
        "request_header_fields_too_large"
    )
    # Within the limits the handshake is accepted (the stream then waits for Twilio's
    # "start" message).
    async with connect(url, additional_headers={"x-h0": "1"}, open_timeout=10) as ws:
        assert ws.state is State.OPEN


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
