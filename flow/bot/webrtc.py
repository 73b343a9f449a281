"""WebRTC calls: the caller's peer connection, answered at the join, and its transport.

The caller's media ends in this process, over Pipecat's SmallWebRTC (aiortc):

- :func:`answer_offer` answers the caller's SDP offer. The answer is sent once every
  local ICE candidate is gathered, so it carries them all (the caller need not wait
  for trickled ones); the caller may trickle its own (:meth:`WebRTCPeer.add_candidates`).
- :class:`WaitingPeers` holds answered peers until their call is submitted, and closes
  one whose call never is after ``FLOW_WEBRTC_CONNECT_TIMEOUT_SECONDS``.
- :func:`webrtc_transport` is the call's Pipecat transport over the peer.

``FLOW_WEBRTC_LOOPBACK`` makes aioice gather the loopback address only: it never offers
127.0.0.1 by itself, so without it a caller on a machine whose only interface is
loopback never connects. The choice is process-wide (aioice has no setting for it).

This module imports no WebRTC library until a peer is answered, so an instance that
takes no WebRTC calls never loads aiortc.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from flow.bot.contract import (
    IceCandidate,
    InvalidIceCandidate,
    InvalidWebRTCOffer,
    WebRTCAnswer,
    WebRTCOffer,
)
from flow.config import Settings

if TYPE_CHECKING:
    from pipecat.transports.base_transport import BaseTransport
    from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection

log = logging.getLogger(__name__)

# Gathering the local candidates (and asking STUN/TURN servers) must end by then.
ANSWER_TIMEOUT_SECONDS = 10.0
# Pipecat closes a peer stuck in "connecting" after its own timeout; Flow's ends the
# call first, as webrtc_timeout.
PIPECAT_TIMEOUT_MARGIN_SECONDS = 30


def _loopback_addresses(use_ipv4: bool = True, use_ipv6: bool = True) -> list[str]:
    return ["127.0.0.1"] if use_ipv4 else ["::1"]


def use_loopback_candidates() -> None:
    """Gather loopback host candidates only (process-wide)."""
    import aioice.ice

    aioice.ice.get_host_addresses = _loopback_addresses


def ice_servers(settings: Settings) -> list[Any]:
    from aiortc import RTCIceServer

    return [
        RTCIceServer(
            urls=server["urls"],
            username=server.get("username"),
            credential=server.get("credential"),
        )
        for server in settings.webrtc_ice_servers()
    ]


class WebRTCPeer:
    """A caller's answered peer connection.

    Parameters:
        connection: Pipecat's connection (an aiortc ``RTCPeerConnection`` inside).
        answer: the SDP answer given to the caller.
    """

    def __init__(self, connection: SmallWebRTCConnection, answer: WebRTCAnswer) -> None:
        self.connection = connection
        self.answer = answer

    @property
    def closed(self) -> bool:
        """The connection failed or closed (it never reopens)."""
        return self.connection.pc.connectionState in ("failed", "closed")

    async def add_candidates(self, candidates: list[IceCandidate]) -> None:
        """Add the caller's trickled candidates; raises :class:`InvalidIceCandidate`."""
        from aiortc.sdp import candidate_from_sdp

        for c in candidates:
            if not c.candidate:
                await self.connection.add_ice_candidate(None)  # the end of candidates
                continue
            text = c.candidate.removeprefix("a=").removeprefix("candidate:")
            try:
                candidate = candidate_from_sdp(text)
                candidate.sdpMid = c.sdp_mid
                candidate.sdpMLineIndex = c.sdp_mline_index
                await self.connection.add_ice_candidate(candidate)
            except Exception as exc:
                raise InvalidIceCandidate(
                    f"candidate {c.candidate[:80]!r} cannot be used: {_reason(exc)}"
                ) from None

    async def close(self) -> None:
        try:
            await self.connection.disconnect()
        except Exception:
            log.warning("could not close a WebRTC peer", exc_info=True)


def _reason(exc: Exception) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    return text[:200]


async def answer_offer(offer: WebRTCOffer, settings: Settings) -> WebRTCPeer:
    """Answer the caller's offer. Raises :class:`InvalidWebRTCOffer` when the offer
    cannot be answered, ``TimeoutError`` when gathering candidates takes too long."""
    problem = offer.problem()
    if problem is not None:
        raise InvalidWebRTCOffer(problem)
    if settings.flow_webrtc_loopback:
        use_loopback_candidates()
    from pipecat.transports.smallwebrtc.connection import SmallWebRTCConnection

    timeout = settings.flow_webrtc_connect_timeout_seconds
    connection = SmallWebRTCConnection(
        ice_servers=ice_servers(settings),
        connection_timeout_secs=int(timeout) + PIPECAT_TIMEOUT_MARGIN_SECONDS,
    )
    try:
        await asyncio.wait_for(
            connection.initialize(sdp=offer.sdp, type=offer.type), ANSWER_TIMEOUT_SECONDS
        )
        answer = connection.get_answer()
        if answer is None:
            raise ValueError("no answer was produced")
    except TimeoutError:
        await connection.pc.close()
        raise
    except Exception as exc:
        await connection.pc.close()
        raise InvalidWebRTCOffer(f"the offer cannot be answered: {_reason(exc)}") from None
    return WebRTCPeer(connection, WebRTCAnswer(sdp=answer["sdp"], type=answer["type"]))


class WaitingPeers:
    """Answered peers whose call is not submitted yet.

    Parameters:
        expire_seconds: a peer not taken within this long is closed.
    """

    def __init__(self, expire_seconds: float) -> None:
        self._expire_seconds = expire_seconds
        self._peers: dict[str, tuple[WebRTCPeer, asyncio.TimerHandle]] = {}
        self._closing: set[asyncio.Future[None]] = set()

    def __len__(self) -> int:
        return len(self._peers)

    def add(self, workflow_thread_id: str, peer: WebRTCPeer) -> None:
        timer = asyncio.get_running_loop().call_later(
            self._expire_seconds, self._expire, workflow_thread_id
        )
        self._peers[workflow_thread_id] = (peer, timer)

    def get(self, workflow_thread_id: str) -> WebRTCPeer | None:
        held = self._peers.get(workflow_thread_id)
        return held[0] if held else None

    def take(self, workflow_thread_id: str) -> WebRTCPeer | None:
        held = self._peers.pop(workflow_thread_id, None)
        if held is None:
            return None
        held[1].cancel()
        return held[0]

    def _expire(self, workflow_thread_id: str) -> None:
        peer = self.take(workflow_thread_id)
        if peer is not None:
            log.warning("call %s: its WebRTC peer was never used; closed", workflow_thread_id)
            closing = asyncio.ensure_future(peer.close())
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        for tid in list(self._peers):
            peer = self.take(tid)
            if peer is not None:
                await peer.close()


def webrtc_transport(peer: WebRTCPeer) -> BaseTransport:
    """The call's transport over its peer: audio in (at the pipeline's input rate) and
    audio out."""
    from pipecat.transports.base_transport import TransportParams
    from pipecat.transports.smallwebrtc.transport import SmallWebRTCTransport

    return SmallWebRTCTransport(
        webrtc_connection=peer.connection,
        params=TransportParams(audio_in_enabled=True, audio_out_enabled=True),
    )
