"""Ends a call before its next reply would spend past its budget: its key's, or its own.

A call whose join found a spending limit (:class:`flow.bot.contract.CallBudget`) gets a
:class:`BudgetGuard`:

- **Its cost so far, to the event.** The guard listens to the call's meter: every usage
  event as it is created, and the estimate logged ahead when a reply's first token
  arrives (the vendor bills the reply from then on; the reply's own event, with the
  same id, replaces it).
- **Its reservation.** For a key with a budget it reports that cost to the database
  (the call's reservation, which every instance counts) and reads what remains of the
  key's budget after every live call's reservation: after each usage event, before each
  reply, and every ``FLOW_BUDGET_POLL_SECONDS``. Alerts the read crossed are claimed in
  the same statement and handed to ``on_alerts``.
- **Before each reply.** :class:`BudgetGate` (on both sides of the LLM) holds each LLM
  run for a fresh read and drops it if the reply would cross what remains.
- **The next reply** is predicted to cost what the last turn did (from one reply's start
  to the next: the reply, its speech, the caller's words) plus how much it grew on the
  one before, since prompts grow with the conversation; before a turn has finished,
  what the turn in progress has cost so far, and at least what the goodbye line costs.

When the next turn and the goodbye line (priced like the call's TTS, or, for a
speech-to-speech call, as the model's short response saying it) would cross what
remains, or nothing remains, ``on_exhausted`` is called once. Near a key's limit each
live call keeps room for a turn and a goodbye of every live call of the key (they may all
be starting one at once), so the key's calls end together rather than overspend
together. The runner then has the bot say ``FLOW_BUDGET_GOODBYE`` and hang up, and the
call ends ``budget_exhausted``.

**Overspend is bounded**: usage is known only when the vendor reports it, so a reply
allowed on the last figures can cost more than remained; the next usage event or read
ends the call. Past the limit a call spends at most one turn (a reply, its speech and
the caller's words before it) plus the goodbye line.

Failure behaviour: a read that fails or takes longer than :data:`READ_TIMEOUT_SECONDS`
leaves the last figures in place (the call's own spending keeps counting against
them); the guard never fails a call.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from decimal import Decimal
from typing import Any
from uuid import UUID

from pipecat.frames.frames import Frame, LLMContextFrame, LLMRunFrame
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
from supabase import AsyncClient

from flow.bot.contract import CallBudget, CallRequest
from flow.bot.services import CallServices
from flow.config import Settings
from flow.db import budgets
from flow.metering.events import UsageEvent
from flow.metering.meter import Meter
from flow.metering.pricing import PriceBook

log = logging.getLogger(__name__)

READ_TIMEOUT_SECONDS = 1.0
AlertsHook = Callable[[list[dict[str, Any]]], None]


class BudgetGuard:
    """Watches one call's spending against what it may spend.

    Parameters:
        sb: the database client.
        thread_id: the call.
        budget: what the join found: whether the key has a budget, the call's own limit.
        poll_seconds: how often the key's budget is read while nothing happens.
        on_exhausted: called once, when the call must end (must not block).
        on_alerts: given the alerts a read claimed, to send (must not block).
        goodbye_usd: what the goodbye line costs: room kept for it.
    """

    def __init__(
        self,
        sb: AsyncClient,
        thread_id: str,
        budget: CallBudget,
        *,
        poll_seconds: float,
        on_exhausted: Callable[[], None],
        on_alerts: AlertsHook | None = None,
        goodbye_usd: Decimal = Decimal(0),
    ) -> None:
        self._sb = sb
        self._goodbye_usd = goodbye_usd
        self._thread_id = thread_id
        self._budget = budget
        self._poll_seconds = poll_seconds
        self._on_exhausted = on_exhausted
        self._on_alerts = on_alerts
        self._costs: dict[UUID, Decimal] = {}
        self.cost_usd = Decimal(0)
        self._reply_starts: list[Decimal] = []
        self._key_remaining: Decimal | None = None  # at the last read
        self._counted_at_read = Decimal(0)  # this call's cost that read counted
        self._live_calls = 1  # the key's, at that read
        self.state: dict[str, Any] | None = None
        self.exhausted = False
        self._wake = asyncio.Event()
        self._read_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    # --- the meter's listener (the frame path: no I/O) --------------------------------
    def on_usage(self, event: UsageEvent) -> None:
        """Count an event (a provisional one is replaced by its final one)."""
        if event.cost_usd is None:
            return  # unpriced usage does not count against a budget
        previous = self._costs.get(event.id, Decimal(0))
        self._costs[event.id] = event.cost_usd
        self.cost_usd += event.cost_usd - previous
        self._wake.set()
        self._check()

    # --- the figures -------------------------------------------------------------------
    def remaining_usd(self) -> list[tuple[Decimal, int]]:
        """What remains of each limit the call has (the key's, its own), as it knows,
        with how many calls share it (every live call of the key; the call alone)."""
        left = []
        if self._key_remaining is not None:
            spent_since = self.cost_usd - self._counted_at_read
            left.append((self._key_remaining - spent_since, max(1, self._live_calls)))
        if self._budget.max_cost_usd is not None:
            left.append((self._budget.max_cost_usd - self.cost_usd, 1))
        return left

    def predicted_reply_usd(self) -> Decimal:
        """What the next turn is expected to cost (see the module's docstring)."""
        marks = [*self._reply_starts, self.cost_usd]
        turns = [later - earlier for earlier, later in itertools.pairwise(marks)]
        done, in_progress = turns[:-1], turns[-1] if turns else self.cost_usd
        if not done:
            # Nothing measured yet: a reply is taken to cost at least a line like the
            # goodbye to say.
            return max(in_progress, self._goodbye_usd)
        growth = done[-1] - done[-2] if len(done) > 1 else Decimal(0)
        return max(done[-1] + max(growth, Decimal(0)), in_progress)

    def would_cross(self, next_reply_usd: Decimal) -> bool:
        """Whether a turn costing this and the goodbye, for each call sharing a limit
        (every live call may be starting a turn of its own), would spend past it."""
        need = next_reply_usd + self._goodbye_usd
        return any(left <= 0 or left < calls * need for left, calls in self.remaining_usd())

    def _check(self) -> None:
        if not self.exhausted and self.would_cross(self.predicted_reply_usd()):
            self.exhausted = True
            log.info(
                "call %s: its budget would be crossed by its next reply (spent %s, left %s)",
                self._thread_id,
                self.cost_usd,
                [str(left) for left, _ in self.remaining_usd()],
            )
            self._on_exhausted()

    # --- reads -------------------------------------------------------------------------
    async def allow_reply(self) -> bool:
        """A reply is about to start: whether it may (a fresh read first, for a key
        with a budget). A refused reply ends the call."""
        if self.exhausted:
            return False
        self._reply_starts.append(self.cost_usd)
        await self.refresh()
        self._check()
        return not self.exhausted

    async def refresh(self) -> None:
        """Report the call's cost so far (its reservation) and read the key's budget."""
        if not self._budget.key_limited:
            return
        async with self._read_lock:
            counted = self.cost_usd
            try:
                state = await asyncio.wait_for(
                    budgets.call_status(self._sb, self._thread_id, counted),
                    READ_TIMEOUT_SECONDS,
                )
            except Exception as exc:
                log.warning("call %s: budget not read (%s)", self._thread_id, exc)
                return
            self.state = state
            if state is None:  # the budget was removed
                self._key_remaining = None
                return
            self._key_remaining = Decimal(state["remaining_usd"])
            self._live_calls = int(state.get("live_calls") or 1)
            self._counted_at_read = counted
            alerts = state.get("alerts_new") or []
            if alerts and self._on_alerts is not None:
                self._on_alerts(alerts)
        self._check()

    def start(self) -> None:
        """Start reading the key's budget (needs a running event loop)."""
        if self._budget.key_limited and self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._poll(), name=f"budget-{self._thread_id}"
            )

    async def _poll(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._poll_seconds)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.refresh()

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


# What a speech-to-speech model's last words are taken to cost, generously: its
# instruction as text in, and about two audio tokens a character out (speech runs at
# some 15 characters and 20 audio tokens a second), with a text token per 4 characters.
def realtime_last_words_tokens(words: str) -> tuple[int, int, int]:
    """(input tokens, output tokens, output audio tokens) of saying ``words``."""
    audio = 2 * len(words)
    return 16 + len(words) // 4, audio + len(words) // 4 + 1, audio


def guard_call(
    sb: AsyncClient,
    settings: Settings,
    call: CallRequest,
    services: CallServices,
    meter: Meter,
    prices: PriceBook,
    *,
    on_exhausted: Callable[[], None],
    on_alerts: AlertsHook | None = None,
) -> BudgetGuard | None:
    """The guard of a call with a spending limit, listening to its meter, keeping room
    for the goodbye line (priced as the call's TTS prices it); None for a call without
    a limit."""
    budget = call.budget
    if budget is None or (not budget.key_limited and budget.max_cost_usd is None):
        return None
    goodbye_usd = Decimal(0)
    words = settings.flow_budget_goodbye
    if services.tts is not None:
        tts = services.tts.name
        price = prices.tts(
            services.providers.get(tts, settings.flow_tts_provider),
            services.models.get(tts) or settings.flow_tts_model,
            len(words),
        )
        goodbye_usd = price.cost_usd if price is not None else Decimal(0)
    elif services.realtime:  # the model says the words: room for that response
        llm = services.llm.name
        tokens_in, tokens_out, audio_out = realtime_last_words_tokens(words)
        said = prices.llm(
            services.providers.get(llm, "openai"),
            services.models.get(llm) or settings.flow_realtime_model,
            input_tokens=tokens_in,
            output_tokens=tokens_out,
            output_audio_tokens=audio_out,
        )
        goodbye_usd = said.total_cost_usd if said is not None else Decimal(0)
    guard = BudgetGuard(
        sb,
        call.workflow_thread_id,
        budget,
        poll_seconds=settings.flow_budget_poll_seconds,
        on_exhausted=on_exhausted,
        on_alerts=on_alerts,
        goodbye_usd=goodbye_usd,
    )
    meter.listen(guard.on_usage, provisional=True)
    return guard


class BudgetGate(FrameProcessor):
    """Holds each LLM run for the guard's word; one it refuses is dropped (the guard has
    the call end with its goodbye instead). A call has two: one in front of the LLM for
    the runs the user aggregator asks for (downstream), one right after it for those the
    assistant aggregator asks for (upstream: a tool's result, an appended message). A
    gate queues frames like any processor (no direct mode), so the aggregator that asked
    for a run is never held while the budget is read.

    Parameters:
        guard: the call's guard.
        direction: the direction of the LLM runs this gate holds.
    """

    def __init__(self, guard: BudgetGuard, direction: FrameDirection, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._guard = guard
        self._direction = direction

    @classmethod
    def around_llm(cls, guard: BudgetGuard) -> tuple[BudgetGate, BudgetGate]:
        """The two gates of a call: (in front of the LLM, right after it)."""
        return (
            cls(guard, FrameDirection.DOWNSTREAM, name="budget-gate-in"),
            cls(guard, FrameDirection.UPSTREAM, name="budget-gate-out"),
        )

    async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if direction == self._direction and isinstance(frame, LLMContextFrame | LLMRunFrame):
            try:
                allowed = await self._guard.allow_reply()
            except Exception:  # the budget must never break the call
                log.exception("the budget guard failed; the reply goes ahead")
                allowed = True
            if not allowed:
                return
        await self.push_frame(frame, direction)
