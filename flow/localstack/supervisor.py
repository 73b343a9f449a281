"""Running the local stack: Postgres, PostgREST and the ``/rest/v1`` gateway.

``up(state_dir)`` starts Postgres 15 on a data directory of its own, applies the
migrations, starts PostgREST and the gateway (each in a process group of its own),
mints a service-role and an anon JWT with the stack's secret, waits until the gateway
answers, and returns a :class:`StackInfo`: the ports and the env a client needs
(``SUPABASE_URL``, ``SUPABASE_SERVICE_ROLE_KEY``, ...). ``up`` on a directory whose
stack is already running only applies new migrations and returns it. ``down`` stops
what ``up`` started, by the PIDs it recorded. Everything about one stack (data, logs,
PIDs in ``stack.json``, the JWT secret, the ``env`` file) lives in its state directory,
so several stacks (a test session and a demo, say) run side by side on their own ports.
:func:`update_env_file` sets the stack's variables in a dotenv file, keeping the rest.

Failure behaviour: a missing Postgres or PostgREST, a failing migration or a process
that does not answer within 30 s raises :class:`~flow.localstack.install.StackError`;
processes already started stay up and the next ``up`` (which first runs ``down`` when
the stack is not fully running) or ``down`` stops them. ``status`` never raises for a
stack that is down: it answers None. ``down`` ignores processes that are already gone.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import jwt

from flow.localstack.install import (
    PG_BIN,
    StackError,
    as_postgres,
    ensure_postgres,
    ensure_postgrest,
    is_root,
    log,
)
from flow.localstack.migrations import apply_migrations, project_root

DEFAULT_PORTS = {"pg": 54322, "rest": 54330, "gateway": 54321}
READY_TIMEOUT_SECONDS = 30.0


@dataclass
class StackInfo:
    state_dir: str
    supabase_url: str
    service_role_key: str
    anon_key: str
    database_url: str
    pg_port: int
    rest_port: int
    gateway_port: int

    def env(self) -> dict[str, str]:
        """The variables a client of this stack needs, as ``flow stack env`` prints them."""
        return {
            "SUPABASE_URL": self.supabase_url,
            "SUPABASE_SERVICE_ROLE_KEY": self.service_role_key,
            "SUPABASE_ANON_KEY": self.anon_key,
            "DATABASE_URL": self.database_url,
        }


def default_state_dir() -> Path:
    return Path(os.environ.get("FLOW_STACK_DIR", project_root() / ".flow" / "stack"))


def free_port(preferred: int | None) -> int:
    """``preferred`` when it is free on 127.0.0.1, else any free port."""
    if preferred:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(check: Callable[[], bool], what: str, timeout: float = READY_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.05)
    raise StackError(f"{what} did not become ready within {timeout:.0f}s")


def _http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=1) as resp:
        return bool(resp.status == 200)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    return True


def _mint(secret: str, role: str) -> str:
    now = int(time.time())
    return jwt.encode(
        {"role": role, "iss": "flow-local", "iat": now, "exp": now + 10 * 365 * 86400},
        secret,
        algorithm="HS256",
    )


def status(state_dir: Path | None = None) -> StackInfo | None:
    """The running stack in ``state_dir``, or None when it is not (fully) up."""
    state_dir = Path(state_dir or default_state_dir())
    info_file = state_dir / "stack.json"
    if not info_file.exists():
        return None
    data = json.loads(info_file.read_text())
    pids = data.pop("pids", {})
    if not pids or not all(_pid_alive(int(p)) for p in pids.values()):
        return None
    info = StackInfo(**data)
    try:
        if not _http_ok(f"http://127.0.0.1:{info.gateway_port}/health"):
            return None
    except OSError:
        return None
    return info


def _give_to_postgres(state_dir: Path, *dirs: Path) -> None:
    """As root, postgres (which refuses root) must reach and own its directories."""
    for p in [state_dir, *state_dir.parents]:
        if p == Path("/"):
            break
        mode = p.stat().st_mode
        if not mode & 0o001:
            p.chmod(mode | 0o001)
    for d in (state_dir, *dirs):
        shutil.chown(d, "postgres", "postgres")


def _start_postgres(pg_bin: Path, state_dir: Path, port: int, quiet: bool) -> str:
    pgdata, logs, sockdir = state_dir / "pgdata", state_dir / "logs", state_dir / "sock"
    if not (pgdata / "PG_VERSION").exists():
        log("initialising a Postgres cluster", quiet)
        subprocess.run(
            as_postgres(
                [
                    str(pg_bin / "initdb"),
                    "-D",
                    str(pgdata),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            ),
            check=True,
            stdout=subprocess.DEVNULL,
        )
    subprocess.run(
        as_postgres(
            [
                str(pg_bin / "pg_ctl"),
                "-D",
                str(pgdata),
                "-l",
                str(logs / "postgres.log"),
                "-w",
                "-o",
                f"-p {port} -k {sockdir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
                "start",
            ]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return f"postgresql://postgres@127.0.0.1:{port}/postgres"


def _jwt_secret(state_dir: Path) -> str:
    secret_file = state_dir / "jwt_secret"
    if not secret_file.exists():
        secret_file.write_text(hashlib.sha256(os.urandom(32)).hexdigest())
        secret_file.chmod(0o600)
    return secret_file.read_text().strip()


def up(
    state_dir: Path | None = None,
    *,
    fixed_ports: bool = True,
    quiet: bool = False,
) -> StackInfo:
    """Bring the stack up (or return the one already running in ``state_dir``)."""
    state_dir = Path(state_dir or default_state_dir()).resolve()
    running = status(state_dir)
    if running:
        apply_migrations(running.database_url, quiet)
        return running
    down(state_dir, quiet=True)

    pg_bin = ensure_postgres(quiet)
    postgrest = ensure_postgrest(quiet)
    state_dir.mkdir(parents=True, exist_ok=True)
    logs = state_dir / "logs"
    logs.mkdir(exist_ok=True)
    sockdir = state_dir / "sock"
    sockdir.mkdir(exist_ok=True)

    def port(name: str) -> int:
        env = os.environ.get(f"FLOW_STACK_{name.upper()}_PORT")
        if env:
            return int(env)
        return free_port(DEFAULT_PORTS[name] if fixed_ports else None)

    pg_port, rest_port = port("pg"), port("rest")
    gateway_port = port("gateway")

    if is_root():
        _give_to_postgres(state_dir, logs, sockdir)
    database_url = _start_postgres(pg_bin, state_dir, pg_port, quiet)
    apply_migrations(database_url, quiet)
    secret = _jwt_secret(state_dir)

    rest_env = {
        **os.environ,
        "PGRST_DB_URI": f"postgres://authenticator@127.0.0.1:{pg_port}/postgres",
        "PGRST_DB_SCHEMAS": "public",
        "PGRST_DB_ANON_ROLE": "anon",
        "PGRST_JWT_SECRET": secret,
        "PGRST_SERVER_HOST": "127.0.0.1",
        "PGRST_SERVER_PORT": str(rest_port),
        "PGRST_DB_POOL": "20",
        "PGRST_LOG_LEVEL": "warn",
    }
    rest = subprocess.Popen(
        [str(postgrest)],
        env=rest_env,
        stdout=(logs / "postgrest.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    gateway = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flow.localstack.gateway",
            "--port",
            str(gateway_port),
            "--upstream",
            f"http://127.0.0.1:{rest_port}",
        ],
        stdout=(logs / "gateway.log").open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=str(project_root()),
    )
    info = StackInfo(
        state_dir=str(state_dir),
        supabase_url=f"http://127.0.0.1:{gateway_port}",
        service_role_key=_mint(secret, "service_role"),
        anon_key=_mint(secret, "anon"),
        database_url=database_url,
        pg_port=pg_port,
        rest_port=rest_port,
        gateway_port=gateway_port,
    )
    (state_dir / "stack.json").write_text(
        json.dumps({**asdict(info), "pids": {"postgrest": rest.pid, "gateway": gateway.pid}})
    )
    _wait(lambda: _http_ok(f"http://127.0.0.1:{rest_port}/"), "PostgREST")
    _wait(lambda: _http_ok(f"http://127.0.0.1:{gateway_port}/health"), "the /rest/v1 gateway")
    write_env_file(info)
    log(f"up: SUPABASE_URL={info.supabase_url} (env in {state_dir / 'env'})", quiet)
    return info


def write_env_file(info: StackInfo) -> Path:
    """The stack's env, in ``<state_dir>/env`` (readable by its owner only)."""
    path = Path(info.state_dir) / "env"
    path.write_text("".join(f"{k}={v}\n" for k, v in info.env().items()))
    path.chmod(0o600)
    return path


_ENV_ASSIGNMENT = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")


def update_env_file(path: Path, values: dict[str, str]) -> list[str]:
    """Set ``values`` in the dotenv file at ``path`` and keep every other line as it is.

    A variable already assigned is rewritten in place (a later duplicate assignment of
    it is dropped, since the last one would win); the others are appended. The file is
    replaced atomically, keeping its permissions (a new one is readable by its owner
    only: it holds the service-role key). Returns the variables whose value changed."""
    path = Path(path).resolve()
    lines = path.read_text().splitlines() if path.exists() else []
    old: dict[str, str] = {}
    out: list[str] = []
    for line in lines:
        match = _ENV_ASSIGNMENT.match(line)
        name = match.group(1) if match else None
        if match is None or name not in values:
            out.append(line)
            continue
        if name in old:
            continue
        old[name] = line[match.end() :].strip()
        out.append(line[: match.end()] + values[name])
    missing = [k for k in values if k not in old]
    if missing and out and out[-1].strip():
        out.append("")
    out += [f"{k}={values[k]}" for k in missing]
    mode = path.stat().st_mode & 0o777 if path.exists() else 0o600
    fd, tmp = tempfile.mkstemp(prefix=".env.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write("\n".join(out) + "\n")
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return [k for k in values if old.get(k) != values[k]]


def down(state_dir: Path | None = None, quiet: bool = False) -> None:
    """Stop what ``up`` started in ``state_dir`` (PostgREST, gateway, Postgres)."""
    state_dir = Path(state_dir or default_state_dir()).resolve()
    info_file = state_dir / "stack.json"
    if info_file.exists():
        data = json.loads(info_file.read_text())
        for pid in data.get("pids", {}).values():
            with contextlib.suppress(OSError):
                os.killpg(int(pid), signal.SIGTERM)
        info_file.unlink()
    pgdata = state_dir / "pgdata"
    if (pgdata / "postmaster.pid").exists():
        subprocess.run(
            as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"]),
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        log("stopped", quiet)


def destroy(state_dir: Path) -> None:
    """Stop the stack and delete its data (tests use a throwaway stack)."""
    down(state_dir, quiet=True)
    shutil.rmtree(state_dir, ignore_errors=True)
