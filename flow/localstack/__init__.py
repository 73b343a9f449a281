"""A Supabase-compatible stack on one machine, without Docker.

``up()`` brings up Postgres 15 (installing Debian's package when it is missing and we
are root), applies ``supabase/local/bootstrap.sql`` and every migration in
``supabase/migrations/`` in order, starts PostgREST (a pinned, hash-checked binary)
and the ``/rest/v1`` gateway, mints service-role and anon JWTs, and returns what a
client needs. ``down()`` stops everything it started, by PID. The state of one stack
(data directory, logs, PIDs, ``env``) lives in one directory, so several stacks (a
test session and a demo, say) run side by side on different ports.

The parts:

- :mod:`flow.localstack.install`: installing Postgres 15 and PostgREST;
- :mod:`flow.localstack.migrations`: the bootstrap and ``supabase/migrations``;
- :mod:`flow.localstack.supervisor`: starting, finding and stopping a stack, its env;
- :mod:`flow.localstack.gateway`: the ``/rest/v1`` reverse proxy in front of PostgREST;
- ``python -m flow.localstack`` (and ``flow stack``): the command line.

Every failure to bring the stack up raises :class:`StackError` with what to do.

The same migrations and the same supabase-py code run against a hosted Supabase
project in production; nothing here is used there.
"""

from __future__ import annotations

from flow.localstack.install import (
    PG_BIN,
    POSTGREST_NPM,
    POSTGREST_SHA256,
    POSTGREST_VERSION,
    StackError,
    ensure_postgres,
    ensure_postgrest,
)
from flow.localstack.migrations import apply_migrations, project_root, psql
from flow.localstack.supervisor import (
    DEFAULT_PORTS,
    StackInfo,
    default_state_dir,
    destroy,
    down,
    free_port,
    status,
    up,
    update_env_file,
    write_env_file,
)

__all__ = [
    "DEFAULT_PORTS",
    "PG_BIN",
    "POSTGREST_NPM",
    "POSTGREST_SHA256",
    "POSTGREST_VERSION",
    "StackError",
    "StackInfo",
    "apply_migrations",
    "default_state_dir",
    "destroy",
    "down",
    "ensure_postgres",
    "ensure_postgrest",
    "free_port",
    "project_root",
    "psql",
    "status",
    "up",
    "update_env_file",
    "write_env_file",
]
