"""The phone numbers Flow answers: ``flow numbers add|list|remove``, and what a number's
configuration may hold (:class:`NumberConfig`).

A number (E.164) is routed to the API key that pays for its calls; its configuration is
the bot's (``system_prompt``, ``greeting``, ``llm_model``, ``voice``) and the call's
processing (``process_insights``, ``analysis_prompt``, ``webhook_url``, ``metadata``),
as a join would give them. ``--key`` names a key by id, prefix or name.

Failure behaviour: a key that matches no key (or several), or a number that is not
routed, prints ``error: ...`` and exits 1; a malformed number or configuration, or a
``webhook_url`` Flow will not call, prints ``error: ...`` and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from typing import Annotated, Any

from pydantic import AnyUrl, ConfigDict, Field, UrlConstraints, ValidationError

from flow.bot.contract import BotConfig
from flow.config import get_settings
from flow.db import numbers as numbers_db
from flow.db.client import connect
from flow.db.keys import resolve_key
from flow.net.outbound import UrlNotAllowed
from flow.workflows.webhook import WebhookURLError, validate_webhook_url

E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
E164_PATTERN = E164.pattern

WebUrl = Annotated[
    AnyUrl, UrlConstraints(allowed_schemes=["https", "http"], host_required=True, max_length=2048)
]


class NumberConfig(BotConfig):
    """How calls to a number are answered and processed; unset fields take the
    settings' defaults, as in a join.

    Parameters:
        process_insights: extract insights from the transcript after the call.
        analysis_prompt: instructions for the insights extraction.
        webhook_url: where the result is posted when the call is processed.
        metadata: a small JSON object stored with each call.
    """

    model_config = ConfigDict(extra="forbid")

    process_insights: bool = True
    analysis_prompt: str | None = Field(default=None, min_length=1, max_length=20_000)
    webhook_url: WebUrl | None = None
    metadata: dict[str, Any] = Field(default_factory=dict, max_length=50)

    def bot_config(self) -> BotConfig:
        return BotConfig.model_validate(self.model_dump(include=set(BotConfig.model_fields)))

    def thread_fields(self) -> dict[str, Any]:
        """The ``workflow_threads`` columns a call to the number starts with."""
        return {
            "bot_config": self.bot_config().model_dump(exclude_none=True),
            "process_insights": self.process_insights,
            "analysis_prompt": self.analysis_prompt,
            "webhook_url": str(self.webhook_url) if self.webhook_url else None,
            "metadata": self.metadata,
        }


def is_e164(number: str) -> bool:
    return bool(E164.match(number))


def _error(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def cmd_add(args: argparse.Namespace) -> int:
    async def go() -> int:
        if not is_e164(args.number):
            return _error(f"{args.number!r} is not an E.164 number (+15550001111)", 2)
        try:
            config = NumberConfig.model_validate_json(args.bot_config)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "bot_config"
            return _error(f"--bot-config {where}: {first['msg']}", 2)
        if config.webhook_url is not None:
            try:
                await validate_webhook_url(str(config.webhook_url), get_settings())
            except (UrlNotAllowed, WebhookURLError) as exc:
                return _error(f"webhook_url: {exc}", 2)
        sb = await connect()
        key = await resolve_key(sb, args.key)
        stored = config.model_dump(mode="json", exclude_unset=True)
        try:
            await numbers_db.add_number(sb, args.number, key["id"], stored)
        except numbers_db.NumberTaken as exc:
            return _error(str(exc), 1)
        print(f"{args.number} -> key {key['id']} ({key['name']})")
        return 0

    return asyncio.run(go())


def cmd_list(args: argparse.Namespace) -> int:
    async def go() -> int:
        for row in await numbers_db.list_numbers(await connect()):
            key = row.get("api_keys") or {}
            state = "" if key.get("is_active", True) else "  (key revoked: not answered)"
            config = json.dumps(row["config"], separators=(",", ":")) if row["config"] else "{}"
            print(f"{row['number']:<17} {row['api_key_id']}  {key.get('name', '')}{state}")
            print(f"    {config}")
        return 0

    return asyncio.run(go())


def cmd_remove(args: argparse.Namespace) -> int:
    async def go() -> int:
        if not await numbers_db.remove_number(await connect(), args.number):
            return _error(f"{args.number} is not routed", 1)
        print(f"removed {args.number}")
        return 0

    return asyncio.run(go())


def register(sub: Any) -> None:
    """Adds ``numbers`` to the ``flow`` command."""
    numbers = sub.add_parser("numbers", help="phone numbers Flow answers, and who pays for them")
    nsub = numbers.add_subparsers(dest="numbers_command", required=True)
    add = nsub.add_parser("add", help="route a Twilio number's calls to a key")
    add.add_argument("number", help="the number, in E.164 (+15550001111)")
    add.add_argument("--key", required=True, help="the key that pays: its id, prefix or name")
    add.add_argument(
        "--bot-config",
        default="{}",
        help='JSON: {"system_prompt", "greeting", "llm_model", "voice", "process_insights", '
        '"analysis_prompt", "webhook_url", "metadata"}',
    )
    add.set_defaults(func=cmd_add)
    nsub.add_parser("list", help="list routed numbers").set_defaults(func=cmd_list)
    remove = nsub.add_parser("remove", help="stop answering a number")
    remove.add_argument("number")
    remove.set_defaults(func=cmd_remove)
