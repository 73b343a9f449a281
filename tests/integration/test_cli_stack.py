"""``flow stack env``: the running stack's variables, printed or set in a dotenv file
without touching its other lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flow import localstack
from flow.localstack import update_env_file

ROOT = Path(__file__).resolve().parents[2]


def flow_stack(*args: str) -> subprocess.CompletedProcess[str]:
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "flow.cli", "stack", *args],
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_stack_env_prints_the_running_stacks_variables(stack: localstack.StackInfo) -> None:
    out = flow_stack("env", "--dir", stack.state_dir)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [f"{k}={v}" for k, v in stack.env().items()]


def test_stack_env_write_keeps_the_files_other_lines(
    stack: localstack.StackInfo, tmp_path: Path
) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text(
        "# my settings\n"
        "OPENAI_API_KEY=sk-mine\n"
        "SUPABASE_URL=https://old.supabase.co\n"
        "export FLOW_LOG_LEVEL=DEBUG\n"
        "SUPABASE_URL=http://stale\n"
    )
    dotenv.chmod(0o640)
    out = flow_stack("env", "--dir", stack.state_dir, "--write", str(dotenv))
    assert out.returncode == 0, out.stderr
    assert out.stdout == "", "the service-role key is not printed when it is written"
    lines = dotenv.read_text().splitlines()
    assert lines[:4] == [
        "# my settings",
        "OPENAI_API_KEY=sk-mine",
        f"SUPABASE_URL={stack.supabase_url}",
        "export FLOW_LOG_LEVEL=DEBUG",
    ]
    assert sorted(lines[5:]) == sorted(
        f"{k}={v}" for k, v in stack.env().items() if k != "SUPABASE_URL"
    )
    assert dotenv.stat().st_mode & 0o777 == 0o640

    again = flow_stack("env", "--dir", stack.state_dir, "--write", str(dotenv))
    assert again.returncode == 0 and "already current" in again.stderr
    assert dotenv.read_text().splitlines() == lines


def test_update_env_file_creates_a_private_file(tmp_path: Path) -> None:
    path = tmp_path / "new.env"
    assert update_env_file(path, {"A": "1", "B": "2"}) == ["A", "B"]
    assert path.read_text() == "A=1\nB=2\n"
    assert path.stat().st_mode & 0o777 == 0o600
    assert update_env_file(path, {"B": "3"}) == ["B"]
    assert path.read_text() == "A=1\nB=3\n"


def test_stack_env_refuses_a_stack_that_is_not_running(tmp_path: Path) -> None:
    out = flow_stack("env", "--dir", str(tmp_path))
    assert out.returncode == 1 and "not running" in out.stderr
    assert flow_stack("status", "--write", str(tmp_path / ".env")).returncode == 2
