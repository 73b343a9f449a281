"""Post-call step 2: one LLM call that turns a transcript into validated insights.

With PostHog configured the call goes through PostHog's wrapped async OpenAI client
(``posthog.ai.openai.AsyncOpenAI``), which sends its own ``$ai_generation`` on the
call's trace; otherwise through the plain ``openai.AsyncOpenAI``. Model, prompt and
structured output are the same either way.

Every completion the model returns is billed, so every one becomes a usage event
(category ``insights``), priced by the process's price book and recorded through a
meter like a call's usage: retried, and spooled when the database is down, so usage
OpenAI already billed is never lost with a failed step. Its id derives from the OpenAI
response id: recording it again, after a retry or a crash, changes nothing. An answer
that does not validate against :class:`Insights` is asked for once more; a second bad
answer fails the step (the transcript stays saved). Insights already saved on the
thread skip the call.
"""

from __future__ import annotations

import json
import logging
import time
from decimal import Decimal
from typing import Any, Literal
from uuid import UUID

import openai
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from supabase import AsyncClient

from flow.analytics.posthog import INSIGHTS_SPAN_NAME, PostHogAnalytics
from flow.config import Settings
from flow.db import threads as threads_repo
from flow.metering.events import UsageCategory, UsageEvent, UsageKind, event_id_from
from flow.metering.meter import Metering
from flow.metering.pricing import cost_fields

log = logging.getLogger(__name__)

PROVIDER = "openai"
MAX_ATTEMPTS = 2  # the first answer, and one retry when it does not validate
LLM_TIMEOUT_SECONDS = 60.0

SYSTEM_PROMPT = (
    "You analyse transcripts of voice calls between a caller and a voice bot. "
    "Answer with one JSON object only, matching the given schema: a short factual "
    "summary, the key points, the caller's overall sentiment (positive, neutral, "
    "negative or mixed) and the action items agreed or implied (empty list if none). "
    "Use only what the transcript says."
)
ANALYSIS_INSTRUCTION = (
    "Also answer the caller's analysis request below in the field `analysis`, "
    "as plain text.\nAnalysis request: "
)
RETRY_INSTRUCTION = (
    "Your previous answer was not a JSON object matching the schema ({error}). "
    "Answer again with only the JSON object."
)


class Insights(BaseModel):
    """What the insights step saves on the thread.

    Parameters:
        summary: a few sentences on what the call was about.
        key_points: the points worth remembering.
        sentiment: the caller's overall sentiment.
        action_items: follow-ups agreed or implied.
        analysis: the answer to the caller's ``analysis_prompt``, when one was given.
    """

    model_config = ConfigDict(extra="forbid")

    summary: str = Field(min_length=1, max_length=4000)
    key_points: list[str] = Field(max_length=50)
    sentiment: Literal["positive", "neutral", "negative", "mixed"]
    action_items: list[str] = Field(max_length=50)
    analysis: str | None = Field(default=None, max_length=20_000)


class InsightsFailed(Exception):
    """The step failed; ``code`` names why (``invalid_output``, ``llm_error``, ...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def response_schema(with_analysis: bool) -> dict[str, Any]:
    """Strict JSON schema for OpenAI structured output."""
    properties: dict[str, Any] = {
        "summary": {"type": "string"},
        "key_points": {"type": "array", "items": {"type": "string"}},
        "sentiment": {"type": "string", "enum": ["positive", "neutral", "negative", "mixed"]},
        "action_items": {"type": "array", "items": {"type": "string"}},
    }
    if with_analysis:
        properties["analysis"] = {"type": "string"}
    return {
        "type": "json_schema",
        "json_schema": {
            "name": "call_insights",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": properties,
                "required": list(properties),
                "additionalProperties": False,
            },
        },
    }


def build_messages(transcript: str, analysis_prompt: str | None) -> list[dict[str, str]]:
    user = f"Transcript:\n{transcript}"
    if analysis_prompt:
        user += f"\n\n{ANALYSIS_INSTRUCTION}{analysis_prompt}"
    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_insights(content: str | None, with_analysis: bool) -> Insights:
    """Validate the model's answer; raises ``ValueError`` (incl. ValidationError)."""
    if not content:
        raise ValueError("empty answer")
    insights = Insights.model_validate(json.loads(content))
    if with_analysis and not insights.analysis:
        raise ValueError("the analysis request was not answered")
    return insights


def build_openai_client(settings: Settings, analytics: PostHogAnalytics) -> openai.AsyncOpenAI:
    """The PostHog-wrapped client when PostHog is configured, the plain one otherwise."""
    options: dict[str, Any] = {
        "api_key": settings.openai_api_key.get_secret_value() or "unset",
        "base_url": settings.openai_base_url or None,
        "timeout": LLM_TIMEOUT_SECONDS,
        "max_retries": 2,
    }
    if analytics.enabled:
        from posthog.ai.openai import AsyncOpenAI as PostHogAsyncOpenAI

        return PostHogAsyncOpenAI(posthog_client=analytics.client, **options)
    return openai.AsyncOpenAI(**options)


class InsightsExtractor:
    """Runs the insights step for one thread at a time; shared by every call.

    Parameters:
        settings: provides the model (``FLOW_INSIGHTS_MODEL``) and the OpenAI endpoint.
        sb: the database client (the thread row).
        analytics: PostHog capture; decides which OpenAI client is used.
        metering: prices and records the usage (the process's; by default one over
            ``sb`` with the analytics' price book).
        client: an OpenAI client to use instead of building one.
    """

    def __init__(
        self,
        settings: Settings,
        sb: AsyncClient,
        analytics: PostHogAnalytics,
        *,
        metering: Metering | None = None,
        client: openai.AsyncOpenAI | None = None,
    ) -> None:
        self.settings = settings
        self.sb = sb
        self.analytics = analytics
        self.metering = metering or Metering.from_settings(
            settings, sb, prices=analytics.prices, listeners=analytics.listeners()
        )
        self.model = settings.flow_insights_model
        self.client = client or build_openai_client(settings, analytics)
        self.wrapped = self.client.__class__.__module__.startswith("posthog.")

    async def run(self, thread: dict[str, Any], transcript: str) -> dict[str, Any] | None:
        """Extract and save insights for ``thread``; returns them (the saved ones when
        a previous run got that far). None when there is nothing to analyse."""
        if thread.get("insights") is not None:
            return dict(thread["insights"])
        if not transcript.strip():
            log.info("thread %s has an empty transcript: no insights", thread["workflow_thread_id"])
            return None
        analysis_prompt = thread.get("analysis_prompt") or None
        with_analysis = bool(analysis_prompt)
        messages: list[dict[str, str]] = build_messages(transcript, analysis_prompt)
        last_error = ""
        for _attempt in range(MAX_ATTEMPTS):
            content = await self._complete(thread, messages, with_analysis)
            try:
                insights = parse_insights(content, with_analysis)
            except (ValueError, ValidationError) as exc:
                last_error = _describe(exc)
                log.warning(
                    "insights for thread %s did not validate: %s",
                    thread["workflow_thread_id"],
                    last_error,
                )
                messages = [
                    *messages,
                    {"role": "assistant", "content": content or ""},
                    {"role": "user", "content": RETRY_INSTRUCTION.format(error=last_error)},
                ]
                continue
            saved = insights.model_dump(mode="json", exclude_none=not with_analysis)
            await threads_repo.update_thread(self.sb, thread["workflow_thread_id"], insights=saved)
            return saved
        raise InsightsFailed(
            "invalid_output",
            f"the model's answer did not match the insights schema after "
            f"{MAX_ATTEMPTS} attempts: {last_error}",
        )

    async def _complete(
        self, thread: dict[str, Any], messages: list[dict[str, str]], with_analysis: bool
    ) -> str | None:
        kwargs: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "response_format": response_schema(with_analysis),
        }
        if self.wrapped:
            kwargs.update(
                self.analytics.wrapper_kwargs(
                    workflow_thread_id=thread["workflow_thread_id"],
                    api_key_id=thread["api_key_id"],
                    end_user_id=thread.get("end_user_id"),
                )
            )
        started = time.perf_counter()
        try:
            response = await self.client.chat.completions.create(**kwargs)
        except openai.APIStatusError as exc:
            raise InsightsFailed(
                "llm_error", f"the insights model answered HTTP {exc.status_code}"
            ) from exc
        except openai.APIError as exc:
            raise InsightsFailed(
                "llm_unavailable",
                f"the insights model could not be reached: {exc.__class__.__name__}",
            ) from exc
        latency_ms = Decimal(str(round((time.perf_counter() - started) * 1000, 1)))
        await self._record_usage(thread, response, latency_ms)
        choices = getattr(response, "choices", None) or []
        return choices[0].message.content if choices else None

    async def _record_usage(
        self, thread: dict[str, Any], response: Any, latency_ms: Decimal
    ) -> None:
        # Through a meter: retried, then spooled, whatever the database does (the step
        # goes on; if the database is down its next write fails the step, not the usage).
        await self.metering.record([self.usage_event(thread, response, latency_ms)])

    def usage_event(self, thread: dict[str, Any], response: Any, latency_ms: Decimal) -> UsageEvent:
        """The ledger row of one completion, its id derived from the response id."""
        usage = getattr(response, "usage", None)
        input_tokens = int(getattr(usage, "prompt_tokens", 0) or 0)
        output_tokens = int(getattr(usage, "completion_tokens", 0) or 0)
        prompt_details = getattr(usage, "prompt_tokens_details", None)
        cache_read_tokens = int(getattr(prompt_details, "cached_tokens", 0) or 0)
        completion_details = getattr(usage, "completion_tokens_details", None)
        reasoning_tokens = int(getattr(completion_details, "reasoning_tokens", 0) or 0)
        price = (
            self.metering.prices.llm(
                PROVIDER,
                self.model,
                input_tokens=input_tokens,
                output_tokens=output_tokens,
                cache_read_tokens=min(cache_read_tokens, input_tokens),
            )
            if usage is not None
            else None
        )
        response_id = getattr(response, "id", None)
        fields: dict[str, Any] = {}
        if response_id:
            # Scoped by the call: a vendor's response ids are unique, but a compatible
            # server's may be unique only to itself (a counter from 1).
            key = f"{thread['workflow_thread_id']}:{response_id}"
            fields["id"] = event_id_from("openai-response", key)
        return UsageEvent(
            **fields,
            workflow_thread_id=UUID(str(thread["workflow_thread_id"])),
            api_key_id=UUID(str(thread["api_key_id"])),
            end_user_id=thread.get("end_user_id"),
            kind=UsageKind.LLM,
            category=UsageCategory.INSIGHTS,
            provider=PROVIDER,
            model=self.model,
            processor=INSIGHTS_SPAN_NAME,
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cache_read_tokens=min(cache_read_tokens, input_tokens),
            reasoning_tokens=reasoning_tokens,
            **cost_fields(price),
            latency_ms=latency_ms,
            status_code=200,
            # No usage reported: recorded as unpriced and flagged, never priced at zero.
            estimated=usage is None,
        )


def _describe(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "answer"
        return f"{where}: {first.get('msg')}"
    if isinstance(exc, json.JSONDecodeError):
        return "not valid JSON"
    return str(exc)
