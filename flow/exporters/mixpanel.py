"""Mixpanel destination: ``/import?strict=1`` when a secret is set, ``/track`` otherwise.

``/import`` takes historical timestamps and authenticates with Basic auth (a service
account ``username:secret`` plus ``?project_id=``, or the legacy API secret as the user
with an empty password); strict mode answers 400 listing ``failed_records`` while still
ingesting the valid ones, so those are reported with their reasons and never resent.
``/track`` authenticates with the project token inside each event and accepts only the
last 5 days: older rows are not sent but reported (counted as skipped, with a warning
naming the fix), never dropped in silence. Up to 2000 events a request; ``$insert_id``
is the ledger id without dashes (32 characters), Mixpanel's dedup key.

Failure behaviour: 401/403 -> :class:`AuthRejected`; 413 -> :class:`PayloadTooLarge`
(the cycle splits the batch); 429/5xx/network -> :class:`Retryable` (``Retry-After``
honoured); anything else, a redirect included (none is followed) ->
:class:`DestinationError`.

:data:`MIXPANEL` is its :class:`DestinationSpec`: the create body (``region`` or
``api_host``, ``project_token``, and ``api_secret`` or ``service_account`` for
``/import``), the fields an edit may change, the masked hint, and the refusal of a
backfill beyond /track's window when there is no secret to use /import.

Nothing Mixpanel answers reaches an error, a warning or an API answer as text: errors
carry the status and a fixed reason; a record strict mode refuses is skipped with a
fixed reason, and Mixpanel's own reason for it is logged (info, truncated) for the
operator.
"""

from __future__ import annotations

import gzip
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
from pydantic import BaseModel, ConfigDict, Field, model_validator

from flow.exporters.base import (
    AuthRejected,
    CredentialsInvalid,
    Destination,
    DestinationError,
    DistinctIdMode,
    IntegrationInputError,
    PayloadTooLarge,
    Retryable,
    SendResult,
    distinct_id_of,
    insert_id,
    occurred_at,
    post,
    properties_json,
    retry_after_seconds,
)
from flow.exporters.crypto import mask
from flow.exporters.spec import DestinationSpec, HttpUrlText, IntegrationBody, Stored, event_options
from flow.net.outbound import UNREACHABLE, answered

log = logging.getLogger(__name__)

REGION_HOSTS = {
    "us": "https://api.mixpanel.com",
    "eu": "https://api-eu.mixpanel.com",
    "in": "https://api-in.mixpanel.com",
}
MAX_BATCH = 2000
# /track refuses events older than 5 days; keep a margin for clock skew and transit.
TRACK_WINDOW = timedelta(days=5) - timedelta(minutes=10)
TOO_OLD_REASON = (
    "older than 5 days: Mixpanel /track refuses it; add an API secret or a service "
    "account to export it through /import"
)
REFUSED_REASON = "refused by Mixpanel's validation (/import strict mode; its reason is logged)"


def mixpanel_host(region: str | None, api_host: str | None) -> str:
    if api_host:
        return api_host.rstrip("/")
    return REGION_HOSTS[region or "us"]


class MixpanelDestination:
    """Sends export events to one Mixpanel project.

    Parameters:
        api_host: ``https://api.mixpanel.com`` (or -eu / -in, or a proxy).
        project_token: identifies the project (``/track``, and inside every event).
        api_secret: legacy project API secret; enables ``/import``.
        service_account: ``{"username", "secret", "project_id"}``; enables ``/import``.
    """

    max_batch = MAX_BATCH

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        api_host: str,
        project_token: str,
        api_secret: str | None,
        service_account: dict[str, str] | None,
        event_name: str,
        distinct_id_mode: DistinctIdMode,
        source_id: str,
    ) -> None:
        self._client = client
        self.host = api_host.rstrip("/")
        self._token = project_token
        self._event = json.dumps(event_name)
        self._mode = distinct_id_mode
        self._source_id = source_id
        self._auth: tuple[str, str] | None = None
        self._params: dict[str, str] = {"strict": "1"}
        if service_account:
            self._auth = (service_account["username"], service_account["secret"])
            self._params["project_id"] = str(service_account["project_id"])
        elif api_secret:
            self._auth = (api_secret, "")

    @property
    def uses_import(self) -> bool:
        return self._auth is not None

    def _basic_auth(self) -> httpx.BasicAuth:
        assert self._auth is not None
        return httpx.BasicAuth(*self._auth)

    def events_json(self, rows: list[dict[str, Any]]) -> str:
        dumps = json.dumps
        token = dumps(self._token)
        return (
            "["
            + ",".join(
                f'{{"event":{self._event},"properties":{{'
                f'"time":{int(occurred_at(r).timestamp() * 1000)},'
                f'"distinct_id":{dumps(distinct_id_of(r, self._mode, self._source_id))},'
                f'"$insert_id":"{insert_id(str(r["id"]))}","token":{token},'
                f"{properties_json(r)}}}}}"
                for r in rows
            )
            + "]"
        )

    async def send(self, rows: list[dict[str, Any]], *, historical: bool) -> SendResult:
        result = SendResult()
        if not self.uses_import:
            oldest_allowed = datetime.now(UTC) - TRACK_WINDOW
            fresh = []
            for r in rows:
                if occurred_at(r) < oldest_allowed:
                    result.skipped.append((str(r["id"]), TOO_OLD_REASON))
                else:
                    fresh.append(r)
            rows = fresh
        if not rows:
            return result
        if self.uses_import:
            result.add(await self._import(rows))
        else:
            result.add(await self._track(rows))
        return result

    async def _post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await post(self._client, f"{self.host}{path}", what="Mixpanel", **kwargs)

    async def _import(self, rows: list[dict[str, Any]]) -> SendResult:
        body = gzip.compress(self.events_json(rows).encode(), compresslevel=1)
        res = await self._post(
            "/import",
            params=self._params,
            content=body,
            auth=self._basic_auth(),
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        if res.status_code == 200:
            return SendResult(accepted=len(rows))
        if res.status_code == 400:
            failed = _failed_records(res)
            if failed is None:
                raise DestinationError(
                    f"Mixpanel /import at {self.host} refused the batch: {answered(400)}"
                )
            by_insert_id = {insert_id(str(r["id"])): str(r["id"]) for r in rows}
            refused: dict[str, str] = {}
            for rec in failed:
                index = rec.get("index")
                ledger_id = (
                    str(rows[index]["id"])
                    if isinstance(index, int) and 0 <= index < len(rows)
                    else by_insert_id.get(str(rec.get("$insert_id")), "(unidentified)")
                )
                why = f"{rec.get('field', '?')}: {rec.get('message', 'rejected')}"
                log.info("Mixpanel /import refused usage event %s: %.200r", ledger_id, why)
                refused[ledger_id] = REFUSED_REASON
            return SendResult(
                accepted=max(0, len(rows) - len(refused)), skipped=list(refused.items())
            )
        raise _error(res, self.host, "/import")

    async def _track(self, rows: list[dict[str, Any]]) -> SendResult:
        res = await self._post(
            "/track",
            params={"verbose": "1", "ip": "0"},
            content=self.events_json(rows).encode(),
            headers={"Content-Type": "application/json"},
        )
        if res.status_code == 200:
            try:
                answer = res.json()
            except ValueError:
                answer = {"status": 1 if res.text.strip() == "1" else 0, "error": ""}
            if isinstance(answer, dict) and answer.get("status") == 1:
                return SendResult(accepted=len(rows))
            error = answer.get("error") if isinstance(answer, dict) else answer
            if "token" in str(error).lower():
                raise AuthRejected(
                    f"Mixpanel /track at {self.host} refused the project token; "
                    "edit the integration's credentials to resume"
                )
            raise DestinationError(
                f"Mixpanel /track at {self.host} refused the batch (it answered status 0)"
            )
        raise _error(res, self.host, "/track")

    async def validate(self) -> None:
        if not self._token or not self._token.isalnum() or len(self._token) > 255:
            raise CredentialsInvalid("bad token: a Mixpanel project token is letters and digits")
        try:
            if self.uses_import:
                res = await self._post(
                    "/import", params=self._params, json=[], auth=self._basic_auth()
                )
            else:
                res = await self._post("/track", params={"verbose": "1"}, json=[])
        except Retryable:
            raise CredentialsInvalid(f"unreachable host: {UNREACHABLE}") from None
        if res.status_code in (401, 403):
            what = "service account" if "project_id" in self._params else "API secret"
            raise CredentialsInvalid(
                f"bad secret: Mixpanel at {self.host} rejected the {what} "
                "(check it, its project_id, and the region: us, eu and in are separate)"
            )
        if res.status_code not in (200, 400):
            raise CredentialsInvalid(
                f"unexpected answer from Mixpanel at {self.host}: {answered(res.status_code)} "
                "(is this a Mixpanel API host?)"
            )


def _failed_records(res: httpx.Response) -> list[dict[str, Any]] | None:
    try:
        body = res.json()
    except ValueError:
        return None
    failed = body.get("failed_records") if isinstance(body, dict) else None
    return failed if isinstance(failed, list) and failed else None


def _error(res: httpx.Response, host: str, path: str) -> DestinationError:
    code = res.status_code
    if code in (401, 403):
        return AuthRejected(
            f"Mixpanel {path} at {host} rejected the credentials (HTTP {code}); "
            "edit the integration's credentials to resume"
        )
    if code == 413:
        return PayloadTooLarge(f"Mixpanel {path} at {host} answered 413 (request too large)")
    if code == 429 or code >= 500:
        return Retryable(
            f"Mixpanel {path} at {host}: {answered(code)}",
            retry_after_seconds(res.headers.get("Retry-After")),
        )
    return DestinationError(f"Mixpanel {path} at {host} refused the batch: {answered(code)}")


class ServiceAccount(BaseModel):
    model_config = ConfigDict(extra="forbid")
    username: str = Field(min_length=1, max_length=200)
    secret: str = Field(min_length=1, max_length=500)
    project_id: str | int


class MixpanelCreate(IntegrationBody):
    provider: Literal["mixpanel"]
    region: Literal["us", "eu", "in"] | None = None
    api_host: HttpUrlText | None = None
    project_token: str = Field(min_length=1, max_length=255)
    api_secret: str | None = Field(default=None, min_length=1, max_length=500)
    service_account: ServiceAccount | None = None

    @model_validator(mode="after")
    def _consistent(self) -> MixpanelCreate:
        if self.region and self.api_host:
            raise ValueError("give either region or api_host, not both")
        if self.api_secret and self.service_account:
            raise ValueError("give either api_secret or service_account, not both")
        return self


class MixpanelPatch(BaseModel):
    """The Mixpanel fields an edit may change; a new ``api_secret`` replaces a service
    account and a new ``service_account`` replaces a secret."""

    model_config = ConfigDict(extra="forbid")
    region: Literal["us", "eu", "in"] | None = None
    api_host: HttpUrlText | None = None
    project_token: str | None = Field(default=None, min_length=1, max_length=255)
    api_secret: str | None = Field(default=None, min_length=1, max_length=500)
    service_account: ServiceAccount | None = None


class MixpanelSpec(DestinationSpec[MixpanelCreate]):
    """Mixpanel: settings ``region`` and ``api_host``; credentials ``project_token`` and
    optionally ``api_secret`` or ``service_account``."""

    name = "mixpanel"
    create_model = MixpanelCreate
    patch_model = MixpanelPatch
    host_setting = "api_host"
    cli_help = {
        "region": "us|eu|in",
        "api_host": "Mixpanel API host (a proxy)",
        "project_token": "Mixpanel project token",
        "api_secret": "Mixpanel API secret (enables /import)",
        "service_account": "Mixpanel USER:SECRET@PROJECT_ID (enables /import)",
    }

    def split_body(self, body: MixpanelCreate) -> tuple[dict[str, Any], dict[str, Any]]:
        creds: dict[str, Any] = {"project_token": body.project_token}
        if body.api_secret:
            creds["api_secret"] = body.api_secret
        if body.service_account:
            creds["service_account"] = body.service_account.model_dump(mode="json")
        return (
            {"region": body.region, "api_host": mixpanel_host(body.region, body.api_host)},
            creds,
        )

    def hint(self, creds: dict[str, Any]) -> str:
        parts = [f"token {mask(creds['project_token'])}"]
        if creds.get("api_secret"):
            parts.append(f"secret {mask(creds['api_secret'])}")
        if creds.get("service_account"):
            sa = creds["service_account"]
            parts.append(f"service account {sa['username']} (project {sa['project_id']})")
        return ", ".join(parts)

    def apply_patch(self, given: dict[str, Any], stored: Stored) -> None:
        if "region" in given or "api_host" in given:
            stored.settings["region"] = given.get("region")
            stored.settings["api_host"] = mixpanel_host(given.get("region"), given.get("api_host"))
        for k in ("project_token", "api_secret", "service_account"):
            if k in given:
                stored.creds[k] = given[k]
        if stored.creds.get("api_secret") and stored.creds.get("service_account"):
            if "service_account" in given:
                stored.creds.pop("api_secret", None)
            else:
                stored.creds.pop("service_account", None)

    def build(self, client: httpx.AsyncClient, stored: Stored, source_id: str) -> Destination:
        return MixpanelDestination(
            client,
            api_host=stored.settings["api_host"],
            project_token=stored.creds["project_token"],
            api_secret=stored.creds.get("api_secret"),
            service_account=stored.creds.get("service_account"),
            **event_options(stored.settings, source_id),
        )

    def cli_value(self, field: str, text: str) -> Any:
        if field != "service_account":
            return text
        username, _, rest = text.partition(":")
        secret, _, project_id = rest.rpartition("@")
        return {"username": username, "secret": secret, "project_id": project_id}

    def check_backfill(
        self, creds: dict[str, Any], backfill_from: datetime | None, now: datetime
    ) -> None:
        if creds.get("api_secret") or creds.get("service_account"):
            return
        if backfill_from is None or backfill_from < now - TRACK_WINDOW:
            raise IntegrationInputError(
                "Mixpanel /track accepts only the last 5 days: to backfill further, give an "
                "api_secret or a service_account (used with /import), or a shorter backfill"
            )


MIXPANEL = MixpanelSpec()
