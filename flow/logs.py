"""Process-wide logging: one level (``FLOW_LOG_LEVEL``) for Flow's stdlib loggers and for
Pipecat's loguru logger, which otherwise prints every frame-level DEBUG line. Pipecat's
warnings about the normal course of an audio-only WebRTC call (it has no video; the
caller's track ends when they hang up, and the call then ends on their disconnect)
are dropped: a voice bot would log them on every call.

No secret reaches a log line: :class:`RedactSecrets` rewrites every record (the access
log's request lines included) so that the values of query parameters that carry
credentials (``key``, ``api_key``, ``token``, ``access_token``, ...) and bearer tokens
read ``[redacted]``. A caller who puts a key in a URL is refused (401) and its key is
still not written down.

``FLOW_LOG_FORMAT=json`` writes one JSON object a line (``ts``, ``level``, ``logger``,
``message``, ``exception``) with the ids of what the line is about when they are known:
``request_id`` (the request being answered, ``X-Request-ID``), ``key_id`` (the API key
that made it) and ``thread_id`` (the call). They live in context variables
(:func:`bind`), so a call's task carries the ids of the join that started it. Message
and exception go through the same redaction as text lines.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

REDACTED = "[redacted]"
SECRET_PARAMS = (
    "key",
    "api_key",
    "apikey",
    "api-key",
    "token",
    "access_token",
    "refresh_token",
    "id_token",
    "auth",
    "authorization",
    "secret",
    "client_secret",
    "password",
    "signature",
    "sig",
)
_QUERY_SECRET = re.compile(
    r"(?i)([?&;](?:" + "|".join(re.escape(p) for p in SECRET_PARAMS) + r")=)[^&;#\s\"']*"
)
_BEARER = re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+")


def redact(text: str) -> str:
    """``text`` with credential query values and bearer tokens replaced."""
    return _BEARER.sub(r"\1" + REDACTED, _QUERY_SECRET.sub(r"\1" + REDACTED, text))


class RedactSecrets(logging.Filter):
    """Rewrites a record's message when it would show a credential (never drops it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Arguments are redacted in place (formatters such as uvicorn's access log read
        # them one by one), then the template itself.
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {
                k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()
            }
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        return True


LogFormat = Literal["text", "json"]
# What a log line is about, where it is known (see the module's docstring).
CONTEXT: dict[str, ContextVar[str | None]] = {
    name: ContextVar(f"flow_{name}", default=None) for name in ("request_id", "key_id", "thread_id")
}


def bind(**ids: str | None) -> None:
    """Name what the current task's log lines are about (``request_id``, ``key_id``,
    ``thread_id``); tasks it starts afterwards inherit the names."""
    for name, value in ids.items():
        CONTEXT[name].set(value)


def json_line(
    ts: datetime, level: str, logger: str, message: str, exception: str | None = None
) -> str:
    entry: dict[str, Any] = {
        "ts": ts.astimezone(UTC).isoformat(timespec="milliseconds"),
        "level": level,
        "logger": logger,
        "message": redact(message),
    }
    for name, var in CONTEXT.items():
        if (value := var.get()) is not None:
            entry[name] = value
    if exception:
        entry["exception"] = redact(exception)
    return json.dumps(entry, ensure_ascii=False, default=str)


class JsonFormatter(logging.Formatter):
    """One JSON object a line (``FLOW_LOG_FORMAT=json``)."""

    def format(self, record: logging.LogRecord) -> str:
        exception = None
        if record.exc_info:
            exception = self.formatException(record.exc_info)
        elif record.exc_text:
            exception = record.exc_text
        ts = datetime.fromtimestamp(record.created, UTC)
        return json_line(ts, record.levelname, record.name, record.getMessage(), exception)


def configure_logging(level: str, log_format: LogFormat = "text") -> None:
    from loguru import logger

    level = level.upper()
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactSecrets())
        if log_format == "json":
            handler.setFormatter(JsonFormatter())
    # Every HTTP request (to the database among others) would be an INFO line.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logger.remove()
    if log_format == "json":
        logger.add(_loguru_json, level=level)
    else:
        logger.add(sys.stderr, level=level, filter=_redact_loguru)


ROUTINE_PIPECAT_WARNINGS = (
    "No video transceiver is available",
    "No screen video transceiver is available",
    "Media stream error while reading the audio",
)


def _redact_loguru(record: Any) -> bool:
    if record["level"].name == "WARNING" and record["message"].startswith(ROUTINE_PIPECAT_WARNINGS):
        return False
    record["message"] = redact(record["message"])
    return True


def _loguru_json(message: Any) -> None:
    """Pipecat's loguru lines, as JSON lines."""
    record = message.record
    exception = None
    if record["exception"] is not None:
        import traceback

        exc = record["exception"]
        exception = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))
    line = json_line(
        record["time"], record["level"].name, record["name"] or "", record["message"], exception
    )
    sys.stderr.write(line + "\n")


def uvicorn_log_config(log_format: LogFormat = "text") -> dict[str, Any]:
    """Uvicorn's own logging configuration with :class:`RedactSecrets` on its handlers
    (the access log prints each request's path and query), in ``log_format``."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_secrets"] = {"()": "flow.logs.RedactSecrets"}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact_secrets")
    if log_format == "json":
        for formatter in config["formatters"]:
            config["formatters"][formatter] = {"()": "flow.logs.JsonFormatter"}
    return config
