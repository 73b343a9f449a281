"""Signed webhooks against a local receiver, and the outbound-URL policy at join and at
every delivery (private addresses, DNS rebinding, redirects)."""

from __future__ import annotations

import ipaddress
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from supabase import AsyncClient

from flow.analytics.posthog import PostHogAnalytics
from flow.config import Settings
from flow.db import threads as threads_repo
from flow.net.outbound import IPAddress, UrlNotAllowed
from flow.workflows.bot_call import BotCallWorkflow
from flow.workflows.extract_insights import InsightsExtractor
from flow.workflows.webhook import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    WebhookSender,
    WebhookURLError,
    sign,
    validate_webhook_url,
    verify_signature,
)
from tests.fakes.openai_json_server import OpenAIJSONServer, ScriptedAnswer
from tests.refused_urls import REFUSED, refused_ids
from tests.workflows.support import (
    GOOD_INSIGHTS,
    FakeCallResult,
    call_request,
    good_answer,
    new_thread,
    workflow_settings,
)

SECRET = "whsec-test-0123456789"


class Receiver:
    """A webhook endpoint: answers the scripted statuses in order (then 200)."""

    def __init__(
        self, statuses: list[int] | None = None, headers: dict[str, str] | None = None
    ) -> None:
        self.statuses = list(statuses or [])
        self.headers = headers or {}
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.arrived = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.received.append((dict(self.headers.items()), body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                for name, value in receiver.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if status == 200:
                    receiver.arrived.set()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/flow"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver([503])  # the first delivery fails: the retry must carry the event
    yield r
    r.close()


def hook_settings(settings: Settings, **update: Any) -> Settings:
    return workflow_settings(
        settings,
        flow_webhook_secret=SECRET,
        flow_allow_private_urls=update.pop("allow_private", True),
        posthog_api_key="",
        **update,
    )


async def test_completed_call_webhook_is_signed_retried_and_carries_usage_and_insights(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    openai_server: OpenAIJSONServer,
    receiver: Receiver,
) -> None:
    openai_server.script(ScriptedAnswer(good_answer()))
    s = hook_settings(settings, openai_base_url=openai_server.base_url)
    analytics = PostHogAnalytics.from_settings(s)
    workflow = BotCallWorkflow(
        s,
        sb,
        analytics,
        insights=InsightsExtractor(s, sb, analytics),
        webhooks=WebhookSender(s, backoff_seconds=0.05),
    )
    thread = await new_thread(sb, api_key, webhook_url=receiver.url, end_user_id="u-7")

    await workflow.post_call(call_request(thread), FakeCallResult())
    await workflow.drain()

    assert len(receiver.received) == 2  # 503, then delivered
    (first_headers, first_body), (headers, body) = receiver.received
    assert first_headers[EVENT_ID_HEADER] == headers[EVENT_ID_HEADER]
    assert first_body == body
    assert verify_signature(SECRET, headers[SIGNATURE_HEADER], body)
    assert not verify_signature("another-secret", headers[SIGNATURE_HEADER], body)
    assert not verify_signature(SECRET, headers[SIGNATURE_HEADER], body + b" ")
    payload = json.loads(body)
    assert payload["type"] == "call.completed"
    data = payload["data"]
    assert data["workflow_thread_id"] == str(thread["workflow_thread_id"])
    assert data["status"] == "completed" and data["error"] is None
    assert data["insights"] == GOOD_INSIGHTS
    row = await threads_repo.get_thread(sb, thread["workflow_thread_id"])
    assert row is not None
    assert data["usage"]["llm_calls"] == 1
    assert data["usage"]["total_cost_usd"] == str(row["usage_stats"]["total_cost_usd"])


async def test_failed_step_sends_call_failed_with_the_stage(
    settings: Settings,
    sb: AsyncClient,
    api_key: dict[str, Any],
    openai_server: OpenAIJSONServer,
) -> None:
    openai_server.script(ScriptedAnswer("not json"))
    receiver = Receiver()
    try:
        s = hook_settings(settings, openai_base_url=openai_server.base_url)
        analytics = PostHogAnalytics.from_settings(s)
        workflow = BotCallWorkflow(
            s, sb, analytics, webhooks=WebhookSender(s, backoff_seconds=0.05)
        )
        thread = await new_thread(sb, api_key, webhook_url=receiver.url)
        await workflow.post_call(call_request(thread), FakeCallResult())
        await workflow.drain()
        [(headers, body)] = receiver.received
        payload = json.loads(body)
        assert payload["type"] == "call.failed"
        assert payload["data"]["error"]["stage"] == "extract_insights"
        assert payload["data"]["error"]["code"] == "invalid_output"
        assert verify_signature(SECRET, headers[SIGNATURE_HEADER], body)
    finally:
        receiver.close()


@pytest.mark.parametrize(("template", "rule"), REFUSED, ids=refused_ids())
async def test_refused_addresses_in_every_spelling_are_refused(
    settings: Settings, template: str, rule: str
) -> None:
    strict = hook_settings(settings, allow_private=False)
    with pytest.raises(UrlNotAllowed, match=re.escape(rule)):
        await validate_webhook_url(template.format(port=8080) + "/hook", strict)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com/x", "only http and https"),
        ("https:///nohost", "no host"),
        ("https://user:pw@93.184.216.34/x", "userinfo is not allowed"),
        ("https://no-such-host.invalid/x", "does not resolve"),
    ],
)
async def test_malformed_urls_are_refused_with_the_reason(
    settings: Settings, url: str, reason: str
) -> None:
    strict = hook_settings(settings, allow_private=False)
    with pytest.raises(UrlNotAllowed, match=reason):
        await validate_webhook_url(url, strict, require_resolution=True)


async def test_unresolvable_host_passes_the_join_but_not_the_delivery(settings: Settings) -> None:
    strict = hook_settings(settings, allow_private=False)
    url = "https://no-such-host.invalid/x"
    assert await validate_webhook_url(url, strict) == url
    sender = WebhookSender(strict, backoff_seconds=0.01)
    thread = {"workflow_thread_id": "00000000-0000-0000-0000-000000000002"}
    assert await sender.deliver(url, "call.completed", thread) is False


async def test_public_address_passes_and_private_passes_only_when_allowed(
    settings: Settings,
) -> None:
    strict = hook_settings(settings, allow_private=False)
    assert await validate_webhook_url("https://93.184.216.34/hook", strict)
    assert await validate_webhook_url("http://127.0.0.1:1/hook", hook_settings(settings))
    with pytest.raises(UrlNotAllowed, match="https is required in production"):
        await validate_webhook_url(
            "http://93.184.216.34/hook",
            hook_settings(settings, allow_private=False, flow_env="production"),
        )


async def test_webhooks_need_a_secret(settings: Settings) -> None:
    unsigned = workflow_settings(settings, flow_webhook_secret="")
    with pytest.raises(WebhookURLError, match="FLOW_WEBHOOK_SECRET"):
        await validate_webhook_url("https://93.184.216.34/hook", unsigned)


async def test_delivery_to_a_private_address_is_refused_at_send_time_too(
    settings: Settings,
) -> None:
    receiver = Receiver()
    try:
        sender = WebhookSender(hook_settings(settings, allow_private=False))
        thread = {"workflow_thread_id": "00000000-0000-0000-0000-000000000001"}
        assert await sender.deliver(receiver.url, "call.completed", thread) is False
        assert receiver.received == []
    finally:
        receiver.close()


async def test_a_host_rebound_to_loopback_after_the_join_receives_nothing(
    settings: Settings,
) -> None:
    public = ipaddress.ip_address("93.184.215.14")
    lookups: list[str] = []

    async def rebinding(host: str, port: int) -> list[IPAddress]:
        # Public when the join checks the URL, loopback for every delivery after.
        lookups.append(host)
        return [public] if len(lookups) == 1 else [ipaddress.ip_address("127.0.0.1")]

    receiver = Receiver()
    try:
        strict = hook_settings(settings, allow_private=False)
        url = f"http://hooks.rebind.example.com:{receiver.server.server_address[1]}/hook"
        assert await validate_webhook_url(url, strict, resolver=rebinding) == url
        sender = WebhookSender(strict, backoff_seconds=0.01, resolver=rebinding)
        thread = {"workflow_thread_id": "00000000-0000-0000-0000-000000000003"}
        assert await sender.deliver(url, "call.completed", thread) is False
        assert receiver.received == []
        assert len(lookups) == 2  # refused on the first attempt, never retried
    finally:
        receiver.close()


async def test_a_redirect_is_not_followed(settings: Settings) -> None:
    elsewhere = Receiver()
    receiver = Receiver([302, 302], headers={"Location": elsewhere.url})
    try:
        sender = WebhookSender(hook_settings(settings), backoff_seconds=0.01)
        thread = {"workflow_thread_id": "00000000-0000-0000-0000-000000000004"}
        assert await sender.deliver(receiver.url, "call.completed", thread) is False
        assert len(receiver.received) == 1  # a 3xx is a failure, not retried
        assert elsewhere.received == []
    finally:
        receiver.close()
        elsewhere.close()


def test_stale_signature_is_rejected() -> None:
    header = sign(SECRET, 1_000_000, b"{}")
    assert verify_signature(SECRET, header, b"{}", now=1_000_100)
    assert not verify_signature(SECRET, header, b"{}", now=1_000_000 + 301)
    assert not verify_signature(SECRET, "garbage", b"{}")


@pytest.mark.parametrize(("template", "rule"), REFUSED, ids=refused_ids())
async def test_join_refuses_a_webhook_url_the_policy_refuses_with_a_clear_400(
    settings: Settings, sb: AsyncClient, api_key: dict[str, Any], template: str, rule: str
) -> None:
    from tests.api.conftest import bearer, serve
    from tests.api.recording_runner import RecordingRunner

    s = hook_settings(settings, allow_private=False, unkey_root_key="")
    runner = RecordingRunner()
    receiver = Receiver()
    try:
        url = template.format(port=receiver.server.server_address[1]) + "/hooks/flow"
        async with serve(s, runner) as client:
            res = await client.post(
                "/api/bot/join",
                json={"transport": "simulated", "script": ["hi"], "webhook_url": url},
                headers=bearer(api_key),
            )
    finally:
        receiver.close()
    assert res.status_code == 400, res.text
    body = res.json()
    assert body["error"] == "url_not_allowed"
    assert body["message"].startswith("webhook_url: ")
    assert rule in body["message"]
    assert runner.submitted == []
    assert receiver.received == []


async def test_join_in_production_refuses_an_http_webhook_url(
    settings: Settings, sb: AsyncClient, api_key: dict[str, Any]
) -> None:
    from tests.api.conftest import bearer, serve
    from tests.api.recording_runner import RecordingRunner

    s = hook_settings(settings, allow_private=False, unkey_root_key="", flow_env="production")
    runner = RecordingRunner()
    join = {
        "room_url": "https://example.daily.co/standup",
        "webhook_url": "http://hooks.example.com/flow",
    }
    async with serve(s, runner) as client:
        res = await client.post("/api/bot/join", json=join, headers=bearer(api_key))
    assert res.status_code == 400, res.text
    assert res.json() == {
        "error": "url_not_allowed",
        "message": "webhook_url: https is required in production",
    }
    assert runner.submitted == []
