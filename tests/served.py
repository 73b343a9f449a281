"""``flow serve`` as an operator runs it: a real process on a real port, over the test
session's stack, with its log captured, that a test can SIGTERM or kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from flow import localstack

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_SECONDS = 40.0


class ServedFlow:
    """One ``flow serve`` process.

    Parameters:
        stack: the session's stack (its env is given to the process).
        log_path: where the process's stdout and stderr go.
        env: more environment variables (settings).
    """

    def __init__(self, stack: localstack.StackInfo, log_path: Path, **env: str) -> None:
        self.port = localstack.free_port(None)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._env = {
            **os.environ,
            **stack.env(),
            "FLOW_ENV": "test",
            "OPENAI_API_KEY": "sk-served-tests",
            "UNKEY_ROOT_KEY": "",
            "POSTHOG_API_KEY": "",
            "FLOW_SYNC_ENABLED": "false",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p
            ),
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServedFlow:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "flow.cli",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=self._env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"flow serve exited at start:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"flow serve did not start in {START_TIMEOUT_SECONDS}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the process to exit on its own (bounded)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """kill -9: no cleanup of any kind runs."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> ServedFlow:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.kill()
