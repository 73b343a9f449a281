"""``flow numbers`` as an operator runs it (a real subprocess)."""

from __future__ import annotations

import json
from typing import Any

from supabase import AsyncClient

from flow import localstack
from flow.db import numbers as numbers_db
from tests.exporters.test_cli import flow
from tests.telephony.support import new_number


async def test_an_operator_routes_lists_and_removes_a_number(
    stack: localstack.StackInfo, sb: AsyncClient, api_key: dict[str, Any]
) -> None:
    number = new_number()
    config = {"greeting": "Hi!", "voice": "nova", "process_insights": False}
    code, out, err = await flow(
        stack, "numbers", "add", number, "--key", api_key["id"], "--bot-config", json.dumps(config)
    )
    assert code == 0, err
    assert number in out and api_key["id"] in out
    routed = await numbers_db.find_answering(sb, number)
    assert routed is not None and routed["config"] == config
    assert routed["api_key_id"] == api_key["id"]

    code, _, err = await flow(stack, "numbers", "add", number, "--key", api_key["id"])
    assert (code, "already routed" in err) == (1, True)
    code, _, err = await flow(stack, "numbers", "add", "5550001111", "--key", api_key["id"])
    assert (code, "E.164" in err) == (2, True)
    bad = json.dumps({"greting": "typo"})
    code, _, err = await flow(
        stack, "numbers", "add", new_number(), "--key", api_key["id"], "--bot-config", bad
    )
    assert (code, "greting" in err) == (2, True)
    code, _, err = await flow(stack, "numbers", "add", new_number(), "--key", "no such key")
    assert (code, "no key matches" in err) == (1, True)

    code, out, _ = await flow(stack, "numbers", "list")
    assert code == 0 and number in out and '"voice":"nova"' in out
    code, out, _ = await flow(stack, "numbers", "remove", number)
    assert (code, out.strip()) == (0, f"removed {number}")
    assert await numbers_db.find_answering(sb, number) is None
    code, _, err = await flow(stack, "numbers", "remove", number)
    assert (code, "not routed" in err) == (1, True)
