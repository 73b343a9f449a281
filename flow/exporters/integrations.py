"""Analytics integrations: the request bodies, credential validation, encryption, and the
rows in ``analytics_integrations`` (read and written through supabase-py).

Used by the API (scoped to the calling key) and the CLI (operators, who may export every
key's usage with ``all_keys``). Credentials are validated against the destination before
anything is saved, stored encrypted, and only ever shown as a masked hint.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from supabase import AsyncClient

from flow.config import Settings
from flow.db.client import call, first_of, rows_of
from flow.exporters.base import DEFAULT_EVENT_NAME, CredentialsInvalid, DistinctIdMode
from flow.exporters.crypto import CredentialBox, mask
from flow.exporters.mixpanel import TRACK_WINDOW, MixpanelDestination, mixpanel_host
from flow.exporters.posthog import PostHogDestination, posthog_host

TABLE = "analytics_integrations"
PUBLIC_FIELDS = (
    "id,name,provider,api_key_id,all_keys,settings,credentials_hint,status,"
    "sync_interval_seconds,backfill_from,cursor_txid,cursor_seq,last_synced_at,next_sync_at,"
    "last_error,last_warning,events_exported,events_skipped,created_at,updated_at"
)
VALIDATE_TIMEOUT_SECONDS = 10.0


class IntegrationInputError(Exception):
    """A request that cannot be saved as given (4xx); the message says why."""


class BackfillDays(BaseModel):
    model_config = ConfigDict(extra="forbid")
    days: int = Field(ge=1, le=3650)


class BackfillFrom(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: date | datetime = Field(alias="from")


Backfill = Literal["none", "all"] | BackfillDays | BackfillFrom
EventName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[\w$ .:/-]+$")]


class _SyncFields(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=200)
    sync_interval_seconds: int = Field(default=3600, ge=60, le=86400)
    backfill: Backfill = "none"
    event_name: EventName = DEFAULT_EVENT_NAME
    distinct_id: DistinctIdMode = DistinctIdMode.SOURCE


def _check_url(v: str | None) -> str | None:
    if v is None:
        return v
    try:
        url = httpx.URL(v)
    except httpx.InvalidURL as exc:
        raise ValueError(f"is not a valid URL: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an http(s) URL")
    return v.rstrip("/")


class PostHogCreate(_SyncFields):
    provider: Literal["posthog"]
    region: Literal["us", "eu"] | None = None
    host: str | None = Field(default=None, max_length=500)
    project_api_key: str = Field(min_length=1, max_length=200)

    @field_validator("host")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return _check_url(v)

    @model_validator(mode="after")
    def _one_place(self) -> PostHogCreate:
        if self.region and self.host:
            raise ValueError("give either region or host, not both")
        return self


class ServiceAccount(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=200)
    secret: str = Field(min_length=1, max_length=500)
    project_id: str | int


class MixpanelCreate(_SyncFields):
    provider: Literal["mixpanel"]
    region: Literal["us", "eu", "in"] | None = None
    api_host: str | None = Field(default=None, max_length=500)
    project_token: str = Field(min_length=1, max_length=255)
    api_secret: str | None = Field(default=None, min_length=1, max_length=500)
    service_account: ServiceAccount | None = None

    @field_validator("api_host")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return _check_url(v)

    @model_validator(mode="after")
    def _consistent(self) -> MixpanelCreate:
        if self.region and self.api_host:
            raise ValueError("give either region or api_host, not both")
        if self.api_secret and self.service_account:
            raise ValueError("give either api_secret or service_account, not both")
        return self


IntegrationCreate = Annotated[PostHogCreate | MixpanelCreate, Field(discriminator="provider")]


class IntegrationPatch(BaseModel):
    """Edits: any subset of credentials, destination and sync settings."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=200)
    region: Literal["us", "eu", "in"] | None = None
    host: str | None = Field(default=None, max_length=500)
    api_host: str | None = Field(default=None, max_length=500)
    project_api_key: str | None = Field(default=None, min_length=1, max_length=200)
    project_token: str | None = Field(default=None, min_length=1, max_length=255)
    api_secret: str | None = Field(default=None, min_length=1, max_length=500)
    service_account: ServiceAccount | None = None
    sync_interval_seconds: int | None = Field(default=None, ge=60, le=86400)
    event_name: EventName | None = None
    distinct_id: DistinctIdMode | None = None

    @field_validator("host", "api_host")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return _check_url(v)


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


def split_body(body: PostHogCreate | MixpanelCreate) -> tuple[dict[str, Any], dict[str, Any]]:
    """(settings stored in clear, credentials stored encrypted)."""
    common = {"event_name": body.event_name, "distinct_id": body.distinct_id.value}
    if isinstance(body, PostHogCreate):
        return (
            {**common, "region": body.region, "host": posthog_host(body.region, body.host)},
            {"project_api_key": body.project_api_key},
        )
    creds: dict[str, Any] = {"project_token": body.project_token}
    if body.api_secret:
        creds["api_secret"] = body.api_secret
    if body.service_account:
        creds["service_account"] = body.service_account.model_dump(mode="json")
    return (
        {**common, "region": body.region, "api_host": mixpanel_host(body.region, body.api_host)},
        creds,
    )


def credentials_hint(provider: str, creds: dict[str, Any]) -> str:
    if provider == "posthog":
        return f"key {mask(creds['project_api_key'])}"
    parts = [f"token {mask(creds['project_token'])}"]
    if creds.get("api_secret"):
        parts.append(f"secret {mask(creds['api_secret'])}")
    if creds.get("service_account"):
        sa = creds["service_account"]
        parts.append(f"service account {sa['username']} (project {sa['project_id']})")
    return ", ".join(parts)


def build_destination(
    provider: str,
    settings_json: dict[str, Any],
    creds: dict[str, Any],
    client: httpx.AsyncClient,
    source_id: str,
) -> PostHogDestination | MixpanelDestination:
    mode = DistinctIdMode(settings_json.get("distinct_id") or "source")
    event_name = settings_json.get("event_name") or DEFAULT_EVENT_NAME
    if provider == "posthog":
        return PostHogDestination(
            client,
            host=settings_json["host"],
            project_api_key=creds["project_api_key"],
            event_name=event_name,
            distinct_id_mode=mode,
            source_id=source_id,
        )
    return MixpanelDestination(
        client,
        api_host=settings_json["api_host"],
        project_token=creds["project_token"],
        api_secret=creds.get("api_secret"),
        service_account=creds.get("service_account"),
        event_name=event_name,
        distinct_id_mode=mode,
        source_id=source_id,
    )


def public_view(row: dict[str, Any]) -> dict[str, Any]:
    """What callers may see: status and settings, a masked hint, never credentials."""
    settings_json = dict(row.get("settings") or {})
    return {
        "id": row["id"],
        "name": row.get("name"),
        "provider": row["provider"],
        "api_key_id": row.get("api_key_id"),
        "all_keys": row.get("all_keys", False),
        "status": row["status"],
        "region": settings_json.get("region"),
        "host": settings_json.get("host") or settings_json.get("api_host"),
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


async def validate_credentials(
    provider: str, settings_json: dict[str, Any], creds: dict[str, Any], source_id: str
) -> None:
    async with httpx.AsyncClient(timeout=VALIDATE_TIMEOUT_SECONDS) as client:
        dest = build_destination(provider, settings_json, creds, client, source_id)
        await dest.validate()


def _check_track_window(
    provider: str, creds: dict[str, Any], backfill_from: datetime | None, now: datetime
) -> None:
    if provider != "mixpanel" or creds.get("api_secret") or creds.get("service_account"):
        return
    if backfill_from is None or backfill_from < now - TRACK_WINDOW:
        raise IntegrationInputError(
            "Mixpanel /track accepts only the last 5 days: to backfill further, give an "
            "api_secret or a service_account (used with /import), or a shorter backfill"
        )


async def create_integration(
    sb: AsyncClient,
    settings: Settings,
    body: PostHogCreate | MixpanelCreate,
    *,
    api_key_id: str | None,
    all_keys: bool = False,
    validate: bool = True,
) -> dict[str, Any]:
    box = CredentialBox.from_settings(settings)
    now = datetime.now(UTC)
    settings_json, creds = split_body(body)
    backfill_from, start_now = backfill_start(body.backfill, now)
    if not start_now:
        _check_track_window(body.provider, creds, backfill_from, now)
    if validate:
        await validate_credentials(
            body.provider, settings_json, creds, settings.flow_export_source_id
        )
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
        "credentials_hint": credentials_hint(body.provider, creds),
        "sync_interval_seconds": body.sync_interval_seconds,
        "backfill_from": None if start_now else (backfill_from and backfill_from.isoformat()),
        "status": "active",
    }
    created = first_of(await call(sb.table(TABLE).insert(row).execute))
    assert created is not None
    if start_now:
        await call(sb.rpc("analytics_export_start_now", {"p_id": created["id"]}).execute)
    found = await get_integration(sb, created["id"], api_key_id=None)
    assert found is not None
    return found


def _scoped(query: Any, api_key_id: str | None) -> Any:
    return query.eq("api_key_id", api_key_id) if api_key_id is not None else query


async def get_integration(
    sb: AsyncClient, integration_id: str, *, api_key_id: str | None
) -> dict[str, Any] | None:
    q = sb.table(TABLE).select(PUBLIC_FIELDS).eq("id", integration_id)
    return first_of(await call(_scoped(q, api_key_id).limit(1).execute))


async def list_integrations(sb: AsyncClient, *, api_key_id: str | None) -> list[dict[str, Any]]:
    q = sb.table(TABLE).select(PUBLIC_FIELDS).order("created_at")
    return rows_of(await call(_scoped(q, api_key_id).execute))


async def _update(
    sb: AsyncClient, integration_id: str, api_key_id: str | None, values: dict[str, Any]
) -> dict[str, Any] | None:
    q = sb.table(TABLE).update(values).eq("id", integration_id)
    if not rows_of(await call(_scoped(q, api_key_id).execute)):
        return None
    return await get_integration(sb, integration_id, api_key_id=api_key_id)


async def pause_integration(
    sb: AsyncClient, integration_id: str, *, api_key_id: str | None
) -> dict[str, Any] | None:
    # A cycle in flight sees the new status at its next page and stops.
    return await _update(sb, integration_id, api_key_id, {"status": "paused"})


async def resume_integration(
    sb: AsyncClient, integration_id: str, *, api_key_id: str | None
) -> dict[str, Any] | None:
    return await _update(
        sb,
        integration_id,
        api_key_id,
        {"status": "active", "last_error": None, "next_sync_at": datetime.now(UTC).isoformat()},
    )


async def request_sync(
    sb: AsyncClient, integration_id: str, *, api_key_id: str | None
) -> dict[str, Any] | None:
    return await _update(
        sb, integration_id, api_key_id, {"next_sync_at": datetime.now(UTC).isoformat()}
    )


async def delete_integration(
    sb: AsyncClient, integration_id: str, *, api_key_id: str | None
) -> bool:
    q = sb.table(TABLE).delete().eq("id", integration_id)
    return bool(rows_of(await call(_scoped(q, api_key_id).execute)))


async def update_integration(
    sb: AsyncClient,
    settings: Settings,
    integration_id: str,
    patch: IntegrationPatch,
    *,
    api_key_id: str | None,
    validate: bool = True,
) -> dict[str, Any] | None:
    q = sb.table(TABLE).select("*").eq("id", integration_id)
    row = first_of(await call(_scoped(q, api_key_id).limit(1).execute))
    if row is None:
        return None
    box = CredentialBox.from_settings(settings)
    provider = row["provider"]
    settings_json = dict(row["settings"] or {})
    creds = box.open(row["credentials_encrypted"])
    given = patch.model_dump(exclude_unset=True)
    allowed = (
        {"region", "host", "project_api_key"}
        if provider == "posthog"
        else {"region", "api_host", "project_token", "api_secret", "service_account"}
    )
    wrong = {
        k
        for k in given
        if k
        in {"region", "host", "api_host", "project_api_key", "project_token"}
        | {"api_secret", "service_account"}
        and k not in allowed
    }
    if wrong:
        raise IntegrationInputError(f"{', '.join(sorted(wrong))} do not apply to {provider}")
    if provider == "posthog":
        if "region" in given or "host" in given:
            if given.get("region") not in (None, "us", "eu"):
                raise IntegrationInputError("PostHog regions are us and eu")
            settings_json["region"] = given.get("region")
            settings_json["host"] = posthog_host(given.get("region"), given.get("host"))
        if "project_api_key" in given:
            creds["project_api_key"] = given["project_api_key"]
    else:
        if "region" in given or "api_host" in given:
            settings_json["region"] = given.get("region")
            settings_json["api_host"] = mixpanel_host(given.get("region"), given.get("api_host"))
        for k in ("project_token", "api_secret", "service_account"):
            if k in given:
                creds[k] = given[k]
        if creds.get("api_secret") and creds.get("service_account"):
            if "service_account" in given:
                creds.pop("api_secret", None)
            else:
                creds.pop("service_account", None)
    for k in ("event_name", "distinct_id"):
        if given.get(k) is not None:
            settings_json[k] = str(given[k])
    credentials_changed = bool(given.keys() & (allowed - {"region"}) | ({"region"} & given.keys()))
    if validate and credentials_changed:
        await validate_credentials(provider, settings_json, creds, settings.flow_export_source_id)
    values: dict[str, Any] = {"settings": settings_json}
    if patch.name is not None:
        values["name"] = patch.name
    if patch.sync_interval_seconds is not None:
        values["sync_interval_seconds"] = patch.sync_interval_seconds
    if credentials_changed:
        values["credentials_encrypted"] = box.seal(creds)
        values["credentials_hint"] = credentials_hint(provider, creds)
        if row["status"] == "error":
            # New credentials are the fix an error asked for: sync again right away.
            values.update(
                status="active", last_error=None, next_sync_at=datetime.now(UTC).isoformat()
            )
    return await _update(sb, integration_id, api_key_id, values)


__all__ = [
    "CredentialsInvalid",
    "IntegrationCreate",
    "IntegrationInputError",
    "IntegrationPatch",
    "MixpanelCreate",
    "PostHogCreate",
]
