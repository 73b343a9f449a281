"""Which Daily rooms a bot may join.

A join's ``room_url`` is handed to Daily's client library, which connects to it: it is
a URL a customer gives Flow like any other, and more. It must be ``https``, on a Daily
domain (``*.daily.co``, or a host ``DAILY_ROOM_HOSTS`` adds, for Daily's custom
domains) and pass the outbound-URL policy (:func:`flow.net.outbound.check_url`: no
userinfo, no private, loopback, link-local or cloud metadata address). Each refusal is
:class:`~flow.net.outbound.UrlNotAllowed` naming the rule.

A host that does not resolve (yet) passes, as a webhook's does: Daily's library
resolves it itself when the bot joins.
"""

from __future__ import annotations

import httpx

from flow.config import Settings
from flow.net.outbound import Resolver, UrlNotAllowed, check_url

DAILY_DOMAIN = "daily.co"


def on_room_host(host: str, extra_hosts: list[str]) -> bool:
    """Whether ``host`` (IDNA, lower case) is ``*.daily.co`` or one of ``extra_hosts``
    (``name`` for that host, ``*.name`` for any name under it)."""
    host = host.lower().rstrip(".")
    for allowed in (f"*.{DAILY_DOMAIN}", *extra_hosts):
        if allowed.startswith("*."):
            if host.endswith(allowed[1:]) and len(host) > len(allowed) - 1:
                return True
        elif host == allowed:
            return True
    return False


async def check_room_url(url: str, settings: Settings, *, resolver: Resolver | None = None) -> str:
    """Every rule a Daily room URL must pass (raises :class:`UrlNotAllowed`); returns
    the URL."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise UrlNotAllowed("the URL is not valid") from None
    if parsed.scheme != "https":
        raise UrlNotAllowed("a Daily room URL must be https")
    host = parsed.raw_host.decode("ascii")
    if not on_room_host(host, settings.room_hosts()):
        raise UrlNotAllowed(
            f"host {host} is not a Daily domain (*.{DAILY_DOMAIN}, or a host DAILY_ROOM_HOSTS adds)"
        )
    return await check_url(url, settings, resolver=resolver, require_resolution=False)
