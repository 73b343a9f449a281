"""The FastAPI app: settings, clients, the bot runner and its drain on ``app.state``, the
routers, the error format, request ids and the body size limit; the metrics port when
``FLOW_METRICS_PORT`` is set.

``uvicorn flow.main:create_app --factory`` (the Procfile, ``flow serve``) builds it from
the environment; tests pass their own settings and a runner they can observe.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.staticfiles import StaticFiles

from flow import metrics
from flow.analytics.posthog import PostHogAnalytics
from flow.api.errors import install_error_handlers
from flow.api.gate import JoinGateMiddleware, RequestContextMiddleware
from flow.api.limits import BodySizeLimitMiddleware, HeaderLimitMiddleware, refuse_lone_surrogates
from flow.api.routes import (
    admin,
    admin_integrations,
    bots,
    budget,
    calls,
    dashboard,
    health,
    integrations,
    scrape,
    talk,
    telephony,
    usage,
    usage_export,
)
from flow.auth import Authenticator
from flow.bot import tracing
from flow.bot.contract import CallRunner
from flow.bot.drain import Drain
from flow.config import Settings, get_settings, retired_settings
from flow.db.client import create_client
from flow.metering.meter import Metering
from flow.metering.pricing import PriceBook
from flow.workflows.budget_alerts import BudgetAlerts
from flow.workflows.webhook import CallWebhooks

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, runner: CallRunner | None = None) -> FastAPI:
    settings = settings or get_settings()
    drain = Drain(settings.flow_drain_seconds, settings.flow_shutdown_goodbye)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for warning in retired_settings():
            log.warning(warning)
        tracing.configure(settings)
        sb = await create_client(settings)
        app.state.sb = sb
        app.state.auth = Authenticator(settings, sb)
        # One price book, one PostHog client (none without POSTHOG_API_KEY) and one
        # metering for the process: every usage event is priced, recorded and sent
        # live through these.
        prices = PriceBook.from_settings(settings)
        app.state.analytics = PostHogAnalytics.from_settings(settings, prices=prices)
        metering = Metering.from_settings(
            settings, sb, prices=prices, listeners=app.state.analytics.listeners()
        )
        app.state.workflow = None
        if runner is None:
            from flow.bot.shared import warm_up
            from flow.workflows.bot_call import build_runner

            app.state.runner, app.state.workflow = build_runner(
                settings, sb, app.state.analytics, metering=metering
            )
            # What every call uses is loaded before the first call, off the event loop.
            await warm_up(settings)
        else:
            app.state.runner = runner
        workflow = app.state.workflow
        app.state.budget_alerts = workflow.budget_alerts if workflow else BudgetAlerts(settings, sb)
        app.state.call_webhooks = (
            workflow.call_webhooks
            if workflow
            else CallWebhooks(sb, app.state.budget_alerts.webhooks)
        )
        drain.runner = app.state.runner
        metrics.watch_spool(settings.flow_spool_dir)
        if (client := app.state.analytics.client) is not None:
            metrics.watch_posthog(client.queue.qsize)
        async with AsyncExitStack() as services:
            if settings.flow_metrics_port:
                # Last to stop: an operator sees the drain and the shutdown to the end.
                served = metrics.MetricsServer(settings.host, settings.flow_metrics_port)
                services.callback(served.close)
            # After the calls have ended: their last spans are flushed to the collector.
            services.callback(tracing.shutdown)
            # Stopped in reverse order: background services first, the runner last
            # but one (it ends calls and flushes their meters), auth's pending writes last.
            services.push_async_callback(app.state.auth.aclose)
            # After the runner: its calls' post-call steps still capture and send webhooks.
            services.push_async_callback(asyncio.to_thread, app.state.analytics.shutdown)
            if app.state.workflow is not None:
                services.push_async_callback(app.state.workflow.drain)
            else:
                services.push_async_callback(app.state.budget_alerts.drain)
                services.push_async_callback(app.state.call_webhooks.drain)
            services.push_async_callback(app.state.runner.shutdown)
            # Background services start here and register their stop with `services`.
            if settings.flow_sync_enabled and settings.flow_secret_key.get_secret_value():
                from flow.exporters.scheduler import SyncScheduler
                from flow.exporters.sync import Exporter

                scheduler = SyncScheduler(Exporter(sb, settings), settings.flow_sync_tick_seconds)
                app.state.export_scheduler = scheduler
                scheduler.start()
                services.push_async_callback(scheduler.stop)
            yield

    app = FastAPI(
        title="Flow",
        summary="Voice bots that meter every cent: per call, per key.",
        version="0.1.0",
        lifespan=lifespan,
        dependencies=[Depends(refuse_lone_surrogates)],
    )
    app.state.settings = settings
    app.state.drain = drain
    install_error_handlers(app)
    app.add_middleware(JoinGateMiddleware, drain=drain)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.flow_max_body_bytes)
    app.add_middleware(HeaderLimitMiddleware)
    app.add_middleware(RequestContextMiddleware)

    app.include_router(health.router)
    app.include_router(bots.router)
    app.include_router(calls.router)
    app.include_router(telephony.router)
    app.include_router(usage.router)
    app.include_router(usage_export.router)
    app.include_router(budget.router)
    app.include_router(integrations.router)
    app.include_router(dashboard.router)
    app.include_router(dashboard.page)
    app.mount("/dashboard/static", StaticFiles(directory=dashboard.STATIC), name="dashboard-static")
    app.include_router(admin.router)
    app.include_router(admin_integrations.router)
    app.include_router(scrape.router)
    app.include_router(admin.page)
    app.mount("/admin/static", StaticFiles(directory=admin.STATIC), name="admin-static")
    app.include_router(talk.page)
    app.mount("/talk/static", StaticFiles(directory=talk.STATIC), name="talk-static")
    return app
