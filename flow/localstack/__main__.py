"""``python -m flow.localstack install|up|down|env|status``: the local Supabase-compatible stack."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flow.localstack import (
    StackError,
    default_state_dir,
    down,
    ensure_postgres,
    ensure_postgrest,
    status,
    up,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flow.localstack")
    parser.add_argument("command", choices=["install", "up", "down", "env", "status"])
    parser.add_argument("--dir", type=Path, default=None, help="state directory")
    args = parser.parse_args(argv)
    state_dir = args.dir or default_state_dir()
    try:
        if args.command == "install":
            ensure_postgres()
            ensure_postgrest()
        elif args.command == "up":
            info = up(state_dir)
            for key, value in info.env().items():
                print(f"{key}={value}")
        elif args.command == "down":
            down(state_dir)
        else:
            running = status(state_dir)
            if running is None:
                print(
                    "the local stack is not running (start it with scripts/stack-up)",
                    file=sys.stderr,
                )
                return 1
            if args.command == "env":
                for key, value in running.env().items():
                    print(f"{key}={value}")
            else:
                print(f"running: {running.supabase_url} (postgres :{running.pg_port})")
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
