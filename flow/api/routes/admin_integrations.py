"""The operator's exports: integrations that cover every key, such as the Stripe
billing export (``provider: stripe``), which only the operator may create.

Same bodies, checks and answers as ``/api/integrations`` (see
:mod:`flow.api.routes.integrations`), without a key's scope: an integration created here
exports every key's usage, and the operator sees and edits every integration.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, Response

from flow.api.deps import SettingsDep, SupabaseDep, require_operator
from flow.api.errors import ERROR_RESPONSES, ErrorBody
from flow.api.routes.integrations import (
    _CHECKED,
    _URL_REFUSED,
    Integration,
    _not_found,
    _refusal,
    _uuid_or_404,
    _view,
    _wake_scheduler,
)
from flow.db import integrations as integrations_db
from flow.exporters import integrations as service
from flow.exporters.registry import IntegrationCreate, IntegrationPatch

_FORBIDDEN: dict[int | str, dict[str, Any]] = {
    403: {"model": ErrorBody, "description": "An API key, not an operator token (operator_only)"}
}
router = APIRouter(
    prefix="/api/admin/integrations",
    tags=["admin"],
    responses={**ERROR_RESPONSES, **_FORBIDDEN},
    dependencies=[Depends(require_operator)],
)


@router.post("", status_code=201, response_model=Integration, responses=_URL_REFUSED)
async def create_integration(
    body: Annotated[IntegrationCreate, Body()], sb: SupabaseDep, settings: SettingsDep
) -> Integration:
    """An export of every key's usage (the Stripe billing export is created here)."""
    try:
        row = await service.create_integration(sb, settings, body, api_key_id=None, all_keys=True)
    except _CHECKED as exc:
        raise _refusal(exc) from None
    return _view(row)


@router.get("", response_model=list[Integration])
async def list_integrations(sb: SupabaseDep) -> list[Integration]:
    """Every integration, of every key and of every key together."""
    return [_view(r) for r in await integrations_db.list_integrations(sb, api_key_id=None)]


@router.get("/{integration_id}", response_model=Integration)
async def get_integration(integration_id: str, sb: SupabaseDep) -> Integration:
    row = await integrations_db.get_integration(sb, _uuid_or_404(integration_id), api_key_id=None)
    if row is None:
        raise _not_found(integration_id)
    return _view(row)


@router.patch("/{integration_id}", response_model=Integration, responses=_URL_REFUSED)
async def update_integration(
    integration_id: str, patch: IntegrationPatch, sb: SupabaseDep, settings: SettingsDep
) -> Integration:
    iid = _uuid_or_404(integration_id)
    try:
        row = await service.update_integration(sb, settings, iid, patch, api_key_id=None)
    except _CHECKED as exc:
        raise _refusal(exc) from None
    if row is None:
        raise _not_found(integration_id)
    return _view(row)


@router.post("/{integration_id}/sync", status_code=202, response_model=Integration)
async def sync_integration(integration_id: str, request: Request, sb: SupabaseDep) -> Integration:
    """Schedule a cycle now."""
    row = await integrations_db.request_sync(sb, _uuid_or_404(integration_id), api_key_id=None)
    if row is None:
        raise _not_found(integration_id)
    _wake_scheduler(request)
    return _view(row)


@router.delete("/{integration_id}", status_code=204)
async def delete_integration(integration_id: str, sb: SupabaseDep) -> Response:
    if not await integrations_db.delete_integration(
        sb, _uuid_or_404(integration_id), api_key_id=None
    ):
        raise _not_found(integration_id)
    return Response(status_code=204)
