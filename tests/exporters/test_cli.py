"""``flow integrations`` and ``flow sync`` as an operator runs them (a real subprocess)."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import pytest
from supabase import AsyncClient

from flow import localstack
from tests.exporters.conftest import FLOW_SECRET, PH_KEY, integration_row, seed
from tests.fakes.analytics_sinks import PostHogSink

pytestmark = pytest.mark.usefixtures("cleanup_integrations")
# This checkout's code first, whatever the virtualenv was installed from.
ROOT = str(Path(__file__).resolve().parents[2])


async def flow(stack: localstack.StackInfo, *args: str, **extra_env: str) -> tuple[int, str, str]:
    path = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    env = {
        **os.environ,
        **stack.env(),
        "FLOW_SECRET_KEY": FLOW_SECRET,
        "PYTHONPATH": path,
        "FLOW_ALLOW_PRIVATE_URLS": "true",  # the sink listens on 127.0.0.1
        **extra_env,
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "flow.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=90)
    return proc.returncode or 0, out.decode(), err.decode()


async def test_operator_adds_syncs_pauses_and_removes(
    stack: localstack.StackInfo,
    sb: AsyncClient,
    posthog_sink: PostHogSink,
    api_key: dict[str, Any],
    thread: dict[str, Any],
) -> None:
    await seed(sb, thread, 2500)
    code, out, err = await flow(
        stack,
        "integrations",
        "add",
        "posthog",
        "--key-id",
        api_key["id"],
        "--host",
        posthog_sink.url,
        "--project-api-key",
        PH_KEY,
        "--backfill",
        "all",
    )
    assert code == 0, err
    assert PH_KEY not in out + err
    iid = next(line.split('"')[3] for line in out.splitlines() if line.strip().startswith('"id"'))

    code, out, err = await flow(stack, "sync", iid)
    assert code == 0, err
    assert "exported=2500" in out
    assert "2500/2500" in err  # the progress bar on stderr
    assert len(posthog_sink.events) == 2500

    code, out, _ = await flow(stack, "integrations", "list", "--key-id", api_key["id"])
    assert iid in out and "exported=2500" in out
    assert (await flow(stack, "integrations", "pause", iid))[0] == 0
    assert (await integration_row(sb, iid))["status"] == "paused"
    code, _, err = await flow(stack, "sync", iid)
    assert "nothing to sync" in err
    assert (await flow(stack, "integrations", "remove", iid))[0] == 0

    code, _, err = await flow(
        stack,
        "integrations",
        "add",
        "posthog",
        "--key-id",
        api_key["id"],
        "--host",
        posthog_sink.url,
        "--project-api-key",
        "phc_wrong",
    )
    assert code == 2 and "bad key" in err


async def test_a_key_is_named_by_its_prefix_and_an_unknown_key_is_an_error(
    stack: localstack.StackInfo, posthog_sink: PostHogSink, api_key: dict[str, Any]
) -> None:
    code, out, err = await flow(
        stack,
        "integrations",
        "add",
        "posthog",
        "--key",
        api_key["key_prefix"],
        "--host",
        posthog_sink.url,
        "--project-api-key",
        PH_KEY,
    )
    assert code == 0, err
    assert f'"api_key_id": "{api_key["id"]}"' in out

    code, out, err = await flow(stack, "integrations", "list", "--key", "no-such-key")
    assert code == 1 and out == ""
    assert err.startswith("error: no key matches 'no-such-key'")


async def test_a_refused_host_prints_the_rule_and_sends_nothing(
    stack: localstack.StackInfo, posthog_sink: PostHogSink, api_key: dict[str, Any]
) -> None:
    code, out, err = await flow(
        stack,
        "integrations",
        "add",
        "posthog",
        "--key-id",
        api_key["id"],
        "--host",
        f"http://0x7f000001:{posthog_sink.port}",
        "--project-api-key",
        PH_KEY,
        FLOW_ALLOW_PRIVATE_URLS="false",
    )
    assert code == 2 and out == ""
    assert err == "error: host: host resolves to a loopback address (127.0.0.1); refused\n"
    assert posthog_sink.requests == []
