"""The parts of a WebRTC call below the API: offers checked as text, answered by aiortc
(with loopback candidates), trickled candidates, peers nobody used, the settings, and
the VAD and turn settings every call on real audio takes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiortc import RTCPeerConnection
from pipecat.turns.user_stop import (
    SpeechTimeoutUserTurnStopStrategy,
    TurnAnalyzerUserTurnStopStrategy,
)
from pipecat.turns.user_turn_strategies import UserTurnStrategies
from pydantic import ValidationError

from flow.bot.contract import IceCandidate, InvalidIceCandidate, InvalidWebRTCOffer, WebRTCOffer
from flow.bot.pipeline import audio_turns
from flow.bot.shared import CallSileroVAD, CallSmartTurn
from flow.bot.webrtc import WaitingPeers, answer_offer, use_loopback_candidates
from flow.config import Settings


def bare(**kw: object) -> Settings:
    return Settings(_env_file=None, **kw)  # type: ignore[arg-type,call-arg]


@pytest.fixture
async def offer() -> AsyncIterator[str]:
    """A real offer: an aiortc caller's, with its (loopback) candidates."""
    use_loopback_candidates()
    pc = RTCPeerConnection()
    pc.addTransceiver("audio", direction="sendrecv")
    await pc.setLocalDescription(await pc.createOffer())
    yield pc.localDescription.sdp
    await pc.close()


def test_offers_are_checked_as_text(offer: str) -> None:
    assert WebRTCOffer(offer).problem() is None
    assert WebRTCOffer(offer.replace("\r\n", "\n")).problem() is None
    refused = {
        "": "must start with v=0",
        "hello": "must start with v=0",
        "v=0\r\nthis is not sdp\r\n": "line 2",
        offer.replace("m=audio", "m=video"): "no audio section",
        offer.replace("a=sendrecv", "a=recvonly"): "recvonly",
        offer.replace("a=sendrecv", "a=inactive"): "inactive",
        offer.replace("a=ice-ufrag:", "a=x-ufrag:"): "a=ice-ufrag",
        offer.replace("a=fingerprint:", "a=x-fingerprint:"): "a=fingerprint",
        offer + "a=x:" + "y" * 32 * 1024 + "\r\n": "at most 32768",
    }
    for sdp, reason in refused.items():
        problem = WebRTCOffer(sdp).problem()
        assert problem is not None and reason in problem, (reason, problem)
    answer = WebRTCOffer(offer, type="answer").problem()
    assert answer is not None and "'offer'" in answer


async def test_an_offer_is_answered_with_loopback_candidates_and_candidates_trickle(
    offer: str,
) -> None:
    peer = await answer_offer(WebRTCOffer(offer), bare(flow_webrtc_loopback=True))
    try:
        assert peer.answer.type == "answer"
        candidates = [line for line in peer.answer.sdp.splitlines() if "candidate:" in line]
        assert candidates and all(" 127.0.0.1 " in line for line in candidates)
        await peer.add_candidates(
            [
                IceCandidate("candidate:9 1 udp 2130706431 127.0.0.1 50000 typ host", "0", 0),
                IceCandidate("a=candidate:8 1 udp 2130706431 127.0.0.1 50001 typ host", "0"),
                IceCandidate("", "0", 0),  # the end of candidates
            ]
        )
        for bad in (IceCandidate("candidate:oops", "0", 0), IceCandidate("1 1 udp 1 x 1 typ host")):
            with pytest.raises(InvalidIceCandidate):
                await peer.add_candidates([bad])
    finally:
        await peer.close()


async def test_an_offer_aiortc_cannot_answer_is_an_invalid_offer(offer: str) -> None:
    no_common_codec = offer
    for codec in ("opus/48000/2", "G722/8000", "PCMU/8000", "PCMA/8000"):
        no_common_codec = no_common_codec.replace(codec, "x-none/8000")
    assert WebRTCOffer(no_common_codec).problem() is None  # it reads as an offer
    with pytest.raises(InvalidWebRTCOffer, match="cannot be answered"):
        await answer_offer(WebRTCOffer(no_common_codec), bare(flow_webrtc_loopback=True))


async def test_a_peer_nobody_uses_is_closed(offer: str) -> None:
    peer = await answer_offer(WebRTCOffer(offer), bare(flow_webrtc_loopback=True))
    waiting = WaitingPeers(expire_seconds=0.1)
    waiting.add("call-1", peer)
    assert waiting.get("call-1") is peer and len(waiting) == 1
    await asyncio.sleep(0.5)
    assert waiting.get("call-1") is None and len(waiting) == 0
    assert peer.connection.pc.connectionState == "closed"


def test_webrtc_settings_are_checked() -> None:
    servers = bare(
        flow_webrtc_ice_servers='["stun:stun.example.com:3478", {"urls": ["turn:t.example.com'
        ':3478?transport=udp"], "username": "u", "credential": "p"}]'
    ).webrtc_ice_servers()
    assert servers == [
        {"urls": ["stun:stun.example.com:3478"]},
        {"urls": ["turn:t.example.com:3478?transport=udp"], "username": "u", "credential": "p"},
    ]
    assert bare().webrtc_ice_servers() == []
    for bad in ("{", '{"urls": "stun:x"}', '["https://x"]', '[{"url": "stun:x"}]', "[1]"):
        with pytest.raises(ValidationError, match="FLOW_WEBRTC_ICE_SERVERS"):
            bare(flow_webrtc_ice_servers=bad)
    with pytest.raises(ValidationError, match="FLOW_WEBRTC_LOOPBACK"):
        bare(flow_env="production", flow_webrtc_loopback=True)
    assert bare().flow_webrtc_connect_timeout_seconds == 30


def test_real_audio_takes_the_vad_and_turn_settings() -> None:
    defaults = audio_turns(bare())
    assert defaults.vad_analyzer is not None and defaults.vad_analyzer.params.stop_secs == 0.2
    # Pipecat's default strategies (the smart-turn model stops a turn), over the
    # process's models.
    assert isinstance(defaults.vad_analyzer, CallSileroVAD)
    pipecats = UserTurnStrategies()
    assert defaults.user_turn_strategies is not None
    starts = [type(s) for s in defaults.user_turn_strategies.start or []]
    assert starts == [type(s) for s in pipecats.start or []]
    [smart] = defaults.user_turn_strategies.stop or []
    assert isinstance(smart, TurnAnalyzerUserTurnStopStrategy)
    assert isinstance(smart._turn_analyzer, CallSmartTurn)
    assert [type(s) for s in pipecats.stop or []] == [TurnAnalyzerUserTurnStopStrategy]

    timed = audio_turns(
        bare(flow_vad_stop_secs=0.5, flow_turn_stop="timeout", flow_turn_stop_timeout_seconds=0.8)
    )
    assert timed.vad_analyzer is not None and timed.vad_analyzer.params.stop_secs == 0.5
    assert timed.user_turn_strategies is not None
    [stop] = timed.user_turn_strategies.stop or []
    assert isinstance(stop, SpeechTimeoutUserTurnStopStrategy)
    assert stop._user_speech_timeout == 0.8
