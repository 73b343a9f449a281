"""Budget alerts: signed webhooks when a key's spending crosses its alert fractions.

Which alerts are due is decided in SQL (:mod:`flow.db.budgets`): a read that claims
them (a live call's budget guard, the end of a call, a join refused for an exhausted
budget) wins each alert at most once per period, so however many instances read the
budget, each alert is sent once. This module sends what was claimed:

- ``budget.threshold``: spent + reserved reached ``fraction`` of the limit;
- ``budget.exhausted``: it reached the limit.

Both carry the key, the period (``period``, ``period_start``, ``resets_at``) and
``spent_usd``, ``reserved_usd``, ``limit_usd`` (decimal strings) at the crossing. They
go to the webhook named on the key's budget, else ``FLOW_BUDGET_WEBHOOK_URL``, signed
and retried like every webhook (:mod:`flow.workflows.webhook`), its URL held to the
outbound-URL policy; ``Flow-Event-Id`` derives from the key, period and alert. With no
URL the alert is only logged.
"""

from __future__ import annotations

import logging
from typing import Any

from supabase import AsyncClient

from flow.config import Settings
from flow.db import budgets
from flow.metering.events import event_id_from
from flow.workflows.webhook import Background, WebhookSender

log = logging.getLogger(__name__)

DRAIN_SECONDS = 10.0


def alert_payload(alert: dict[str, Any]) -> dict[str, Any]:
    """The webhook body of one claimed alert (as :func:`flow.db.budgets.status` lists)."""
    key, kind = alert["api_key_id"], alert["type"]
    ident = f"{key}:{alert.get('period_start')}:{kind}:{alert['fraction']}"
    data = {
        "api_key_id": key,
        "period": alert["period"],
        "period_start": alert.get("period_start"),
        "resets_at": alert.get("resets_at"),
        "spent_usd": alert["spent_usd"],
        "reserved_usd": alert["reserved_usd"],
        "limit_usd": alert["limit_usd"],
    }
    if kind == "budget.threshold":
        data["fraction"] = alert["fraction"]
    return {
        "id": str(event_id_from("budget-alert", ident)),
        "type": kind,
        "created_at": alert.get("sent_at"),
        "data": data,
    }


class BudgetAlerts:
    """Sends the budget alerts this instance claimed, in the background.

    Parameters:
        settings: ``FLOW_BUDGET_WEBHOOK_URL`` and the webhook settings.
        sb: the database client (to claim the alerts of a key).
        webhooks: the signed sender.
    """

    def __init__(
        self, settings: Settings, sb: AsyncClient, webhooks: WebhookSender | None = None
    ) -> None:
        self.settings = settings
        self.sb = sb
        self.webhooks = webhooks or WebhookSender(settings)
        self._background = Background("budget-alert")

    def send_soon(self, alerts: list[dict[str, Any]]) -> None:
        """Send claimed alerts in the background (never blocks the caller)."""
        for alert in alerts:
            self._background.run(self.send(alert))

    def check_soon(self, api_key_id: str) -> None:
        """Claim the alerts a key's spending has crossed, and send them, in the
        background (at the end of a call, on a refused join)."""
        self._background.run(self.check(api_key_id))

    async def check(self, api_key_id: str) -> None:
        try:
            state = await budgets.status(self.sb, api_key_id, claim=True)
        except Exception as exc:  # the next read claims them
            log.warning("budget alerts of key %s not claimed: %s", api_key_id, exc)
            return
        for alert in (state or {}).get("alerts_new") or []:
            await self.send(alert)

    async def send(self, alert: dict[str, Any]) -> bool:
        payload = alert_payload(alert)
        url = alert.get("webhook_url") or self.settings.flow_budget_webhook_url
        what = f"key {alert['api_key_id']}"
        log.info(
            "budget alert %s for %s: spent %s + reserved %s of %s",
            payload["type"],
            what,
            alert["spent_usd"],
            alert["reserved_usd"],
            alert["limit_usd"],
        )
        if not url:
            return False
        return await self.webhooks.send(url, payload, about=what)

    async def drain(self, timeout_seconds: float = DRAIN_SECONDS) -> None:
        """Wait for alerts in flight (bounded), then give up on the rest."""
        await self._background.drain(timeout_seconds)
