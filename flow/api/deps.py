"""Dependencies named as types, so a route's signature says what it needs.

``SettingsDep``, ``SupabaseDep``, ``RunnerDep`` and ``BudgetAlertsDep`` come from
``app.state`` (set up by the lifespan in ``flow.main``); ``ApiKeyDep`` authenticates the
request and resolves the caller's ``api_keys.id``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from supabase import AsyncClient

from flow.auth import ApiKey, Authenticator
from flow.bot.contract import CallRunner
from flow.config import Settings
from flow.logs import bind
from flow.workflows.budget_alerts import BudgetAlerts

# Declares the scheme in OpenAPI; parsing and refusals are ours (auto_error=False), so a
# missing or malformed header gets our JSON 401 with a Bearer challenge.
bearer_scheme = HTTPBearer(auto_error=False, description="An API key: `Bearer <key>`")


def get_settings_dep(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_supabase(request: Request) -> AsyncClient:
    sb: AsyncClient = request.app.state.sb
    return sb


def get_runner(request: Request) -> CallRunner:
    runner: CallRunner = request.app.state.runner
    return runner


def get_budget_alerts(request: Request) -> BudgetAlerts:
    alerts: BudgetAlerts = request.app.state.budget_alerts
    return alerts


def get_authenticator(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.auth
    return auth


async def get_api_key(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> ApiKey:
    api_key = await get_authenticator(request).authenticate(request.headers.get("authorization"))
    request.state.api_key_id = api_key.id
    bind(key_id=api_key.id)  # the request's log lines name the key from here on
    return api_key


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SupabaseDep = Annotated[AsyncClient, Depends(get_supabase)]
RunnerDep = Annotated[CallRunner, Depends(get_runner)]
BudgetAlertsDep = Annotated[BudgetAlerts, Depends(get_budget_alerts)]
ApiKeyDep = Annotated[ApiKey, Depends(get_api_key)]
