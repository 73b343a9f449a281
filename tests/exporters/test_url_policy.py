"""Export destinations under the outbound-URL policy (real app, real database, local
sinks): refused hosts at create, at edit and in every sync cycle, DNS rebinding, no
redirects, and nothing a destination answers in an API answer or an integration's
last error or warning."""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from pydantic import SecretStr, TypeAdapter
from supabase import AsyncClient

from flow.config import Settings
from flow.exporters.integrations import create_integration
from flow.exporters.registry import IntegrationCreate
from flow.exporters.sync import Exporter, SyncOutcome
from flow.main import create_app
from flow.net import outbound
from flow.net.outbound import IPAddress
from tests.api.recording_runner import RecordingRunner
from tests.exporters.conftest import (
    FLOW_SECRET,
    MP_SECRET,
    MP_TOKEN,
    PH_KEY,
    exporter,
    integration_row,
    seed,
)
from tests.fakes.analytics_sinks import MixpanelSink, PostHogSink
from tests.fakes.recording_sink import RawServer, RecordingSink
from tests.refused_urls import REFUSED, refused_ids

pytestmark = pytest.mark.usefixtures("cleanup_integrations")

SECRET = "sk_live_internal-SECRET-0123456789abcdef"
PUBLIC = ipaddress.ip_address("93.184.215.14")
UNREACHABLE_ANSWER = "unreachable host: the destination could not be reached"


def configured(settings: Settings, *, allow_private: bool) -> Settings:
    """Export settings with the scheduler off (the tests run the cycles themselves)."""
    return settings.model_copy(
        update={
            "flow_secret_key": SecretStr(FLOW_SECRET),
            "unkey_root_key": SecretStr(""),
            "flow_sync_enabled": False,
            "flow_allow_private_urls": allow_private,
        }
    )


@asynccontextmanager
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, RecordingRunner())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://flow.test") as c:
            yield c


@pytest.fixture(scope="module")
async def strict_api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    async with api(configured(settings, allow_private=False)) as client:
        yield client


@pytest.fixture(scope="module")
async def local_api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app with private URLs allowed, for destinations on local sinks."""
    async with api(configured(settings, allow_private=True)) as client:
        yield client


@pytest.fixture
def auth(api_key: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key['plaintext']}"}


@pytest.fixture
async def sink() -> AsyncIterator[RecordingSink]:
    s = await RecordingSink().start()
    yield s
    await s.stop()


async def one_cycle(ex: Exporter, iid: str) -> SyncOutcome:
    """Exactly one sync cycle of one integration (claimed whatever its schedule)."""
    [row] = await ex.claim(force=True, ids=[iid])
    return await ex.sync_one(row)


def _create_body(body: dict[str, Any]) -> Any:
    return TypeAdapter(IntegrationCreate).validate_python(body)


def body_for(provider: str, url: str, **extra: Any) -> dict[str, Any]:
    if provider == "posthog":
        return {"provider": "posthog", "host": url, "project_api_key": PH_KEY, **extra}
    return {"provider": "mixpanel", "api_host": url, "project_token": MP_TOKEN, **extra}


@pytest.mark.parametrize("provider", ["posthog", "mixpanel"])
@pytest.mark.parametrize(("template", "rule"), REFUSED, ids=refused_ids())
async def test_create_refuses_every_spelling_of_a_refused_host_and_sends_nothing(
    strict_api: httpx.AsyncClient,
    auth: dict[str, str],
    posthog_sink: PostHogSink,
    mixpanel_sink: MixpanelSink,
    provider: str,
    template: str,
    rule: str,
) -> None:
    port = posthog_sink.port if provider == "posthog" else mixpanel_sink.port
    url = template.format(port=port)
    res = await strict_api.post("/api/integrations", headers=auth, json=body_for(provider, url))
    assert res.status_code == 400, res.text
    answer = res.json()
    assert answer["error"] == "url_not_allowed"
    field = "host" if provider == "posthog" else "api_host"
    assert answer["message"].startswith(f"{field}: ")
    assert rule in answer["message"]
    assert posthog_sink.requests == [] and mixpanel_sink.requests == []
    assert (await strict_api.get("/api/integrations", headers=auth)).json() == []


async def test_an_edit_to_a_refused_host_is_refused(
    strict_api: httpx.AsyncClient,
    auth: dict[str, str],
    sb: AsyncClient,
    export_settings: Settings,
    api_key: dict[str, Any],
) -> None:
    resolver_answers = {"ph.example.com": [PUBLIC], "mp.example.com": [PUBLIC]}

    async def resolve(host: str, port: int) -> list[IPAddress]:
        return resolver_answers[host]

    strict = configured(export_settings, allow_private=False)
    ids = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(outbound, "resolve_host", resolve)
        for provider, host in (("posthog", "ph"), ("mixpanel", "mp")):
            created = await create_integration(
                sb,
                strict,
                _create_body(body_for(provider, f"https://{host}.example.com")),
                api_key_id=api_key["id"],
                validate=False,
            )
            ids[provider] = created["id"]
    cases = [
        ("posthog", {"host": "http://10.0.0.1"}, "host: host resolves to a private address"),
        ("posthog", {"host": "http://u:p@ph.example.com"}, "userinfo is not allowed"),
        ("mixpanel", {"api_host": "http://[::1]:8080"}, "api_host: host resolves to a loopback"),
        ("mixpanel", {"api_host": "http://metadata.google.internal"}, "cloud metadata"),
    ]
    for provider, patch_body, rule in cases:
        res = await strict_api.patch(
            f"/api/integrations/{ids[provider]}", headers=auth, json=patch_body
        )
        assert res.status_code == 400, res.text
        assert res.json()["error"] == "url_not_allowed" and rule in res.json()["message"]
    detail = (await strict_api.get(f"/api/integrations/{ids['posthog']}", headers=auth)).json()
    assert detail["host"] == "https://ph.example.com"


@pytest.mark.parametrize("provider", ["posthog", "mixpanel"])
async def test_a_sync_cycle_refuses_a_host_that_now_resolves_to_loopback(
    sb: AsyncClient,
    export_settings: Settings,
    posthog_sink: PostHogSink,
    mixpanel_sink: MixpanelSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    provider: str,
) -> None:
    lookups: list[str] = []

    async def rebinding(host: str, port: int) -> list[IPAddress]:
        # Public when the integration is saved, the sink's loopback address after.
        lookups.append(host)
        return [PUBLIC] if len(lookups) == 1 else [ipaddress.ip_address("127.0.0.1")]

    monkeypatch.setattr(outbound, "resolve_host", rebinding)
    strict = configured(export_settings, allow_private=False)
    port = posthog_sink.port if provider == "posthog" else mixpanel_sink.port
    extra = {"api_secret": MP_SECRET} if provider == "mixpanel" else {}
    url = f"http://rebind.example.com:{port}"
    body = _create_body(body_for(provider, url, backfill="all", **extra))
    integ = await create_integration(sb, strict, body, api_key_id=api_key["id"], validate=False)
    await seed(sb, thread, 5)
    ex = exporter(sb, strict)
    try:
        outcome = await one_cycle(ex, integ["id"])
    finally:
        await ex.aclose()
    assert outcome.status == "error"
    row = await integration_row(sb, integ["id"])
    assert row["status"] == "error"
    assert row["last_error"] == "url_not_allowed: host resolves to a loopback address; refused"
    assert row["events_exported"] == 0
    assert posthog_sink.requests == [] and mixpanel_sink.requests == []


async def test_an_integration_saved_with_a_private_host_fails_its_next_cycle(
    sb: AsyncClient,
    export_settings: Settings,
    posthog_sink: PostHogSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
) -> None:
    local = configured(export_settings, allow_private=True)
    body = _create_body(body_for("posthog", posthog_sink.url, backfill="all"))
    integ = await create_integration(sb, local, body, api_key_id=api_key["id"])
    posthog_sink.requests.clear()  # the credentials check
    await seed(sb, thread, 5)
    ex = exporter(sb, configured(export_settings, allow_private=False))
    try:
        await one_cycle(ex, integ["id"])
    finally:
        await ex.aclose()
    row = await integration_row(sb, integ["id"])
    assert row["status"] == "error"
    assert row["last_error"] == (
        "url_not_allowed: host resolves to a loopback address (127.0.0.1); refused"
    )
    assert posthog_sink.requests == [] and posthog_sink.events == []


SECRET_JSON = json.dumps({"error": SECRET}).encode()
# provider, extra create fields, what the sink answers once the integration exists,
# what last_error (or last_warning) says instead.
SYNC_ANSWERS = [
    ("posthog", {}, {"/batch/": (500, SECRET.encode())}, "answered HTTP 500"),
    ("posthog", {}, {"/batch/": (404, SECRET_JSON)}, "answered HTTP 404"),
    ("mixpanel", {"api_secret": MP_SECRET}, {"/import": (400, SECRET.encode())}, "HTTP 400"),
    ("mixpanel", {"api_secret": MP_SECRET}, {"/import": (422, SECRET_JSON)}, "HTTP 422"),
    (
        "mixpanel",
        {"api_secret": MP_SECRET},
        {
            "/import": (
                400,
                json.dumps(
                    {"failed_records": [{"index": 0, "field": "properties", "message": SECRET}]}
                ).encode(),
            )
        },
        "refused by Mixpanel's validation",
    ),
    (
        "mixpanel",
        {},
        {"/track": (200, json.dumps({"status": 0, "error": SECRET}).encode())},
        "status 0",
    ),
    ("mixpanel", {}, {"/track": (200, SECRET.encode())}, "status 0"),
]


@pytest.mark.parametrize(
    ("provider", "extra", "answers", "reason"),
    SYNC_ANSWERS,
    ids=["ph-500", "ph-404", "mp-import-400", "mp-import-422", "mp-records", "mp-track", "mp-text"],
)
async def test_what_a_destination_answers_never_reaches_the_integration(
    local_api: httpx.AsyncClient,
    auth: dict[str, str],
    sb: AsyncClient,
    export_settings: Settings,
    thread: dict[str, Any],
    sink: RecordingSink,
    caplog: pytest.LogCaptureFixture,
    provider: str,
    extra: dict[str, Any],
    answers: dict[str, tuple[int, bytes]],
    reason: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    body = body_for(provider, sink.url, backfill={"days": 1}, **extra)
    res = await local_api.post("/api/integrations", headers=auth, json=body)
    assert res.status_code == 201, res.text
    iid = res.json()["id"]
    for path, (status, content) in answers.items():
        sink.answer(path, status, content)
    await seed(sb, thread, 3)
    ex = exporter(sb, configured(export_settings, allow_private=True), max_attempts=1)
    try:
        await one_cycle(ex, iid)
    finally:
        await ex.aclose()
    detail = await local_api.get(f"/api/integrations/{iid}", headers=auth)
    assert SECRET not in detail.text
    shown = detail.json()
    assert reason in f"{shown['last_error']} {shown['last_warning']}"
    listed = await local_api.get("/api/integrations", headers=auth)
    assert SECRET not in listed.text
    for record in caplog.records:
        if record.levelno >= logging.WARNING:
            assert SECRET not in record.getMessage()


@pytest.mark.parametrize(
    ("provider", "path", "status"),
    [
        ("posthog", "/flags/", 500),
        ("posthog", "/flags/", 404),
        ("mixpanel", "/track", 500),
        ("mixpanel", "/track", 418),
    ],
)
async def test_a_refused_create_never_shows_what_the_destination_answered(
    local_api: httpx.AsyncClient,
    auth: dict[str, str],
    sink: RecordingSink,
    provider: str,
    path: str,
    status: int,
) -> None:
    sink.answer(path, status, SECRET.encode())
    res = await local_api.post("/api/integrations", headers=auth, json=body_for(provider, sink.url))
    assert res.status_code == 422, res.text
    assert SECRET not in res.text
    assert f"the destination answered HTTP {status}" in res.json()["message"]


async def test_connection_failures_of_every_kind_read_the_same(
    local_api: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    hangs_up = await RawServer().start()
    not_http = await RawServer(b"SSH-2.0-OpenSSH_9.6\r\n").start()
    try:
        messages = set()
        for url in (f"http://127.0.0.1:{closed_port}", hangs_up.url, not_http.url):
            for provider in ("posthog", "mixpanel"):
                res = await local_api.post(
                    "/api/integrations", headers=auth, json=body_for(provider, url)
                )
                assert res.status_code == 422, res.text
                messages.add(res.json()["message"])
        assert messages == {UNREACHABLE_ANSWER}
        assert hangs_up.connections == 2 and not_http.connections == 2
    finally:
        await hangs_up.stop()
        await not_http.stop()


async def test_redirects_are_not_followed_when_checking_or_sending(
    local_api: httpx.AsyncClient,
    auth: dict[str, str],
    sb: AsyncClient,
    export_settings: Settings,
    thread: dict[str, Any],
    sink: RecordingSink,
) -> None:
    elsewhere = await RecordingSink().start()
    try:
        sink.answer("/flags/", 302, Location=f"{elsewhere.url}/flags/")
        res = await local_api.post(
            "/api/integrations", headers=auth, json=body_for("posthog", sink.url)
        )
        assert res.status_code == 422, res.text
        assert "answered HTTP 302 (redirects are not followed)" in res.json()["message"]

        sink.answer("/flags/", 200, b"{}")
        sink.answer("/batch/", 307, Location=f"{elsewhere.url}/batch/")
        res = await local_api.post(
            "/api/integrations",
            headers=auth,
            json=body_for("posthog", sink.url, backfill={"days": 1}),
        )
        assert res.status_code == 201, res.text
        await seed(sb, thread, 3)
        ex = exporter(sb, configured(export_settings, allow_private=True))
        try:
            await one_cycle(ex, res.json()["id"])
        finally:
            await ex.aclose()
        row = await integration_row(sb, res.json()["id"])
        assert row["status"] == "error"
        assert "answered HTTP 307 (redirects are not followed)" in row["last_error"]
        assert elsewhere.requests == []
    finally:
        await elsewhere.stop()


async def test_production_refuses_an_http_host(
    settings: Settings, auth: dict[str, str], posthog_sink: PostHogSink
) -> None:
    production = configured(settings, allow_private=False).model_copy(
        update={"flow_env": "production"}
    )
    async with api(production) as client:
        for provider in ("posthog", "mixpanel"):
            res = await client.post(
                "/api/integrations",
                headers=auth,
                json=body_for(provider, "http://analytics.example.com"),
            )
            assert res.status_code == 400, res.text
            assert res.json()["error"] == "url_not_allowed"
            assert "https is required in production" in res.json()["message"]
    assert posthog_sink.requests == []
