"""Analytics integrations of the calling key: export its usage ledger to PostHog or
Mixpanel on a schedule.

An integration exports the calling key's usage only (operators export every key with
``flow integrations add --all-keys``). Credentials are validated against the destination
before saving (422 ``invalid_credentials`` names the problem: bad key, wrong region,
unreachable host), stored encrypted, and only ever returned as a masked hint. A ``host``
or ``api_host`` the outbound-URL policy refuses (a private, loopback, link-local or
metadata address, userinfo, http in production) is 400 ``url_not_allowed`` naming the
rule, and nothing is sent to it. No answer ever carries what a destination answered. The detail
shows status, last sync, last error, events exported and the cursor's position.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Request, Response
from pydantic import BaseModel

from flow.api.deps import ApiKeyDep, SettingsDep, SupabaseDep
from flow.api.errors import ERROR_RESPONSES, ApiError, ErrorBody
from flow.db import integrations as integrations_db
from flow.db.integrations import IntegrationStatus
from flow.exporters import integrations as service
from flow.exporters.base import CredentialsInvalid, IntegrationInputError
from flow.exporters.crypto import CredentialsUnreadable, SecretKeyMissing
from flow.exporters.registry import IntegrationCreate, IntegrationPatch
from flow.net.outbound import UrlNotAllowed

router = APIRouter(prefix="/api/integrations", tags=["integrations"], responses=ERROR_RESPONSES)


class Cursor(BaseModel):
    """Position of the export in the ledger: the last exported row's transaction and seq."""

    txid: str
    seq: int


class Integration(BaseModel):
    """An integration as callers see it (never its credentials)."""

    id: str
    name: str | None
    provider: str
    api_key_id: str | None
    all_keys: bool
    status: str
    region: str | None
    host: str | None
    event_name: str
    distinct_id: str
    credentials_hint: str | None
    sync_interval_seconds: int
    backfill_from: str | None
    cursor: Cursor
    last_synced_at: str | None
    next_sync_at: str | None
    last_error: str | None
    last_warning: str | None
    events_exported: int
    events_skipped: int
    created_at: str | None
    updated_at: str | None


def _view(row: dict[str, Any]) -> Integration:
    return Integration.model_validate(service.public_view(row))


def _not_found(integration_id: str) -> ApiError:
    return ApiError(404, "not_found", f"no integration {integration_id} for this key")


def _refusal(exc: Exception) -> ApiError:
    if isinstance(exc, UrlNotAllowed):
        return ApiError(400, "url_not_allowed", str(exc))
    if isinstance(exc, CredentialsInvalid):
        return ApiError(422, "invalid_credentials", str(exc))
    if isinstance(exc, SecretKeyMissing):
        return ApiError(503, "exports_not_configured", str(exc))
    if isinstance(exc, CredentialsUnreadable):
        return ApiError(409, "credentials_unreadable", str(exc))
    return ApiError(422, "invalid_integration", str(exc))


_CHECKED = (
    UrlNotAllowed,
    CredentialsInvalid,
    SecretKeyMissing,
    CredentialsUnreadable,
    IntegrationInputError,
)


def _uuid_or_404(integration_id: str) -> str:
    try:
        return str(uuid.UUID(integration_id))
    except ValueError:
        raise _not_found(integration_id) from None


_URL_REFUSED: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "A host Flow will not call (url_not_allowed)"}
}


@router.post("", status_code=201, response_model=Integration, responses=_URL_REFUSED)
async def create_integration(
    body: Annotated[IntegrationCreate, Body()],
    api_key: ApiKeyDep,
    sb: SupabaseDep,
    settings: SettingsDep,
) -> Integration:
    try:
        row = await service.create_integration(sb, settings, body, api_key_id=api_key.id)
    except _CHECKED as exc:
        raise _refusal(exc) from None
    return _view(row)


@router.get("", response_model=list[Integration])
async def list_integrations(api_key: ApiKeyDep, sb: SupabaseDep) -> list[Integration]:
    return [_view(r) for r in await integrations_db.list_integrations(sb, api_key_id=api_key.id)]


@router.get("/{integration_id}", response_model=Integration)
async def get_integration(integration_id: str, api_key: ApiKeyDep, sb: SupabaseDep) -> Integration:
    iid = _uuid_or_404(integration_id)
    row = await integrations_db.get_integration(sb, iid, api_key_id=api_key.id)
    if row is None:
        raise _not_found(integration_id)
    return _view(row)


@router.patch("/{integration_id}", response_model=Integration, responses=_URL_REFUSED)
async def update_integration(
    integration_id: str,
    patch: IntegrationPatch,
    api_key: ApiKeyDep,
    sb: SupabaseDep,
    settings: SettingsDep,
) -> Integration:
    iid = _uuid_or_404(integration_id)
    try:
        row = await service.update_integration(sb, settings, iid, patch, api_key_id=api_key.id)
    except _CHECKED as exc:
        raise _refusal(exc) from None
    if row is None:
        raise _not_found(integration_id)
    return _view(row)


@router.post("/{integration_id}/pause", response_model=Integration)
async def pause_integration(
    integration_id: str, api_key: ApiKeyDep, sb: SupabaseDep
) -> Integration:
    row = await integrations_db.pause_integration(
        sb, _uuid_or_404(integration_id), api_key_id=api_key.id
    )
    if row is None:
        raise _not_found(integration_id)
    return _view(row)


@router.post("/{integration_id}/resume", response_model=Integration)
async def resume_integration(
    integration_id: str, request: Request, api_key: ApiKeyDep, sb: SupabaseDep
) -> Integration:
    row = await integrations_db.resume_integration(
        sb, _uuid_or_404(integration_id), api_key_id=api_key.id
    )
    if row is None:
        raise _not_found(integration_id)
    _wake_scheduler(request)
    return _view(row)


@router.post("/{integration_id}/sync", status_code=202, response_model=Integration)
async def sync_integration(
    integration_id: str, request: Request, api_key: ApiKeyDep, sb: SupabaseDep
) -> Integration:
    """Schedule a cycle now; the scheduler of this (or another) instance runs it."""
    iid = _uuid_or_404(integration_id)
    row = await integrations_db.get_integration(sb, iid, api_key_id=api_key.id)
    if row is None:
        raise _not_found(integration_id)
    if row["status"] in (IntegrationStatus.PAUSED, IntegrationStatus.ERROR):
        raise ApiError(
            409,
            "not_active",
            f"the integration is {row['status']}: resume it (or fix its credentials) first",
        )
    row = await integrations_db.request_sync(sb, iid, api_key_id=api_key.id) or row
    _wake_scheduler(request)
    return _view(row)


@router.delete("/{integration_id}", status_code=204)
async def delete_integration(integration_id: str, api_key: ApiKeyDep, sb: SupabaseDep) -> Response:
    if not await integrations_db.delete_integration(
        sb, _uuid_or_404(integration_id), api_key_id=api_key.id
    ):
        raise _not_found(integration_id)
    return Response(status_code=204)


def _wake_scheduler(request: Request) -> None:
    scheduler = getattr(request.app.state, "export_scheduler", None)
    if scheduler is not None:
        scheduler.wake()
