"""The local database's schema: Supabase's roles, then Flow's migrations, in order.

``apply_migrations(database_url)`` runs ``supabase/local/bootstrap.sql`` (the roles and
schemas a hosted Supabase project already has; idempotent, local only) and then every
file of ``supabase/migrations/`` not yet recorded in
``supabase_migrations.schema_migrations``, in file-name order, each in one transaction
together with its bookkeeping row. When anything was applied, PostgREST is told to
reload its schema cache.

Failure behaviour: the first failing statement stops everything (``ON_ERROR_STOP``)
and raises :class:`~flow.localstack.install.StackError` with psql's message; the
failing migration's transaction is rolled back and it is not recorded, so the next run
tries it again. Migrations applied before it stay applied.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Protocol

from flow.localstack.install import PG_BIN, StackError, log


class HasDatabaseUrl(Protocol):
    """Anything naming a database, such as a running stack's ``StackInfo``."""

    @property
    def database_url(self) -> str: ...


def project_root() -> Path:
    """The directory holding ``supabase/`` (the source checkout)."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "supabase" / "migrations").is_dir():
            return parent
    raise StackError("cannot find supabase/migrations next to the flow package")


def psql(target: HasDatabaseUrl | str, *args: str, capture: bool = True) -> str:
    """Run Postgres 15's psql on ``target`` (a URL or a stack) and return its stdout."""
    url = target if isinstance(target, str) else target.database_url
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
    """Apply the bootstrap (idempotent) and every migration not applied yet, in order;
    returns the file names applied now."""
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
        log(f"applying {path.name}", quiet)
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
