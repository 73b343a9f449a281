"""Process-wide logging: one level (``FLOW_LOG_LEVEL``) for Flow's stdlib loggers and for
Pipecat's loguru logger, which otherwise prints every frame-level DEBUG line."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str) -> None:
    from loguru import logger

    level = level.upper()
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    # Every HTTP request (to the database among others) would be an INFO line.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    logger.remove()
    logger.add(sys.stderr, level=level)
