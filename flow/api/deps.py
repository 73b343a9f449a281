"""Dependencies named as types, so a route's signature says what it needs.

``SettingsDep``, ``SupabaseDep``, ``RunnerDep`` and ``BudgetAlertsDep`` come from
``app.state`` (set up by the lifespan in ``flow.main``); ``ApiKeyDep`` authenticates the
request and resolves the caller's ``api_keys.id``. ``OperatorDep`` (``require_operator``)
admits operator tokens only: a customer key is 403, no credential 401; ``CallerDep`` admits
either.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from supabase import AsyncClient

from flow.auth import ApiKey, Authenticator, Operator, OperatorAuthenticator
from flow.bot.contract import CallRunner
from flow.config import Settings
from flow.logs import bind
from flow.workflows.budget_alerts import BudgetAlerts

# Declares the scheme in OpenAPI; parsing and refusals are ours (auto_error=False), so a
# missing or malformed header gets our JSON 401 with a Bearer challenge.
bearer_scheme = HTTPBearer(auto_error=False, description="An API key: `Bearer <key>`")
operator_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="OperatorToken",
    description="An operator token (`flow admin-token create`): `Bearer flow_op_...`",
)


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


def get_operator_authenticator(request: Request) -> OperatorAuthenticator:
    operators: OperatorAuthenticator | None = getattr(request.app.state, "operator_auth", None)
    if operators is None:
        operators = OperatorAuthenticator(get_supabase(request), get_authenticator(request))
        request.app.state.operator_auth = operators
    return operators


async def require_operator(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(operator_scheme)],
) -> Operator:
    """An operator token, or 403 (a customer key) / 401 (anything else)."""
    operators = get_operator_authenticator(request)
    return await operators.operator(request.headers.get("authorization"))


async def get_caller(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    __: Annotated[HTTPAuthorizationCredentials | None, Depends(operator_scheme)],
) -> Operator | ApiKey:
    """An operator token or an API key, whichever the request holds."""
    caller = await get_operator_authenticator(request).caller(request.headers.get("authorization"))
    if isinstance(caller, ApiKey):
        request.state.api_key_id = caller.id
        bind(key_id=caller.id)
    return caller


SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
SupabaseDep = Annotated[AsyncClient, Depends(get_supabase)]
RunnerDep = Annotated[CallRunner, Depends(get_runner)]
BudgetAlertsDep = Annotated[BudgetAlerts, Depends(get_budget_alerts)]
ApiKeyDep = Annotated[ApiKey, Depends(get_api_key)]
OperatorDep = Annotated[Operator, Depends(require_operator)]
CallerDep = Annotated[Operator | ApiKey, Depends(get_caller)]
