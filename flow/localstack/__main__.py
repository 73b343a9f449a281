"""``python -m flow.localstack install|up|down|env|status``: the local Supabase-compatible
stack (``flow stack`` runs the same commands).

``up`` and ``env`` print the stack's variables (``SUPABASE_URL=...``) on stdout; with
``--write FILE`` they set them in that dotenv file instead, keeping its other lines.
Exit status: 0 done, 1 the stack is not running (``env``, ``status``), 2 an error (the
message says what to do).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flow.localstack.install import StackError, ensure_haproxy, ensure_postgres, ensure_postgrest
from flow.localstack.supervisor import (
    StackInfo,
    default_state_dir,
    down,
    status,
    up,
    update_env_file,
)

COMMANDS = ["install", "up", "down", "env", "status"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The stack's arguments, shared with ``flow stack``."""
    parser.add_argument("action", choices=COMMANDS)
    parser.add_argument(
        "--dir", type=Path, default=None, help="state directory (default: FLOW_STACK_DIR)"
    )
    parser.add_argument(
        "--write",
        type=Path,
        default=None,
        metavar="FILE",
        help="up/env: set the stack's variables in this dotenv file (other lines are kept)",
    )


def _emit(info: StackInfo, write: Path | None) -> None:
    if write is None:
        for key, value in info.env().items():
            print(f"{key}={value}")
        return
    changed = update_env_file(write, info.env())
    what = ", ".join(changed) if changed else "nothing (already current)"
    print(f"{write}: updated {what}; other lines kept", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    if args.write is not None and args.action not in ("up", "env"):
        print("error: --write goes with up or env", file=sys.stderr)
        return 2
    state_dir = args.dir or default_state_dir()
    try:
        if args.action == "install":
            ensure_postgres()
            ensure_postgrest()
            ensure_haproxy()
        elif args.action == "up":
            _emit(up(state_dir), args.write)
        elif args.action == "down":
            down(state_dir)
        else:
            running = status(state_dir)
            if running is None:
                print(
                    "the local stack is not running (start it with scripts/stack-up)",
                    file=sys.stderr,
                )
                return 1
            if args.action == "env":
                _emit(running, args.write)
            else:
                print(f"running: {running.supabase_url} (postgres :{running.pg_port})")
    except (StackError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flow.localstack")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
