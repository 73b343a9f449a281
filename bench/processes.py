"""The processes a benchmark starts: a free port for each, and a Python process that
counts as up once its URL answers (at most 60 s), stopped when the benchmark is done."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(proc: subprocess.Popen[bytes], ready_url: str, seconds: float = 60) -> None:
    """Wait until ``ready_url`` answers; RuntimeError if ``proc`` exits or ``seconds``
    pass first."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            httpx.get(ready_url, timeout=1)
            return
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{proc.args} did not start") from None
            time.sleep(0.1)


@contextlib.contextmanager
def process(
    args: list[str], env: dict[str, str], ready_url: str | None
) -> Iterator[subprocess.Popen[bytes]]:
    """``python ARGS`` with ``env`` over this environment; with ``ready_url``, up once
    that answers. Terminated (then killed) on the way out."""
    proc = subprocess.Popen([sys.executable, *args], env={**os.environ, **env})
    try:
        if ready_url:
            wait_ready(proc, ready_url)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
