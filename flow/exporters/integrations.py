"""Analytics integrations: creating and editing them (validation, encryption, the rows
written through :mod:`flow.db.integrations`), and what callers may see of them.

Used by the API (scoped to the calling key) and the CLI (operators, who may export every
key's usage with ``all_keys``). Each destination's fields, checks and hint come from its
:class:`DestinationSpec` in :mod:`flow.exporters.registry`; nothing here knows one
destination from another. Reading, listing, pausing, resuming and deleting need no
destination and are the repository's own functions.

Failure behaviour: the destination's URLs must pass the outbound-URL policy
(:class:`~flow.net.outbound.UrlNotAllowed` names the rule, nothing is sent); credentials
are validated against the destination before anything is saved, through a client pinned
to the checked address (:class:`CredentialsInvalid` names the problem, never with the
destination's answer); a request a destination cannot take raises
:class:`IntegrationInputError`; credentials are stored encrypted
(:class:`SecretKeyMissing` without ``FLOW_SECRET_KEY``, :class:`CredentialsUnreadable`
when it changed) and only ever shown as a masked hint.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from supabase import AsyncClient

from flow.config import Settings
from flow.db import integrations as integrations_db
from flow.db.integrations import IntegrationStatus
from flow.exporters.base import DEFAULT_EVENT_NAME, IntegrationInputError
from flow.exporters.crypto import CredentialBox
from flow.exporters.registry import IntegrationCreate, IntegrationPatch, spec_for
from flow.exporters.spec import (
    Backfill,
    BackfillDays,
    BackfillFrom,
    CommonPatch,
    DestinationSpec,
    Stored,
)
from flow.net.outbound import UrlNotAllowed, check_url, outbound_client

VALIDATE_TIMEOUT_SECONDS = 10.0


def backfill_start(backfill: Backfill, now: datetime) -> tuple[datetime | None, bool]:
    """(backfill_from, start the cursor at the current horizon)."""
    if backfill == "none":
        return now, True
    if backfill == "all":
        return None, False
    if isinstance(backfill, BackfillDays):
        return now - timedelta(days=backfill.days), False
    assert isinstance(backfill, BackfillFrom)
    start = backfill.from_
    if isinstance(start, datetime):
        return (start if start.tzinfo else start.replace(tzinfo=UTC)), False
    return datetime(start.year, start.month, start.day, tzinfo=UTC), False


def public_view(row: dict[str, Any]) -> dict[str, Any]:
    """What callers may see: status and settings, a masked hint, never credentials."""
    settings_json = dict(row.get("settings") or {})
    host_setting = spec_for(row["provider"]).host_setting
    return {
        "id": row["id"],
        "name": row.get("name"),
        "provider": row["provider"],
        "api_key_id": row.get("api_key_id"),
        "all_keys": row.get("all_keys", False),
        "status": row["status"],
        "region": settings_json.get("region"),
        "host": settings_json.get(host_setting) if host_setting else None,
        "event_name": settings_json.get("event_name", DEFAULT_EVENT_NAME),
        "distinct_id": settings_json.get("distinct_id", "source"),
        "credentials_hint": row.get("credentials_hint"),
        "sync_interval_seconds": row["sync_interval_seconds"],
        "backfill_from": row.get("backfill_from"),
        "cursor": {"txid": str(row.get("cursor_txid", "0")), "seq": row.get("cursor_seq", 0)},
        "last_synced_at": row.get("last_synced_at"),
        "next_sync_at": row.get("next_sync_at"),
        "last_error": row.get("last_error"),
        "last_warning": row.get("last_warning"),
        "events_exported": row.get("events_exported", 0),
        "events_skipped": row.get("events_skipped", 0),
        "created_at": row.get("created_at"),
        "updated_at": row.get("updated_at"),
    }


async def check_destination_urls(
    spec: DestinationSpec[Any], settings_json: dict[str, Any], settings: Settings
) -> None:
    """Refuse a destination whose URLs the outbound-URL policy refuses (raises
    :class:`~flow.net.outbound.UrlNotAllowed`). A host that does not resolve yet passes
    here: every connection checks it again."""
    for name, url in spec.urls(settings_json).items():
        try:
            await check_url(url, settings, require_resolution=False)
        except UrlNotAllowed as exc:
            raise UrlNotAllowed(f"{name}: {exc}") from None


async def validate_credentials(
    spec: DestinationSpec[Any],
    settings_json: dict[str, Any],
    creds: dict[str, Any],
    settings: Settings,
) -> None:
    """Ask the destination whether it takes these credentials; raises
    :class:`CredentialsInvalid` naming the problem (or ``UrlNotAllowed`` when its host
    now resolves to a refused address)."""
    async with outbound_client(settings, timeout=VALIDATE_TIMEOUT_SECONDS) as client:
        dest = spec.build(client, Stored(settings_json, creds), settings.flow_export_source_id)
        await dest.validate()


async def create_integration(
    sb: AsyncClient,
    settings: Settings,
    body: IntegrationCreate,
    *,
    api_key_id: str | None,
    all_keys: bool = False,
    validate: bool = True,
) -> dict[str, Any]:
    """Check, validate (unless ``validate`` is false), encrypt and save an integration;
    returns its public row."""
    spec = spec_for(body.provider)
    if spec.operator_only and not all_keys:
        raise IntegrationInputError(
            f"a {spec.name} integration bills every key: the operator adds it "
            "(POST /api/admin/integrations or flow integrations add)"
        )
    box = CredentialBox.from_settings(settings)
    now = datetime.now(UTC)
    destination_settings, creds = spec.split_body(body)
    settings_json = {
        "event_name": body.event_name,
        "distinct_id": body.distinct_id.value,
        **destination_settings,
    }
    backfill_from, start_now = backfill_start(body.backfill, now)
    if not start_now:
        spec.check_backfill(creds, backfill_from, now)
    await check_destination_urls(spec, settings_json, settings)
    if validate:
        await validate_credentials(spec, settings_json, creds, settings)
    settings_json["backfill"] = (
        body.backfill if isinstance(body.backfill, str) else body.backfill.model_dump(mode="json")
    )
    row = {
        "api_key_id": api_key_id,
        "all_keys": all_keys,
        "name": body.name,
        "provider": body.provider,
        "settings": settings_json,
        "credentials_encrypted": box.seal(creds),
        "credentials_hint": spec.hint(creds),
        "sync_interval_seconds": body.sync_interval_seconds,
        "backfill_from": None if start_now else (backfill_from and backfill_from.isoformat()),
        "status": IntegrationStatus.ACTIVE,
    }
    return await integrations_db.create_integration(sb, row, start_now=start_now)


async def update_integration(
    sb: AsyncClient,
    settings: Settings,
    integration_id: str,
    patch: IntegrationPatch,
    *,
    api_key_id: str | None,
    validate: bool = True,
) -> dict[str, Any] | None:
    """Apply an edit; new credentials or a new destination are validated first (unless
    ``validate`` is false) and put an integration in error back to work. Returns the
    public row, or ``None`` when the key has no such integration."""
    row = await integrations_db.get_integration_with_credentials(
        sb, integration_id, api_key_id=api_key_id
    )
    if row is None:
        return None
    box = CredentialBox.from_settings(settings)
    provider = row["provider"]
    spec = spec_for(provider)
    settings_json = dict(row["settings"] or {})
    creds = box.open(row["credentials_encrypted"])
    given = patch.model_dump(exclude_unset=True)
    own = {k: v for k, v in given.items() if k not in CommonPatch.model_fields}
    wrong = own.keys() - spec.patch_model.model_fields.keys()
    if wrong:
        raise IntegrationInputError(f"{', '.join(sorted(wrong))} do not apply to {provider}")
    spec.apply_patch(own, Stored(settings_json, creds))
    for k in ("event_name", "distinct_id"):
        if given.get(k) is not None:
            settings_json[k] = str(given[k])
    credentials_changed = bool(own)
    if credentials_changed:
        await check_destination_urls(spec, settings_json, settings)
    if validate and credentials_changed:
        await validate_credentials(spec, settings_json, creds, settings)
    values: dict[str, Any] = {"settings": settings_json}
    if patch.name is not None:
        values["name"] = patch.name
    if patch.sync_interval_seconds is not None:
        values["sync_interval_seconds"] = patch.sync_interval_seconds
    if credentials_changed:
        values["credentials_encrypted"] = box.seal(creds)
        values["credentials_hint"] = spec.hint(creds)
        if row["status"] == IntegrationStatus.ERROR:
            # New credentials are the fix an error asked for: sync again right away.
            values.update(
                status=IntegrationStatus.ACTIVE,
                last_error=None,
                next_sync_at=datetime.now(UTC).isoformat(),
            )
    return await integrations_db.update_columns(sb, integration_id, values, api_key_id=api_key_id)
