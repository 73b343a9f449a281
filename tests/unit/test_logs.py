"""Log lines in either format carry no credential; JSON lines name what they are about."""

from __future__ import annotations

import contextvars
import io
import json
import logging
import sys

import pytest

from flow.logs import JsonFormatter, RedactSecrets, bind, configure_logging

SECRET = "flow_sk_live_0123456789abcdef"


def record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    rec = logging.LogRecord("flow.test", logging.ERROR, __file__, 1, msg, args, exc_info)
    RedactSecrets().filter(rec)
    return rec


def test_a_json_line_redacts_message_arguments_and_exception() -> None:
    try:
        raise RuntimeError(f"upstream said: Authorization: Bearer {SECRET}")
    except RuntimeError as exc:
        line = JsonFormatter().format(record("GET %s failed", f"/api/usage?key={SECRET}", exc=exc))
    assert SECRET not in line
    entry = json.loads(line)
    assert entry["message"] == "GET /api/usage?key=[redacted] failed"
    assert "Bearer [redacted]" in entry["exception"]
    assert (entry["level"], entry["logger"]) == ("ERROR", "flow.test")


def test_a_json_line_names_the_request_key_and_call_of_its_context() -> None:
    def in_a_call() -> dict[str, str]:
        bind(request_id="req-1", key_id="key-1", thread_id="thread-1")
        return dict(json.loads(JsonFormatter().format(record("call step"))))

    entry = contextvars.copy_context().run(in_a_call)
    assert (entry["request_id"], entry["key_id"], entry["thread_id"]) == (
        "req-1",
        "key-1",
        "thread-1",
    )
    outside = json.loads(JsonFormatter().format(record("no context")))
    assert "thread_id" not in outside


def test_pipecat_lines_are_json_and_redacted_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from loguru import logger

    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        configure_logging("INFO", "json")
        logger.info("connecting with token=abc&access_token={}", SECRET)
        logger.info("header Bearer {}", SECRET)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        logger.remove()
        logger.add(sys.__stderr__, level="INFO")
    lines = [json.loads(line) for line in err.getvalue().splitlines() if line.strip()]
    assert len(lines) == 2 and SECRET not in err.getvalue()
    assert all(line["level"] == "INFO" for line in lines)
