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
honoured); anything else -> :class:`DestinationError`.
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from flow.exporters.base import (
    AuthRejected,
    CredentialsInvalid,
    DestinationError,
    DistinctIdMode,
    PayloadTooLarge,
    Retryable,
    SendResult,
    distinct_id_of,
    insert_id,
    occurred_at,
    properties_json,
    retry_after_seconds,
)

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
        try:
            return await self._client.post(f"{self.host}{path}", **kwargs)
        except httpx.TransportError as exc:
            raise Retryable(f"Mixpanel at {self.host} unreachable: {type(exc).__name__}") from exc

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
                    f"Mixpanel /import at {self.host} refused the batch: {_excerpt(res)}"
                )
            skipped: list[tuple[str, str]] = []
            for rec in failed:
                index = rec.get("index")
                ledger_id = (
                    str(rows[index]["id"])
                    if isinstance(index, int) and 0 <= index < len(rows)
                    else str(rec.get("$insert_id"))
                )
                skipped.append(
                    (ledger_id, f"{rec.get('field', '?')}: {rec.get('message', 'rejected')}")
                )
            return SendResult(accepted=len(rows) - len(skipped), skipped=skipped)
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
                answer = {"status": 1 if res.text.strip() == "1" else 0, "error": res.text}
            if isinstance(answer, dict) and answer.get("status") == 1:
                return SendResult(accepted=len(rows))
            error = answer.get("error") if isinstance(answer, dict) else answer
            if "token" in str(error).lower():
                raise AuthRejected(f"Mixpanel /track at {self.host} refused the token: {error}")
            raise DestinationError(f"Mixpanel /track at {self.host} refused the batch: {error}")
        raise _error(res, self.host, "/track")

    async def validate(self) -> None:
        if not self._token or not self._token.isalnum() or len(self._token) > 255:
            raise CredentialsInvalid("bad token: a Mixpanel project token is letters and digits")
        try:
            if self.uses_import:
                res = await self._client.post(
                    f"{self.host}/import",
                    params=self._params,
                    json=[],
                    auth=self._basic_auth(),
                )
            else:
                res = await self._client.post(
                    f"{self.host}/track", params={"verbose": "1"}, json=[]
                )
        except httpx.TransportError as exc:
            raise CredentialsInvalid(
                f"unreachable host: cannot reach Mixpanel at {self.host} ({type(exc).__name__})"
            ) from exc
        if res.status_code in (401, 403):
            what = "service account" if "project_id" in self._params else "API secret"
            raise CredentialsInvalid(
                f"bad secret: Mixpanel at {self.host} rejected the {what} "
                "(check it, its project_id, and the region: us, eu and in are separate)"
            )
        if res.status_code not in (200, 400):
            raise CredentialsInvalid(
                f"unexpected answer from Mixpanel at {self.host}: HTTP {res.status_code} "
                "(is this a Mixpanel API host?)"
            )


def _failed_records(res: httpx.Response) -> list[dict[str, Any]] | None:
    try:
        body = res.json()
    except ValueError:
        return None
    failed = body.get("failed_records") if isinstance(body, dict) else None
    return failed if isinstance(failed, list) and failed else None


def _excerpt(res: httpx.Response) -> str:
    return f"HTTP {res.status_code} {res.text[:300]}"


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
            f"Mixpanel {path} at {host} answered HTTP {code}",
            retry_after_seconds(res.headers.get("Retry-After")),
        )
    return DestinationError(f"Mixpanel {path} at {host} refused the batch: {_excerpt(res)}")
