"""The life of a call after the join: run the bot, then the post-call workflow.

join (the API: thread ``pending``) -> the runner runs the bot (``starting``,
``running``) -> ``processing``: :meth:`BotCallWorkflow.post_call` runs
``process_transcript`` -> ``extract_insights`` (when asked, and when the call's budget
still allows it: else its insights read ``{"skipped": "budget_exhausted"}``) ->
``completed``. A step that fails leaves the thread ``failed`` with ``error_stage``
naming the step, ``error_code`` and ``error_message``; the transcript saved before it
stays.

After the workflow (either way) the call's ``$ai_trace`` goes to PostHog and, when the
join named a ``webhook_url``, a signed ``call.completed``/``call.failed`` event is
delivered in the background (retries never hold the call's slot), once per call
(:class:`flow.workflows.webhook.CallWebhooks`: a call another instance ended gets it from
that instance); the budget alerts the call's spending crossed are claimed and sent.

Every step is safe to run again: a saved transcript is kept, saved insights skip the
LLM, usage ids derive from their source, the trace and webhook ids from the thread.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from supabase import AsyncClient

from flow.analytics.posthog import PostHogAnalytics
from flow.billing.reports import ConsoleSpan
from flow.bot.contract import CallRequest
from flow.bot.runner import BotRunner, create_runner
from flow.config import Settings
from flow.db import budgets, call_state
from flow.db import threads as threads_repo
from flow.db.call_state import CallStatus, EndReason, ErrorStage
from flow.db.client import DatabaseError, DatabaseUnavailable
from flow.metering.meter import Metering
from flow.workflows.budget_alerts import BudgetAlerts
from flow.workflows.extract_insights import InsightsExtractor, InsightsFailed
from flow.workflows.process_transcript import process_transcript
from flow.workflows.webhook import WEBHOOK_DRAIN_SECONDS, CallWebhooks, WebhookSender

log = logging.getLogger(__name__)

# What a call's insights are when its budget left nothing for them.
INSIGHTS_SKIPPED = {"skipped": EndReason.BUDGET_EXHAUSTED.value}


class CallOutcome(Protocol):
    """What post-call reads of the runner's :class:`flow.bot.runner.CallResult`."""

    @property
    def transcript(self) -> Any: ...

    @property
    def started_at(self) -> datetime | None: ...

    @property
    def ended_at(self) -> datetime | None: ...

    @property
    def end_reason(self) -> str | None: ...


class StepFailed(Exception):
    def __init__(self, stage: str, code: str, message: str) -> None:
        super().__init__(message)
        self.stage = stage
        self.code = code
        self.message = message


class BotCallWorkflow:
    """The post-call workflow, shared by every call of the process.

    Parameters:
        settings: service settings.
        sb: the database client.
        analytics: PostHog capture (a no-op without ``POSTHOG_API_KEY``).
        metering: the process's metering (the insights usage goes through it).
        insights: the insights step (built from settings when omitted).
        webhooks: the webhook sender (built from settings when omitted).
    """

    def __init__(
        self,
        settings: Settings,
        sb: AsyncClient,
        analytics: PostHogAnalytics,
        *,
        metering: Metering | None = None,
        insights: InsightsExtractor | None = None,
        webhooks: WebhookSender | None = None,
    ) -> None:
        self.settings = settings
        self.sb = sb
        self.analytics = analytics
        self.insights = insights or InsightsExtractor(settings, sb, analytics, metering=metering)
        self.webhooks = webhooks or WebhookSender(settings)
        self.budget_alerts = BudgetAlerts(settings, sb, self.webhooks)
        self.call_webhooks = CallWebhooks(sb, self.webhooks)

    # --- the runner's hook -------------------------------------------------------
    async def post_call(self, call: CallRequest, result: CallOutcome) -> None:
        """Run with the thread in ``processing``; leaves it ``completed`` or ``failed``."""
        thread_id = call.workflow_thread_id
        transcript = ""
        try:
            transcript = await self._step(
                ErrorStage.PROCESS_TRANSCRIPT,
                process_transcript(self.sb, thread_id, result.transcript),
            )
            if call.process_insights:
                thread = await threads_repo.get_thread(self.sb, thread_id)
                if thread is None:
                    raise StepFailed(
                        ErrorStage.EXTRACT_INSIGHTS, "thread_missing", "the thread is gone"
                    )
                if await self._budget_allows_insights(call, thread):
                    await self._step(
                        ErrorStage.EXTRACT_INSIGHTS, self.insights.run(thread, transcript)
                    )
                else:
                    await self._step(
                        ErrorStage.EXTRACT_INSIGHTS,
                        threads_repo.update_thread(self.sb, thread_id, insights=INSIGHTS_SKIPPED),
                    )
        except StepFailed as failed:
            log.warning(
                "call %s failed at %s: %s (%s)",
                thread_id,
                failed.stage,
                failed.code,
                failed.message,
            )
            await call_state.fail(
                self.sb, thread_id, stage=failed.stage, code=failed.code, message=failed.message
            )
        else:
            await call_state.move(self.sb, thread_id, CallStatus.COMPLETED)
        await self.call_finished(call, result, transcript_text=transcript)

    async def _budget_allows_insights(self, call: CallRequest, thread: dict[str, Any]) -> bool:
        """Insights cost money too: not once the call's own limit is reached, nor when
        nothing remains of its key's budget."""
        budget = call.budget
        if budget is None:
            return True
        if budget.max_cost_usd is not None:
            spent = (thread.get("usage_stats") or {}).get("total_cost_usd", 0)
            if Decimal(str(spent)) >= budget.max_cost_usd:
                return False
        if budget.key_limited:
            try:
                state = await budgets.status(self.sb, call.api_key_id)
            except (DatabaseUnavailable, DatabaseError) as exc:
                log.warning("call %s: budget not read: %s", call.workflow_thread_id, exc)
                return True
            if state is not None and Decimal(state["remaining_usd"]) <= 0:
                return False
        return True

    async def _step(self, stage: str, work: Awaitable[Any]) -> Any:
        try:
            return await work
        except StepFailed:
            raise
        except InsightsFailed as exc:
            raise StepFailed(stage, exc.code, exc.message) from exc
        except DatabaseUnavailable as exc:
            raise StepFailed(stage, "database_unavailable", str(exc)) from exc
        except DatabaseError as exc:
            raise StepFailed(stage, "database_error", exc.message) from exc
        except Exception as exc:
            log.exception("post-call step %s crashed", stage)
            raise StepFailed(stage, "internal_error", exc.__class__.__name__) from exc

    async def call_finished(
        self, call: CallRequest, result: CallOutcome | None, *, transcript_text: str = ""
    ) -> None:
        """Send the call's ``$ai_trace`` and schedule its webhook. The runner may call
        this directly for a call that failed before reaching the post-call workflow."""
        try:
            thread = await threads_repo.get_thread(self.sb, call.workflow_thread_id)
        except (DatabaseUnavailable, DatabaseError):
            log.warning(
                "call %s: cannot read the thread for trace/webhook", call.workflow_thread_id
            )
            return
        if thread is None:
            return
        self.analytics.capture_trace(
            workflow_thread_id=call.workflow_thread_id,
            api_key_id=call.api_key_id,
            end_user_id=call.end_user_id,
            started_at=(result.started_at if result else None) or thread.get("bot_started_at"),
            ended_at=(result.ended_at if result else None) or thread.get("bot_ended_at"),
            usage_stats=thread.get("usage_stats") or {},
            status=str(thread.get("status")),
            error_stage=thread.get("error_stage"),
            error_code=thread.get("error_code"),
            end_reason=result.end_reason if result else None,
            transcript_text=transcript_text or None,
            insights=thread.get("insights"),
        )
        if call.budget is not None and call.budget.key_limited:
            self.budget_alerts.check_soon(call.api_key_id)
        self.call_webhooks.send_thread_soon(thread, call.webhook_url)

    # --- lifecycle ---------------------------------------------------------------
    async def drain(self, timeout_seconds: float = WEBHOOK_DRAIN_SECONDS) -> None:
        """Wait for webhook deliveries in flight (bounded), then give up on the rest."""
        await self.budget_alerts.drain(timeout_seconds)
        await self.call_webhooks.drain(timeout_seconds)


def build_runner(
    settings: Settings,
    sb: AsyncClient,
    analytics: PostHogAnalytics,
    *,
    metering: Metering | None = None,
    workflow: BotCallWorkflow | None = None,
    **runner_options: Any,
) -> tuple[BotRunner, BotCallWorkflow]:
    """The bot runner with the post-call workflow wired in, both recording usage through
    ``metering`` (by default one from settings with live PostHog capture listening).
    ``runner_options`` go to :func:`flow.bot.runner.create_runner`."""
    metering = metering or Metering.from_settings(
        settings, sb, prices=analytics.prices, listeners=analytics.listeners()
    )
    workflow = workflow or BotCallWorkflow(settings, sb, analytics, metering=metering)
    runner = create_runner(
        settings,
        sb,
        metering=metering,
        post_call=workflow.post_call,
        on_failed=workflow.call_finished,
        on_budget_alerts=workflow.budget_alerts.send_soon,
        **runner_options,
    )
    if runner.jobs is not None:
        # Calls the database ended without their instance get their webhook too.
        runner.jobs.calls_ended = workflow.call_webhooks.send_soon
        runner.jobs.sweeps.append(workflow.call_webhooks.sweep)
        # The console's first report of a day finds its period's closed days kept.
        runner.jobs.sweeps.append(ConsoleSpan(sb).keep)
    return runner, workflow
