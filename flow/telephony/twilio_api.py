"""Twilio's side of a phone call, through the official ``twilio`` SDK: the signatures
of its webhooks, the TwiML Flow answers with, and the REST call that places a call.

- :func:`signature_ok`: ``X-Twilio-Signature`` is an HMAC of the URL Twilio requested
  and the POSTed parameters, keyed with ``TWILIO_AUTH_TOKEN``. Twilio requested the
  public URL (``FLOW_PUBLIC_URL``), not whatever address a proxy forwarded it to, so
  that is the URL checked.
- :func:`stream_twiml`: ``<Connect><Stream>`` to Flow's Media Stream websocket, with
  the call's one-time token as a ``<Parameter>``; :func:`goodbye_twiml` a polite
  ``<Say>`` and ``<Hangup/>``.
- :func:`place_call`: ``Calls.create`` on ``TWILIO_API_BASE_URL`` (Twilio's REST API by
  default), with the stream TwiML and the status callback; :func:`cancel_call` cancels
  one still ringing.

Failure behaviour: both raise :class:`TwilioError`, ``retryable`` when
Twilio could not be reached, answered 5xx or 429, or did not answer within
:data:`REST_TIMEOUT_SECONDS`; otherwise Twilio refused the call. Its message is Flow's
own (Twilio's HTTP status and numeric error code, safe to show a caller); the text of
Twilio's answer is a remote body, so it is only logged.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeVar

from twilio.base.exceptions import TwilioRestException
from twilio.http.async_http_client import AsyncTwilioHttpClient
from twilio.request_validator import RequestValidator
from twilio.rest import Client
from twilio.twiml.voice_response import Connect, VoiceResponse

from flow.config import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

VOICE_PATH = "/api/telephony/twilio/voice"
STATUS_PATH = "/api/telephony/twilio/status"
STREAM_PATH = "/api/telephony/twilio/stream"
TOKEN_PARAMETER = "token"
REST_TIMEOUT_SECONDS = 10.0
# How long an outbound call rings before Twilio gives up (no-answer).
RING_SECONDS = 30
STATUS_EVENTS = ["initiated", "ringing", "answered", "completed"]


class TwilioError(Exception):
    """Twilio did not do what it was asked (place or cancel a call).

    Parameters:
        message: why, in Flow's words: Twilio's status and error code, never its text.
        retryable: Twilio could not be reached or was unavailable.
        code: Twilio's numeric error code (``21211``), when it gave one.
    """

    def __init__(self, message: str, *, retryable: bool, code: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = code


def error_code(value: object) -> int | None:
    """Twilio's numeric error code, or None for anything else an answer holds there."""
    text = str(value)
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else None


def public_url(settings: Settings, path: str) -> str:
    return settings.flow_public_url + path


def stream_url(settings: Settings) -> str:
    """The Media Stream websocket's URL: the public URL with ``wss`` for ``https``."""
    base = settings.flow_public_url
    scheme, rest = base.split("://", 1) if "://" in base else ("https", base)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}{STREAM_PATH}"


def signature_ok(
    settings: Settings, url: str, params: Mapping[str, str], signature: str | None
) -> bool:
    """Whether Twilio signed this request with the account's auth token."""
    token = settings.twilio_auth_token.get_secret_value()
    if not token or not signature:
        return False
    return bool(RequestValidator(token).validate(url, dict(params), signature))


def stream_twiml(settings: Settings, token: str) -> str:
    response = VoiceResponse()
    connect = Connect()
    connect.stream(url=stream_url(settings)).parameter(name=TOKEN_PARAMETER, value=token)
    response.append(connect)
    return str(response)


def goodbye_twiml(message: str) -> str:
    response = VoiceResponse()
    response.say(message)
    response.hangup()
    return str(response)


def caller_id(settings: Settings, number: str) -> str:
    """How a caller is named on the call (its ``end_user_id``): the number, or with
    ``FLOW_TELEPHONY_HASH_CALLERS`` a keyed hash of it (stable per number, not reversible
    without ``FLOW_SECRET_KEY``)."""
    if not settings.flow_telephony_hash_callers:
        return number
    key = settings.flow_secret_key.get_secret_value().encode()
    digest = hmac.new(key, f"caller:{number}".encode(), hashlib.sha256).hexdigest()
    return f"caller_{digest[:40]}"


async def _rest(settings: Settings, request: Callable[[Client], Awaitable[T]]) -> T:
    """One request to Twilio's REST API (``TWILIO_API_BASE_URL``) through the SDK;
    raises :class:`TwilioError` when it fails."""
    http = AsyncTwilioHttpClient()
    client = Client(
        settings.twilio_account_sid,
        settings.twilio_auth_token.get_secret_value(),
        http_client=http,
    )
    client.api.base_url = settings.twilio_api_base_url
    try:
        return await asyncio.wait_for(request(client), REST_TIMEOUT_SECONDS)
    except TwilioRestException as exc:
        retryable = exc.status >= 500 or exc.status == 429
        code = error_code(exc.code)
        reason = f"Twilio answered HTTP {int(exc.status)}" + (
            f" (Twilio error {code}, https://www.twilio.com/docs/errors/{code})" if code else ""
        )
        log.warning("%s: %r", reason, str(exc.msg)[:500])
        raise TwilioError(reason, retryable=retryable, code=code) from None
    except Exception as exc:
        log.warning("a request to Twilio failed: %s", exc.__class__.__name__)
        raise TwilioError("Twilio could not be reached", retryable=True) from None
    finally:
        await http.close()


async def place_call(settings: Settings, *, to: str, twiml: str) -> str:
    """Place a call from ``TWILIO_FROM_NUMBER`` to ``to``; returns its call SID."""
    created = await _rest(
        settings,
        lambda client: client.calls.create_async(
            to=to,
            from_=settings.twilio_from_number,
            twiml=twiml,
            status_callback=public_url(settings, STATUS_PATH),
            status_callback_event=STATUS_EVENTS,
            status_callback_method="POST",
            timeout=RING_SECONDS,
        ),
    )
    if not created.sid:
        raise TwilioError("Twilio answered without a call SID", retryable=True)
    return str(created.sid)


async def cancel_call(settings: Settings, call_sid: str) -> None:
    """Cancel a call that has not been answered (Twilio ignores it for one that was)."""
    await _rest(settings, lambda client: client.calls(call_sid).update_async(status="canceled"))
