"""A join's Daily ``room_url`` is a URL the bot connects to: it must be on a Daily
domain and pass the outbound-URL policy, else 400 ``url_not_allowed`` naming the rule,
with nothing created and nothing submitted."""

from __future__ import annotations

import ipaddress
from typing import Any

import httpx
import pytest
from pydantic import AnyUrl
from supabase import AsyncClient

from flow.config import Settings
from flow.db.client import call, rows_of
from flow.net import outbound
from flow.net.outbound import IPAddress
from tests.api.conftest import serve
from tests.api.recording_runner import RecordingRunner
from tests.refused_urls import REFUSED, refused_ids

PORT = 8443


def room(url: str) -> str:
    """A URL from the refused list as a Daily room URL would be written (https)."""
    return url.replace("http://", "https://", 1).format(port=PORT) + "/room"


async def join(client: httpx.AsyncClient, auth: dict[str, str], room_url: str) -> httpx.Response:
    return await client.post("/api/bot/join", json={"room_url": room_url}, headers=auth)


async def nothing_created(sb: AsyncClient, api_key: dict[str, Any]) -> bool:
    res = await call(
        sb.table("workflow_threads")
        .select("workflow_thread_id")
        .eq("api_key_id", api_key["id"])
        .execute
    )
    return rows_of(res) == []


def refusal(res: httpx.Response) -> str:
    assert res.status_code == 400, res.text
    assert res.json()["error"] == "url_not_allowed", res.text
    message: str = res.json()["message"]
    assert message.startswith("room_url: ")
    return message


@pytest.mark.parametrize(
    "room_url",
    [
        "https://evil.example.com/room",
        "https://daily.co.evil.example/room",
        "https://evildaily.co/room",
        "https://x.daily.co.evil.example/room",
        "https://daily.co/room",
        *[room(url) for url, _ in REFUSED],
    ],
)
async def test_a_room_off_the_daily_domains_is_refused(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    runner: RecordingRunner,
    sb: AsyncClient,
    api_key: dict[str, Any],
    room_url: str,
) -> None:
    message = refusal(await join(client, auth, room_url))
    assert "is not a Daily domain" in message
    assert runner.submitted == []
    assert await nothing_created(sb, api_key)


@pytest.mark.parametrize(("url", "words"), REFUSED, ids=refused_ids())
async def test_a_room_on_an_added_host_still_obeys_the_outbound_policy(
    local_settings: Settings,
    auth: dict[str, str],
    sb: AsyncClient,
    api_key: dict[str, Any],
    url: str,
    words: str,
) -> None:
    """DAILY_ROOM_HOSTS (Daily's custom domains) names hosts; it never lifts the rules
    on the addresses they stand for."""
    room_url = room(url)
    host = AnyUrl(room_url).host  # as the join reads it (numeric forms normalised)
    assert host is not None
    hosts = local_settings.model_copy(update={"daily_room_hosts": host})
    runner = RecordingRunner()
    async with serve(hosts, runner) as client:
        message = refusal(await join(client, auth, room_url))
    assert words in message
    assert runner.submitted == []
    assert await nothing_created(sb, api_key)


async def test_a_daily_name_that_resolves_to_a_private_address_is_refused(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    runner: RecordingRunner,
    sb: AsyncClient,
    api_key: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = {"rebound.daily.co": "10.0.0.7", "metadata-ish.daily.co": "169.254.169.254"}

    async def resolve(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(answers[host])]

    monkeypatch.setattr(outbound, "resolve_host", resolve)
    message = refusal(await join(client, auth, "https://rebound.daily.co/room"))
    assert "private address" in message and "10.0.0.7" not in message
    message = refusal(await join(client, auth, "https://metadata-ish.daily.co/room"))
    assert "cloud metadata" in message
    assert runner.submitted == []
    assert await nothing_created(sb, api_key)


async def test_daily_rooms_and_added_hosts_on_public_addresses_are_joined(
    local_settings: Settings,
    auth: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def resolve(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address("93.184.215.14")]

    monkeypatch.setattr(outbound, "resolve_host", resolve)
    hosts = local_settings.model_copy(
        update={"daily_room_hosts": "video.example.com, *.calls.example.org"}
    )
    runner = RecordingRunner()
    accepted = [
        "https://acme.daily.co/standup",
        "https://video.example.com/standup",
        "https://eu.calls.example.org/standup",
    ]
    async with serve(hosts, runner) as client:
        for room_url in accepted:
            res = await join(client, auth, room_url)
            assert res.status_code == 202, res.text
        refused = await join(client, auth, "https://other.example.com/standup")
        assert "is not a Daily domain" in refusal(refused)
        refused = await join(client, auth, "https://calls.example.org/standup")
        assert "is not a Daily domain" in refusal(refused)
    assert [c.room_url for c in runner.submitted] == accepted


def test_a_malformed_added_host_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="DAILY_ROOM_HOSTS entry"):
        Settings(daily_room_hosts="https://video.example.com/")
    assert Settings(daily_room_hosts=" Video.Example.com., *.X.org ").room_hosts() == [
        "video.example.com",
        "*.x.org",
    ]
