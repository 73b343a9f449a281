"""A bot runner for API tests: it records every call it is given instead of running it.

It keeps the :class:`~flow.bot.contract.CallRunner` contract (capacity, ``AtCapacity``,
``stop`` answering whether it held the call, a WebRTC offer answered before the call is
submitted, trickled candidates only for a peer it holds) so the API's handling of each
can be seen.
"""

from __future__ import annotations

from flow.bot.contract import (
    AtCapacity,
    CallRequest,
    IceCandidate,
    InvalidIceCandidate,
    InvalidWebRTCOffer,
    WebRTCAnswer,
    WebRTCOffer,
)

ANSWER_SDP = (
    "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=recorded\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"
)


class RecordingRunner:
    def __init__(self, capacity: int = 100) -> None:
        self.capacity = capacity
        self.submitted: list[CallRequest] = []
        self.running: set[str] = set()
        self.stopped: list[str] = []
        # Refuse the next submit even though has_capacity() said yes (a race with
        # another join), with this Retry-After.
        self.refuse_next_submit: int | None = None
        self.shut_down = False
        # WebRTC: offers answered (by thread id), candidates received, and the reason to
        # refuse the next offer with (as a runner whose WebRTC library refuses it).
        self.offers: dict[str, WebRTCOffer] = {}
        self.released: list[str] = []
        self.candidates: dict[str, list[IceCandidate]] = {}
        self.refuse_next_offer: str | None = None
        # Draining: whether new calls are refused, and the goodbyes said.
        self.taking_calls = True
        self.goodbyes: list[str] = []

    def has_capacity(self) -> bool:
        return self.taking_calls and len(self.running) < self.capacity

    @property
    def active_calls(self) -> list[str]:
        return list(self.running)

    def stop_taking_calls(self) -> None:
        self.taking_calls = False

    async def hang_up(self, goodbye: str) -> None:
        self.goodbyes.append(goodbye)
        self.running.clear()

    async def submit(self, call: CallRequest) -> None:
        if self.refuse_next_submit is not None:
            retry_after, self.refuse_next_submit = self.refuse_next_submit, None
            raise AtCapacity(retry_after)
        if not self.has_capacity():
            raise AtCapacity(1)
        if call.transport == "webrtc" and call.workflow_thread_id not in self.offers:
            raise ValueError("a webrtc call is submitted after answer_webrtc")
        self.submitted.append(call)
        self.running.add(call.workflow_thread_id)

    async def answer_webrtc(self, workflow_thread_id: str, offer: WebRTCOffer) -> WebRTCAnswer:
        if self.refuse_next_offer is not None:
            reason, self.refuse_next_offer = self.refuse_next_offer, None
            raise InvalidWebRTCOffer(reason)
        if not self.has_capacity():
            raise AtCapacity(1)
        self.offers[workflow_thread_id] = offer
        return WebRTCAnswer(sdp=ANSWER_SDP)

    async def release_webrtc(self, workflow_thread_id: str) -> None:
        self.offers.pop(workflow_thread_id, None)
        self.released.append(workflow_thread_id)

    async def add_ice_candidates(
        self, workflow_thread_id: str, candidates: list[IceCandidate]
    ) -> bool:
        if workflow_thread_id not in self.running or workflow_thread_id not in self.offers:
            return False
        if any(c.candidate and not c.candidate.startswith("candidate:") for c in candidates):
            raise InvalidIceCandidate("not a candidate line")
        self.candidates.setdefault(workflow_thread_id, []).extend(candidates)
        return True

    async def stop(self, workflow_thread_id: str) -> bool:
        if workflow_thread_id not in self.running:
            return False
        self.running.discard(workflow_thread_id)
        self.stopped.append(workflow_thread_id)
        return True

    async def shutdown(self) -> None:
        self.shut_down = True
