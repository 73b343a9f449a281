"""A phone call's Pipecat transport: Twilio Media Streams over the websocket the API
accepted (:class:`~flow.bot.twilio_stream.TwilioStream`).

``FastAPIWebsocketTransport`` with Pipecat's ``TwilioFrameSerializer``: the caller's
8 kHz mu-law comes in as PCM at the pipeline's rate, the bot's speech goes out as 8 kHz
mu-law ``media`` messages, and an interruption sends Twilio ``clear`` (it drops the
audio it has queued). The call ends when Twilio sends ``stop`` (the serializer asks the
worker to end, gracefully, so every usage metric is flushed) or the socket closes
(``on_client_disconnected``, followed as for any caller); either ends the leg's clock.
When Flow ends the call itself, the serializer hangs up through Twilio's REST API
(``TWILIO_API_BASE_URL``) and the socket is closed.
"""

from __future__ import annotations

from typing import Any

from pipecat.frames.frames import EndWorkerFrame, Frame
from pipecat.serializers.twilio import TwilioFrameSerializer
from pipecat.transports.base_transport import BaseTransport
from pipecat.transports.websocket.fastapi import FastAPIWebsocketParams, FastAPIWebsocketTransport

from flow.bot.twilio_stream import TwilioStream
from flow.config import Settings

HUNG_UP = "the caller hung up (Twilio stop)"


class FlowTwilioSerializer(TwilioFrameSerializer):
    """Pipecat's serializer, which ignores ``stop``: here ``stop`` ends the leg and the
    call."""

    def __init__(self, stream: TwilioStream, **kwargs: Any) -> None:
        super().__init__(stream.stream_sid, **kwargs)
        self._stream = stream

    async def deserialize(self, data: str | bytes) -> Frame | None:
        # A media payload is base64 (no quotes): only a control message names "stop".
        text = data.decode(errors="replace") if isinstance(data, bytes) else data
        if '"stop"' in text and '"event"' in text and _is_stop(text):
            self._stream.end()
            return EndWorkerFrame(reason=HUNG_UP)
        if self._stream.ended_at is not None:
            return None  # nothing after the leg ended is the caller's
        return await super().deserialize(data)


def _is_stop(text: str) -> bool:
    import json

    try:
        return bool(json.loads(text).get("event") == "stop")
    except (ValueError, AttributeError):
        return False


def twilio_transport(stream: TwilioStream, settings: Settings) -> BaseTransport:
    """The call's transport over its Media Stream."""
    serializer = FlowTwilioSerializer(
        stream,
        call_sid=stream.call_sid,
        account_sid=settings.twilio_account_sid,
        auth_token=settings.twilio_auth_token.get_secret_value(),
        base_url=settings.twilio_api_base_url,
    )
    transport = FastAPIWebsocketTransport(
        stream.websocket,
        params=FastAPIWebsocketParams(
            audio_in_enabled=True,
            audio_out_enabled=True,
            add_wav_header=False,
            serializer=serializer,
            # Twilio sends no Origin; its requests are authenticated by the stream token.
            allowed_origins=[],
        ),
    )

    @transport.event_handler("on_client_disconnected")
    async def _closed(_transport: Any, *_args: Any) -> None:
        stream.end()

    return transport
