"""``/talk`` in headless Chromium: a person signs in, presses Call, speaks (a recording
played as the fake microphone), hears the bot, watches the meter run, hangs up and sees
the final bill, which is the ledger's. The app is the real one on a real port, its
runner the real ``BotRunner``; every vendor is the local fake OpenAI server."""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import AsyncIterator, Iterator
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from supabase import AsyncClient

from flow.config import Settings
from flow.db import threads as threads_repo
from flow.localstack import free_port
from flow.main import create_app
from tests.bot.helpers import ledger
from tests.bot.test_webrtc_call import webrtc_settings
from tests.fakes.openai_server import FakeOpenAI
from tests.workflows.support import good_answer

RECORDING = Path(__file__).resolve().parents[1] / "recordings" / "order_status.wav"
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--use-fake-ui-for-media-stream",
    "--use-fake-device-for-media-stream",
    f"--use-file-for-fake-audio-capture={RECORDING}%noloop",
    "--autoplay-policy=no-user-gesture-required",
    "--allow-loopback-in-peer-connection",
    "--disable-features=WebRtcHideLocalIpsWithMdns",
]


@pytest.fixture
async def vendor() -> AsyncIterator[FakeOpenAI]:
    server = FakeOpenAI(
        replies=["Your order ships tomorrow."],
        transcripts=["Where is my order?"],
        speech_tone_hz=400,
        json_answer=good_answer(),
    )
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def served_app(settings: Settings, vendor: FakeOpenAI, tmp_path: Path) -> Iterator[str]:
    """The real app, its real runner, on a real port in a thread of its own."""
    port = free_port(None)
    app = create_app(webrtc_settings(settings, vendor.base_url, tmp_path))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(400):
        if server.started or not thread.is_alive():
            break
        threading.Event().wait(0.05)
    if not server.started:
        raise RuntimeError("the app did not start")
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=30)


def chromium_path() -> str:
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Debian's chromium is required (scripts/setup installs it)")
    return path


async def test_a_person_talks_to_the_bot_and_watches_the_meter(
    sb: AsyncClient, api_key: dict[str, Any], vendor: FakeOpenAI, served_app: str
) -> None:
    from playwright.async_api import async_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_FLAGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{served_app}/talk?raw=1")
            await page.fill("#key", api_key["plaintext"])
            await page.click("#signin")
            await page.wait_for_selector("#content:not([hidden])", timeout=10_000)
            await page.fill("#greeting", "")
            await page.click("#call")
            await page.wait_for_function(
                "() => document.getElementById('status').textContent === 'connected'",
                timeout=20_000,
            )
            thread_id = (await page.inner_text("#call-id")).strip()

            # The meter runs while the call does: the caller's speech is billed, the
            # bot's answer is billed, and the transcript shows both, before hang-up.
            await page.wait_for_function(
                """() => Number(document.getElementById('seconds').dataset.value) > 0
                      && Number(document.getElementById('chars').textContent) > 0
                      && document.querySelectorAll('#turns li').length >= 2""",
                timeout=60_000,
            )
            live_cost = Decimal(await page.get_attribute("#cost", "data-value") or "0")
            assert live_cost > 0
            turns = await page.inner_text("#turns")
            assert "Where is my order?" in turns and "Your order ships tomorrow." in turns
            # The bot's voice reached the page's audio element.
            await page.wait_for_function(
                "() => { const a = document.getElementById('bot-audio');"
                " return a.srcObject && a.srcObject.getAudioTracks().length > 0; }",
                timeout=10_000,
            )
            await page.screenshot(path=str(ARTIFACTS / "talk.png"), full_page=True)

            await page.click("#hangup")
            await page.wait_for_selector("#final:not([hidden])", timeout=60_000)
            final = Decimal(await page.get_attribute("#final", "data-value") or "0")
            assert "completed" in await page.inner_text("#final")
        finally:
            await browser.close()

    row = await threads_repo.get_thread(sb, thread_id)
    assert row is not None and row["status"] == "completed"
    rows = await ledger(sb, thread_id)
    assert final == sum(Decimal(str(r["cost_usd"])) for r in rows)
    stt = [Decimal(r["audio_seconds_text"]) for r in rows if r["kind"] == "stt"]
    uploaded = [u.seconds.quantize(Decimal("0.001"), ROUND_HALF_UP) for u in vendor.uploads]
    assert stt and sorted(stt) == sorted(uploaded)
    await asyncio.sleep(0)
