"""WebRTC joins and trickled candidates over HTTP, against the real database, with a
runner that records what it is handed: the answer comes back in the 202, a bad offer is
a 400 that creates no thread, only the call's own key may trickle candidates."""

from __future__ import annotations

from typing import Any

import httpx
from supabase import AsyncClient

from flow.db import keys as keys_repo
from flow.db.client import call, rows_of
from tests.api.recording_runner import ANSWER_SDP, RecordingRunner

# An offer as aiortc makes it (audio only, one candidate), shortened.
OFFER_SDP = (
    "v=0\r\n"
    "o=- 3941925300 3941925300 IN IP4 0.0.0.0\r\n"
    "s=-\r\n"
    "t=0 0\r\n"
    "a=group:BUNDLE 0\r\n"
    "a=msid-semantic:WMS *\r\n"
    "m=audio 40127 UDP/TLS/RTP/SAVPF 96 0 8\r\n"
    "c=IN IP4 127.0.0.1\r\n"
    "a=sendrecv\r\n"
    "a=mid:0\r\n"
    "a=rtcp-mux\r\n"
    "a=rtpmap:96 opus/48000/2\r\n"
    "a=rtpmap:0 PCMU/8000\r\n"
    "a=rtpmap:8 PCMA/8000\r\n"
    "a=candidate:1e2f 1 udp 2130706431 127.0.0.1 40127 typ host\r\n"
    "a=end-of-candidates\r\n"
    "a=ice-ufrag:Qx1d\r\n"
    "a=ice-pwd:5dBwTrHbJ5xS9x0Gd2mYz1\r\n"
    "a=fingerprint:sha-256 6B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:"
    "24:C2:43:F0:A1:58:D0:A1:2C:19:08\r\n"
    "a=setup:actpass\r\n"
)
CANDIDATE = "candidate:2 1 udp 2130706431 127.0.0.1 50000 typ host"


def webrtc_join(sdp: str = OFFER_SDP, **extra: Any) -> dict[str, Any]:
    return {"transport": "webrtc", "webrtc_offer": {"sdp": sdp, "type": "offer"}, **extra}


async def _threads_of(sb: AsyncClient, api_key_id: str) -> list[dict[str, Any]]:
    res = await call(sb.table("workflow_threads").select("*").eq("api_key_id", api_key_id).execute)
    return rows_of(res)


async def test_a_webrtc_join_answers_the_offer_and_submits_the_call(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    api_key: dict[str, Any],
    runner: RecordingRunner,
    sb: AsyncClient,
) -> None:
    res = await client.post("/api/bot/join", json=webrtc_join(end_user_id="u-1"), headers=auth)
    assert res.status_code == 202, res.text
    body = res.json()
    assert body["status"] == "pending"
    assert body["webrtc_answer"] == {"sdp": ANSWER_SDP, "type": "answer"}
    thread_id = body["workflow_thread_id"]

    [row] = await _threads_of(sb, api_key["id"])
    assert (row["workflow_thread_id"], row["transport"]) == (thread_id, "webrtc")
    assert row["room_url"] is None and row["end_user_id"] == "u-1"
    # The offer was answered under the thread's id, then the call submitted.
    assert runner.offers[thread_id].sdp == OFFER_SDP
    [submitted] = runner.submitted
    assert (submitted.workflow_thread_id, submitted.transport) == (thread_id, "webrtc")

    # Other transports answer as before: no webrtc_answer at all.
    daily = await client.post(
        "/api/bot/join", json={"room_url": "https://example.daily.co/r"}, headers=auth
    )
    assert daily.status_code == 202 and "webrtc_answer" not in daily.json()


async def test_bad_offers_are_400_and_create_no_thread(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    api_key: dict[str, Any],
    runner: RecordingRunner,
    sb: AsyncClient,
) -> None:
    video_only = OFFER_SDP.replace("m=audio 40127 UDP/TLS/RTP/SAVPF 96 0 8", "m=video 9 RTP 96")
    bad = {
        "not SDP": "hello, this is not an offer",
        "no audio": video_only,
        "too large": OFFER_SDP + "a=x-padding:" + "x" * 33_000 + "\r\n",
        "no fingerprint": "\r\n".join(
            line for line in OFFER_SDP.split("\r\n") if not line.startswith("a=fingerprint")
        ),
        "empty": "",
    }
    for name, sdp in bad.items():
        res = await client.post("/api/bot/join", json=webrtc_join(sdp), headers=auth)
        assert res.status_code == 400, (name, res.text)
        assert res.json()["error"] == "invalid_webrtc_offer", name
        assert res.json()["message"], name
    answer_type = webrtc_join()
    answer_type["webrtc_offer"]["type"] = "answer"
    res = await client.post("/api/bot/join", json=answer_type, headers=auth)
    assert (res.status_code, res.json()["error"]) == (400, "invalid_webrtc_offer")

    # An offer the runner's WebRTC stack refuses: the same 400, still no thread.
    runner.refuse_next_offer = "the offer cannot be answered: no common codec"
    res = await client.post("/api/bot/join", json=webrtc_join(), headers=auth)
    assert res.status_code == 400
    assert res.json() == {
        "error": "invalid_webrtc_offer",
        "message": "the offer cannot be answered: no common codec",
    }

    assert await _threads_of(sb, api_key["id"]) == []
    assert runner.offers == {} and runner.submitted == []


async def test_a_webrtc_join_without_an_offer_is_422_and_offers_belong_to_webrtc(
    client: httpx.AsyncClient,
    auth: dict[str, str],
    api_key: dict[str, Any],
    runner: RecordingRunner,
    sb: AsyncClient,
) -> None:
    cases = [
        {"transport": "webrtc"},
        {"transport": "webrtc", "webrtc_offer": {"type": "offer"}},
        {**webrtc_join(), "room_url": "https://example.daily.co/r"},
        {**webrtc_join(), "transport": "simulated", "script": ["hi"]},
        {"room_url": "https://example.daily.co/r", "webrtc_offer": {"sdp": OFFER_SDP}},
    ]
    for body in cases:
        res = await client.post("/api/bot/join", json=body, headers=auth)
        assert res.status_code == 422, (body, res.text)
    assert await _threads_of(sb, api_key["id"]) == []
    assert runner.offers == {}


async def test_only_the_calls_key_may_trickle_candidates_to_a_running_webrtc_call(
    client: httpx.AsyncClient, auth: dict[str, str], runner: RecordingRunner, sb: AsyncClient
) -> None:
    res = await client.post("/api/bot/join", json=webrtc_join(), headers=auth)
    thread_id = res.json()["workflow_thread_id"]
    url = f"/api/bot/{thread_id}/webrtc"
    body = {"candidates": [{"candidate": CANDIDATE, "sdp_mid": "0", "sdp_mline_index": 0}]}

    _, other_plaintext = await keys_repo.create_local_key(sb, "other tenant")
    other_auth = {"Authorization": f"Bearer {other_plaintext}"}
    other = await client.patch(url, json=body, headers=other_auth)
    assert (other.status_code, other.json()["error"]) == (404, "thread_not_found")
    assert runner.candidates == {}

    own = await client.patch(url, json=body, headers=auth)
    assert own.status_code == 204, own.text
    # A browser's RTCIceCandidate.toJSON() names, and the end-of-candidates marker.
    browser = {"candidates": [{"candidate": "", "sdpMid": "0", "sdpMLineIndex": 0}]}
    assert (await client.patch(url, json=browser, headers=auth)).status_code == 204
    [first, last] = runner.candidates[thread_id]
    assert (first.candidate, first.sdp_mid, first.sdp_mline_index) == (CANDIDATE, "0", 0)
    assert (last.candidate, last.sdp_mid, last.sdp_mline_index) == ("", "0", 0)

    garbled = {"candidates": [{"candidate": "not a candidate", "sdp_mid": "0"}]}
    res = await client.patch(url, json=garbled, headers=auth)
    assert (res.status_code, res.json()["error"]) == (400, "invalid_ice_candidate")
    for invalid in ({"candidates": []}, {"candidates": [{"sdp_mid": "0"}]}, {}):
        assert (await client.patch(url, json=invalid, headers=auth)).status_code == 422

    # Not running here any more (another instance, or it ended): a clear 409.
    runner.running.discard(thread_id)
    res = await client.patch(url, json=body, headers=auth)
    assert (res.status_code, res.json()["error"]) == (409, "not_running_here")


async def test_candidates_for_a_call_that_is_not_webrtc_are_409(
    client: httpx.AsyncClient, auth: dict[str, str]
) -> None:
    res = await client.post(
        "/api/bot/join", json={"room_url": "https://example.daily.co/r"}, headers=auth
    )
    url = f"/api/bot/{res.json()['workflow_thread_id']}/webrtc"
    res = await client.patch(url, json={"candidates": [{"candidate": CANDIDATE}]}, headers=auth)
    assert (res.status_code, res.json()["error"]) == (409, "not_webrtc")
    missing = "/api/bot/00000000-0000-4000-8000-000000000000/webrtc"
    res = await client.patch(missing, json={"candidates": [{"candidate": CANDIDATE}]}, headers=auth)
    assert res.status_code == 404
