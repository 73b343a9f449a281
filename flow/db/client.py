"""The async supabase-py client (PostgREST over HTTP) and its error mapping.

Failure behaviour: an unreachable database raises :class:`DatabaseUnavailable` (callers
retry, spool or answer 503): a connection error, a timeout, a gateway or PostgREST
answering 5xx, or an answer that is not PostgREST's. A request the database refuses
raises :class:`DatabaseError` with PostgREST's code and message: Flow builds every
request, so a refusal is Flow's own bug (the API logs it and answers 500 with an error
id, never the database's message), except conflicts, which the API answers 409.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID

import httpx
from postgrest.exceptions import APIError
from postgrest.types import ReturnMethod
from supabase import AsyncClient, AsyncClientOptions, acreate_client

from flow.config import Settings

T = TypeVar("T")

# SQLSTATE classes 08 (connection), 53 (resources), 57 (shutdown), 58 (system) and
# PostgREST's PGRST000-003 (cannot reach or pool the database): worth a retry.
UNAVAILABLE_CODES = ("08", "53", "57", "58", "PGRST000", "PGRST001", "PGRST002", "PGRST003")


class DatabaseError(Exception):
    """The database refused the request (constraint, validation, permission)."""

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class DatabaseUnavailable(Exception):
    """The database could not be reached (network, timeout, 5xx from the gateway)."""


async def _refuse_server_errors(response: httpx.Response) -> None:
    # PostgREST answers a refusal 4xx with its JSON error; a 5xx (a gateway in front of
    # PostgREST, PostgREST without its database) means unreachable, whatever its body,
    # and supabase-py would otherwise raise it as an APIError like any refusal.
    if response.status_code >= 500:
        raise DatabaseUnavailable(f"the database gateway answered HTTP {response.status_code}")


async def create_client(settings: Settings) -> AsyncClient:
    if not settings.supabase_url or not settings.supabase_service_role_key.get_secret_value():
        raise DatabaseUnavailable(
            "SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY are not set "
            "(run scripts/stack-up for a local stack)"
        )
    sb = await acreate_client(
        settings.supabase_url,
        settings.supabase_service_role_key.get_secret_value(),
        options=AsyncClientOptions(
            postgrest_client_timeout=settings.supabase_timeout_seconds,
            # Fail fast: a request that cannot reach the database answers 503 at once
            # (the meter has its own retry, backoff and spool) instead of sleeping 7 s.
            postgrest_client_retry=False,
            auto_refresh_token=False,
            persist_session=False,
        ),
    )
    sb.postgrest.session.event_hooks["response"].append(_refuse_server_errors)
    return sb


async def ping(sb: AsyncClient) -> None:
    """One cheap read (a key's id); raises as :func:`call` does when the database does not
    answer."""
    await call(sb.table("api_keys").select("id").limit(1).execute)


async def update_call_row(
    sb: AsyncClient, table: str, workflow_thread_id: UUID | str, columns: dict[str, Any]
) -> None:
    """Set ``columns`` on the row of ``table`` that belongs to a call (its
    ``workflow_thread_id``), answering nothing back."""
    await call(
        lambda: (
            sb.table(table)
            .update(columns, returning=ReturnMethod.minimal)
            .eq("workflow_thread_id", str(workflow_thread_id))
            .execute()
        )
    )


async def connect() -> AsyncClient:
    """A client for the database of this process's settings (the ``flow`` commands')."""
    from flow.config import get_settings

    return await create_client(get_settings())


async def call(op: Callable[[], Awaitable[T]]) -> T:
    """Run one supabase-py request, translating its failures into ours."""
    try:
        return await op()
    except APIError as exc:
        code = str(exc.code) if exc.code else None
        if code and code.startswith(UNAVAILABLE_CODES):
            raise DatabaseUnavailable(exc.message or "database unavailable") from exc
        if exc.message and "JSON could not be generated" in exc.message:
            raise DatabaseUnavailable(exc.message) from exc
        raise DatabaseError(exc.message or str(exc), code) from exc
    except (httpx.TransportError, OSError) as exc:
        raise DatabaseUnavailable(f"database unreachable: {exc.__class__.__name__}") from exc
    except json.JSONDecodeError as exc:  # a gateway answering HTML
        raise DatabaseUnavailable("database gateway answered garbage") from exc


async def rpc_body(sb: AsyncClient, function: str, params: dict[str, Any]) -> bytes:
    """Call the SQL function ``function`` and return PostgREST's JSON body as it came:
    for large documents built in SQL and passed on as they are, not parsed and written
    again. Failures map as in :func:`call` (a refusal is PostgREST's error object)."""

    async def post() -> bytes:
        response = await sb.postgrest.session.post(f"/rpc/{function}", json=params)
        if response.status_code < 400:
            return response.content
        error = response.json()
        raise APIError(error if isinstance(error, dict) else {"message": str(error)})

    return await call(post)


async def retry_unavailable(
    op: Callable[[], Awaitable[T]], *, attempts: int = 5, first_delay_seconds: float = 0.5
) -> T:
    """Run a write, retrying it with backoff while the database is unreachable (5 tries
    over about 7.5 s by default): for writes that must not be lost to a blip, like the
    end of a call. Refusals are not retried."""
    delay = first_delay_seconds
    for _attempt in range(attempts - 1):
        try:
            return await op()
        except DatabaseUnavailable:
            await asyncio.sleep(delay)
            delay *= 2
    return await op()


def loads_exact(text: str | None) -> Any:
    """Parse JSON keeping numbers exact (Decimal), for money read back from jsonb."""
    if text is None:
        return None
    return json.loads(text, parse_float=Decimal)


def rows_of(res: Any) -> list[dict[str, Any]]:
    """The rows of a PostgREST response, typed."""
    data = res.data
    return [dict(r) for r in data] if isinstance(data, list) else []


def first_of(res: Any) -> dict[str, Any] | None:
    found = rows_of(res)
    return found[0] if found else None
