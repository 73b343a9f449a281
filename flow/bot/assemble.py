"""Puts one call together before it runs: its services, its transport (a WebRTC peer
already answered, a phone call's Media Stream, or the one the pipeline builds), its
budget guard with the gates around the LLM, the pipeline itself, and the handlers that
end the call when the pipeline gives up on it."""

from __future__ import annotations

from typing import Any

from supabase import AsyncClient

from flow.bot.budget_guard import AlertsHook, BudgetGate, BudgetGuard, guard_call
from flow.bot.call_end import RunningCall
from flow.bot.pipeline import BotCall, build_call
from flow.bot.services import ServicesFactory
from flow.bot.simulated import SimulatedParams
from flow.bot.twilio import twilio_transport
from flow.bot.webrtc import webrtc_transport
from flow.config import Settings
from flow.db.call_state import EndReason
from flow.metering.meter import Meter, Metering


def assemble_call(
    settings: Settings,
    sb: AsyncClient,
    running: RunningCall,
    meter: Meter,
    metering: Metering,
    *,
    services_factory: ServicesFactory,
    simulated: SimulatedParams | None,
    on_alerts: AlertsHook | None,
) -> tuple[BotCall, BudgetGuard | None]:
    """The call's pipeline, not yet running, and its budget guard (None without a
    spending limit), not yet started."""
    call = running.call
    services = services_factory(settings, call)
    guard = guard_call(
        sb,
        settings,
        call,
        services,
        meter,
        metering.prices,
        on_exhausted=lambda: running.over_budget(settings.flow_budget_goodbye),
        on_alerts=on_alerts,
    )
    transport = None
    if running.peer is not None:
        transport = webrtc_transport(running.peer)
    elif call.stream is not None:
        transport = twilio_transport(call.stream, settings)
    bot = build_call(
        call,
        settings,
        services=services,
        meter=meter,
        price_book=metering.prices,
        transport=transport,
        simulated=SimulatedParams(**vars(simulated)) if simulated else None,
        idle_timeout_seconds=settings.flow_idle_timeout_seconds,
        llm_gates=BudgetGate.around_llm(guard) if guard is not None else None,
    )
    _watch(running, bot)
    return bot, guard


def _watch(running: RunningCall, bot: BotCall) -> None:
    """How the pipeline's own ends reach the call: an idle caller, a fatal error."""

    @bot.worker.event_handler("on_idle_timeout")
    async def _idle(_worker: Any) -> None:
        if running.end_reason is None:
            running.end_reason = EndReason.IDLE

    @bot.worker.event_handler("on_pipeline_error")
    async def _error(_worker: Any, frame: Any) -> None:
        running.error = running.error or str(getattr(frame, "error", frame))
        processor = getattr(frame, "processor", None)
        if getattr(frame, "fatal", False) or (processor is not None and not processor.is_usable):
            if running.end_reason is None:
                running.end_reason = EndReason.ERROR
            await bot.worker.cancel(reason=str(EndReason.ERROR))
