"""PostHog destination: one ``POST {host}/batch/`` (gzip) per batch of ledger rows.

The body is PostHog's batch format (``api_key``, ``batch``, ``historical_migration``,
``sent_at``); each event carries a ``uuid`` derived from the ledger id, which PostHog
uses to deduplicate a resent event. PostHog answers exactly 200 for an accepted batch.
Failure behaviour: 401/403 -> :class:`AuthRejected`; 413 -> :class:`PayloadTooLarge`;
408/429/5xx and network errors -> :class:`Retryable` (with ``Retry-After``); any other
status, a redirect included (none is followed) -> :class:`DestinationError`. Messages
carry the status, never PostHog's answer. Credentials are checked before saving with a feature
flags request, which, unlike ``/batch/``, looks the project key up and answers 401 for a
key that does not exist on that host (a wrong key, or a project in the other region).

:data:`POSTHOG` is its :class:`DestinationSpec`: the create body (``region`` or ``host``,
``project_api_key``), the fields an edit may change, and the masked key hint.
"""

from __future__ import annotations

import gzip
import json
from datetime import UTC, datetime
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
    export_uuid,
    post,
    properties_json,
    retry_after_seconds,
)
from flow.exporters.crypto import mask
from flow.exporters.spec import DestinationSpec, HttpUrlText, IntegrationBody, Stored, event_options
from flow.net.outbound import UNREACHABLE, answered

REGION_HOSTS = {"us": "https://us.i.posthog.com", "eu": "https://eu.i.posthog.com"}
MAX_BATCH = 2000  # ~1.5 MB of JSON, far below PostHog's 20 MB body limit


def posthog_host(region: str | None, host: str | None) -> str:
    if host:
        return host.rstrip("/")
    return REGION_HOSTS[region or "us"]


class PostHogDestination:
    """Sends export events to one PostHog project.

    Parameters:
        host: ``https://us.i.posthog.com``, ``https://eu.i.posthog.com`` or self-hosted.
        project_api_key: the project's ``phc_...`` key (public by design, still masked).
        event_name: the event every ledger row becomes.
        distinct_id_mode: the configured source id, or the end user (falling back to
            the key id).
        source_id: the distinct_id in ``source`` mode.
    """

    max_batch = MAX_BATCH

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        host: str,
        project_api_key: str,
        event_name: str,
        distinct_id_mode: DistinctIdMode,
        source_id: str,
        gzip_level: int = 1,
    ) -> None:
        self._client = client
        self.host = host.rstrip("/")
        self._key = project_api_key
        self._event = json.dumps(event_name)
        self._mode = distinct_id_mode
        self._source_id = source_id
        self._gzip_level = gzip_level
        # A source-level distinct_id is not a person: do not create a profile for it.
        self._person = "false" if distinct_id_mode is DistinctIdMode.SOURCE else "true"

    def body(self, rows: list[dict[str, Any]], *, historical: bool) -> bytes:
        dumps = json.dumps
        events = ",".join(
            f'{{"event":{self._event},'
            f'"distinct_id":{dumps(distinct_id_of(r, self._mode, self._source_id))},'
            f'"uuid":"{export_uuid(str(r["id"]))}","timestamp":{dumps(str(r["occurred_at"]))},'
            f'"properties":{{{properties_json(r)},'
            f'"$process_person_profile":{self._person},"$lib":"flow-export"}}}}'
            for r in rows
        )
        sent_at = datetime.now(UTC).isoformat()
        text = (
            f'{{"api_key":{dumps(self._key)},"historical_migration":'
            f'{"true" if historical else "false"},"sent_at":"{sent_at}","batch":[{events}]}}'
        )
        return gzip.compress(text.encode(), compresslevel=self._gzip_level)

    async def send(self, rows: list[dict[str, Any]], *, historical: bool) -> SendResult:
        if not rows:
            return SendResult()
        body = self.body(rows, historical=historical)
        res = await post(
            self._client,
            f"{self.host}/batch/",
            what="PostHog",
            content=body,
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
        )
        if res.status_code == 200:
            return SendResult(accepted=len(rows))
        raise _error(res, self.host)

    async def validate(self) -> None:
        if not self._key.startswith("phc_"):
            hint = (
                " (phx_ keys are personal API keys; use the project API key)"
                if self._key.startswith("phx_")
                else ""
            )
            raise CredentialsInvalid(f"bad key: a PostHog project API key starts with phc_{hint}")
        try:
            res = await post(
                self._client,
                f"{self.host}/flags/?v=2",
                what="PostHog",
                json={"api_key": self._key, "distinct_id": "flow-credentials-check"},
            )
        except Retryable:
            raise CredentialsInvalid(f"unreachable host: {UNREACHABLE}") from None
        if res.status_code in (401, 403):
            raise CredentialsInvalid(
                f"bad key: PostHog at {self.host} does not know this project API key "
                "(check the key, and the region: us and eu are separate clouds)"
            )
        if res.status_code != 200:
            raise CredentialsInvalid(
                f"unexpected answer from PostHog at {self.host}: {answered(res.status_code)} "
                "(is this a PostHog host?)"
            )


def _error(res: httpx.Response, host: str) -> DestinationError:
    code = res.status_code
    if code in (401, 403):
        return AuthRejected(
            f"PostHog at {host} rejected the project API key (HTTP {code}); "
            "edit the integration's credentials to resume"
        )
    if code == 413:
        return PayloadTooLarge(f"PostHog at {host} answered 413 (batch too large)")
    if code in (408, 429) or code >= 500:
        return Retryable(
            f"PostHog at {host}: {answered(code)}",
            retry_after_seconds(res.headers.get("Retry-After")),
        )
    return DestinationError(f"PostHog at {host} refused the batch: {answered(code)}")


class PostHogCreate(IntegrationBody):
    provider: Literal["posthog"]
    region: Literal["us", "eu"] | None = None
    host: HttpUrlText | None = None
    project_api_key: str = Field(min_length=1, max_length=200)

    @model_validator(mode="after")
    def _one_place(self) -> PostHogCreate:
        if self.region and self.host:
            raise ValueError("give either region or host, not both")
        return self


class PostHogPatch(BaseModel):
    """The PostHog fields an edit may change."""

    model_config = ConfigDict(extra="forbid")
    region: Literal["us", "eu"] | None = None
    host: HttpUrlText | None = None
    project_api_key: str | None = Field(default=None, min_length=1, max_length=200)


class PostHogSpec(DestinationSpec[PostHogCreate]):
    """PostHog: settings ``region`` and ``host``; credentials ``project_api_key``."""

    name = "posthog"
    create_model = PostHogCreate
    patch_model = PostHogPatch
    host_setting = "host"
    cli_help = {
        "region": "us|eu",
        "host": "PostHog host (self-hosted or a proxy)",
        "project_api_key": "PostHog project API key (phc_...)",
    }

    def split_body(self, body: PostHogCreate) -> tuple[dict[str, Any], dict[str, Any]]:
        return (
            {"region": body.region, "host": posthog_host(body.region, body.host)},
            {"project_api_key": body.project_api_key},
        )

    def hint(self, creds: dict[str, Any]) -> str:
        return f"key {mask(creds['project_api_key'])}"

    def apply_patch(self, given: dict[str, Any], stored: Stored) -> None:
        if "region" in given or "host" in given:
            if given.get("region") not in (None, *REGION_HOSTS):
                raise IntegrationInputError("PostHog regions are us and eu")
            stored.settings["region"] = given.get("region")
            stored.settings["host"] = posthog_host(given.get("region"), given.get("host"))
        if "project_api_key" in given:
            stored.creds["project_api_key"] = given["project_api_key"]

    def build(self, client: httpx.AsyncClient, stored: Stored, source_id: str) -> Destination:
        return PostHogDestination(
            client,
            host=stored.settings["host"],
            project_api_key=stored.creds["project_api_key"],
            **event_options(stored.settings, source_id),
        )


POSTHOG = PostHogSpec()
