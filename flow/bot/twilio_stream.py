"""A phone call's Media Stream, as the API hands it to the runner, and the usage of its
call leg.

The API accepts Twilio's websocket, reads its ``start`` and spends the call's stream
token; the stream then travels with the :class:`~flow.bot.contract.CallRequest` (in
memory, like a Daily token) to the runner, whose transport speaks over it
(:mod:`flow.bot.twilio`). The API's websocket handler waits on :attr:`TwilioStream.done`.

The leg is metered once, when the call ends (:class:`TelephonyLegs`): one ``telephony``
event, provider ``twilio``, model ``inbound`` or ``outbound``, whose ``audio_seconds``
is the leg's exact duration from the stream's ``start`` to its ``stop`` (or the socket
closing, or Flow ending the call), priced per started minute. Its id derives from the
call SID, so however often the call's end is recorded, the leg counts once.

Nothing here imports Pipecat: the API builds streams.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any
from uuid import UUID

from supabase import AsyncClient

from flow.db import telephony as telephony_repo
from flow.metering.events import SECONDS_QUANTUM, UsageEvent, UsageKind, event_id_from
from flow.metering.pricing import PriceBook, cost_fields

if TYPE_CHECKING:
    from flow.bot.contract import CallRequest
    from flow.metering.meter import Meter

log = logging.getLogger(__name__)

PROVIDER = "twilio"


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass
class TwilioStream:
    """A Twilio Media Stream accepted for a call.

    Parameters:
        websocket: the accepted websocket (Starlette's), past its ``start`` message.
        stream_sid: Twilio's stream SID (every media message names it).
        call_sid: Twilio's call SID.
        direction: ``inbound`` (a call to a Flow number) or ``outbound`` (placed by Flow).
        started_at: when the ``start`` message arrived.
        ended_at: when the leg ended (``stop``, the socket closing, or Flow ending it).
        done: set once the call no longer uses the websocket.
    """

    websocket: Any
    stream_sid: str
    call_sid: str
    direction: str
    started_at: datetime = field(default_factory=_now)
    ended_at: datetime | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def end(self) -> None:
        """The leg is over (the first end counts)."""
        if self.ended_at is None:
            self.ended_at = _now()

    @property
    def seconds(self) -> Decimal:
        """The leg's duration so far (to the ledger's millisecond)."""
        end = self.ended_at or _now()
        micros = (end - self.started_at) // timedelta(microseconds=1)
        return (Decimal(max(micros, 0)) / 1_000_000).quantize(SECONDS_QUANTUM, ROUND_HALF_UP)


@dataclass(frozen=True)
class TelephonyLegs:
    """Meters the call legs of a runner's phone calls.

    Parameters:
        sb: the database (the leg's times are kept on its ``telephony_calls`` row).
        prices: the process's price book.
    """

    sb: AsyncClient
    prices: PriceBook

    def event(self, call: CallRequest, stream: TwilioStream) -> UsageEvent:
        seconds = stream.seconds
        return UsageEvent(
            id=event_id_from("twilio-call-leg", stream.call_sid),
            workflow_thread_id=UUID(call.workflow_thread_id),
            api_key_id=UUID(call.api_key_id),
            end_user_id=call.end_user_id,
            occurred_at=stream.started_at,
            kind=UsageKind.TELEPHONY,
            provider=PROVIDER,
            model=stream.direction,
            processor="telephony",
            audio_seconds=seconds,
            **cost_fields(self.prices.telephony(PROVIDER, stream.direction, seconds)),
        )

    def record(self, call: CallRequest, meter: Meter) -> None:
        """End the call's leg and give its usage to the call's meter."""
        stream = call.stream
        if stream is None:
            return
        stream.end()
        meter.add(self.event(call, stream))

    async def settle(self, call: CallRequest) -> None:
        """Keep the leg's times on its row (best effort: the ledger holds its duration),
        then let the websocket handler go."""
        stream = call.stream
        if stream is None:
            return
        try:
            ended = stream.ended_at or _now()
            await telephony_repo.save_stream_times(
                self.sb, call.workflow_thread_id, stream.started_at, ended
            )
        except Exception:
            log.warning("call %s: the stream's times were not saved", call.workflow_thread_id)
        finally:
            stream.done.set()
