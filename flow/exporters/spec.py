"""What a destination declares so that generic code can configure, store and build it.

Every integration shares the fields of :class:`IntegrationBody` (name, schedule,
backfill, event name, distinct id) and of :class:`CommonPatch`. A destination adds its
own fields (where to send, with which credentials) in a :class:`DestinationSpec`: its
create body model, the model of the fields an edit may change, how a body splits into
settings (stored in clear) and credentials (stored encrypted), the masked hint that
stands for the credentials, and how to build the :class:`Destination` that sends.

Failure behaviour: a body pydantic refuses never reaches a spec; a spec refuses what
only it can judge (a value valid for another destination, a backfill it cannot send)
with :class:`IntegrationInputError`, before anything is saved.

Where a destination sends: every URL in its settings that a customer chose is named by
:meth:`DestinationSpec.urls` (the ``host_setting``'s by default). Each must pass the
outbound-URL policy (:mod:`flow.net.outbound`) when the integration is created or
edited (400 ``url_not_allowed`` otherwise), and the destination is built with a client
that checks it again on every connection and connects only to the address it checked.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any, ClassVar, Generic, Literal, TypedDict, TypeVar

import httpx
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from flow.exporters.base import DEFAULT_EVENT_NAME, Destination, DistinctIdMode


def _http_url(value: str) -> str:
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL as exc:
        raise ValueError(f"is not a valid URL: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError("must be an http(s) URL")
    return value.rstrip("/")


HttpUrlText = Annotated[str, StringConstraints(max_length=500), AfterValidator(_http_url)]
"""An http(s) URL (a host, a proxy), without its trailing slash."""

EventName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[\w$ .:/-]+$")]


class BackfillDays(BaseModel):
    model_config = ConfigDict(extra="forbid")
    days: int = Field(ge=1, le=3650)


class BackfillFrom(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    from_: date | datetime = Field(alias="from")


Backfill = Literal["none", "all"] | BackfillDays | BackfillFrom


class IntegrationBody(BaseModel):
    """The fields every integration's create body has; each destination's model adds
    ``provider`` (its name, as a ``Literal``) and its own fields."""

    model_config = ConfigDict(extra="forbid")
    provider: str
    name: str | None = Field(default=None, max_length=200)
    sync_interval_seconds: int = Field(default=3600, ge=60, le=86400)
    backfill: Backfill = "none"
    event_name: EventName = DEFAULT_EVENT_NAME
    distinct_id: DistinctIdMode = DistinctIdMode.SOURCE


class CommonPatch(BaseModel):
    """The fields of an edit that apply to every integration; the registry adds the
    destinations' own fields to make the API's edit body."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, max_length=200)
    sync_interval_seconds: int | None = Field(default=None, ge=60, le=86400)
    event_name: EventName | None = None
    distinct_id: DistinctIdMode | None = None


class EventOptions(TypedDict):
    """The destination constructor arguments every destination takes."""

    event_name: str
    distinct_id_mode: DistinctIdMode
    source_id: str


def event_options(settings_json: dict[str, Any], source_id: str) -> EventOptions:
    """The event name and distinct id mode stored with an integration (or the defaults)."""
    return EventOptions(
        event_name=settings_json.get("event_name") or DEFAULT_EVENT_NAME,
        distinct_id_mode=DistinctIdMode(settings_json.get("distinct_id") or "source"),
        source_id=source_id,
    )


@dataclass(frozen=True)
class Stored:
    """An integration as stored: its settings (kept in clear) and its credentials (kept
    encrypted; here opened). An edit changes both dicts in place."""

    settings: dict[str, Any]
    creds: dict[str, Any]


BodyT = TypeVar("BodyT", bound=IntegrationBody)


class DestinationSpec(ABC, Generic[BodyT]):
    """One destination, as the integrations service, the API and the sync cycle see it.

    Parameters:
        name: the ``provider`` of its bodies and rows.
        create_model: its create body (an :class:`IntegrationBody` with ``provider``).
        patch_model: the fields of its own an edit may change (all optional).
        host_setting: the settings key shown as ``host``, if it has one.
        operator_only: only the operator creates it, for every key (billing).
        cli_help: its own create fields offered by ``flow integrations add`` (as
            ``--field-name``), with their help.
    """

    name: ClassVar[str]
    create_model: type[BodyT]
    patch_model: ClassVar[type[BaseModel]]
    host_setting: ClassVar[str | None] = None
    operator_only: ClassVar[bool] = False
    cli_help: ClassVar[dict[str, str]] = {}

    @abstractmethod
    def split_body(self, body: BodyT) -> tuple[dict[str, Any], dict[str, Any]]:
        """(its settings, stored in clear; its credentials, stored encrypted)."""

    @abstractmethod
    def hint(self, creds: dict[str, Any]) -> str:
        """Masked credentials, enough to tell which ones are stored."""

    @abstractmethod
    def apply_patch(self, given: dict[str, Any], stored: Stored) -> None:
        """Apply the edited fields of ``patch_model`` (only those given) to the stored
        settings and credentials, in place."""

    @abstractmethod
    def build(self, client: httpx.AsyncClient, stored: Stored, source_id: str) -> Destination:
        """The destination that sends through ``client`` (an outbound client, see
        :func:`flow.net.outbound.outbound_client`) with these settings; it sends only
        through it (:func:`flow.exporters.base.post`)."""

    def urls(self, settings_json: dict[str, Any]) -> dict[str, str]:
        """The URLs in these settings a customer chose (a host, a proxy), by setting
        name: each must pass the outbound-URL policy before the integration is saved.
        The ``host_setting``'s, by default; a destination with a fixed host has none to
        check at saving, and its client still checks every connection."""
        url = settings_json.get(self.host_setting) if self.host_setting else None
        return {str(self.host_setting): str(url)} if url else {}

    def cli_value(self, field: str, text: str) -> Any:
        """A create field's value from its command-line text (the text itself unless
        the field has a format of its own)."""
        return text

    def check_backfill(
        self, creds: dict[str, Any], backfill_from: datetime | None, now: datetime
    ) -> None:
        """Refuse a backfill these credentials cannot send (from ``backfill_from``, or
        from the beginning when ``None``); any backfill is fine unless overridden."""
