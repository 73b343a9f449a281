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
"""

from __future__ import annotations

import copy
import logging
import re
import sys
from typing import Any

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


def configure_logging(level: str) -> None:
    from loguru import logger

    level = level.upper()
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactSecrets())
    # Every HTTP request (to the database among others) would be an INFO line.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logger.remove()
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


def uvicorn_log_config() -> dict[str, Any]:
    """Uvicorn's own logging configuration with :class:`RedactSecrets` on its handlers
    (the access log prints each request's path and query)."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config.setdefault("filters", {})["redact_secrets"] = {"()": "flow.logs.RedactSecrets"}
    for handler in config["handlers"].values():
        handler.setdefault("filters", []).append("redact_secrets")
    return config
