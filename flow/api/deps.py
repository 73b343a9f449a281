"""Dependencies named as types, so a route's signature says what it needs.

``SettingsDep``, ``SupabaseDep``, ``RunnerDep``, ``BudgetAlertsDep`` and
``CallWebhooksDep`` come from ``app.state`` (set up by the lifespan in ``flow.main``);
``ApiKeyDep`` authenticates the request and resolves the caller's ``api_keys.id``.
``OperatorDep`` (``require_operator``) admits operator tokens only: a customer key is
403, no credential 401; ``CallerDep`` admits either.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from supabase import AsyncClient

from flow.auth import ApiKey, Authenticator, Operator, OperatorAuthenticator
from flow.bot.contract import CallRunner
from flow.config import Settings
from flow.logs import bind
from flow.workflows.budget_alerts import BudgetAlerts
from flow.workflows.webhook import CallWebhooks

# Declares the scheme in OpenAPI; parsing and refusals are ours (auto_error=False), so a
# missing or malformed header gets our JSON 401 with a Bearer challenge.
bearer_scheme = HTTPBearer(auto_error=False, description="An API key: `Bearer <key>`")
operator_scheme = HTTPBearer(
    auto_error=False,
    scheme_name="OperatorToken",
    description="An operator token (`flow admin-token create`): `Bearer flow_op_...`",
)


def _state(name: str) -> Any:
    """A dependency that answers ``app.state.<name>`` (set up by the lifespan)."""

    def from_state(request: Request) -> Any:
        return getattr(request.app.state, name)

    return Depends(from_state)


def _authenticator(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.auth
    return auth


async def get_api_key(
    request: Request,
    _: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> ApiKey:
    api_key = await _authenticator(request).authenticate(request.headers.get("authorization"))
    request.state.api_key_id = api_key.id
    bind(key_id=api_key.id)  # the request's log lines name the key from here on
    return api_key


def get_operator_authenticator(request: Request) -> OperatorAuthenticator:
    operators: OperatorAuthenticator | None = getattr(request.app.state, "operator_auth", None)
    if operators is None:
        operators = OperatorAuthenticator(request.app.state.sb, _authenticator(request))
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


SettingsDep = Annotated[Settings, _state("settings")]
SupabaseDep = Annotated[AsyncClient, _state("sb")]
RunnerDep = Annotated[CallRunner, _state("runner")]
BudgetAlertsDep = Annotated[BudgetAlerts, _state("budget_alerts")]
CallWebhooksDep = Annotated[CallWebhooks, _state("call_webhooks")]
ApiKeyDep = Annotated[ApiKey, Depends(get_api_key)]
OperatorDep = Annotated[Operator, Depends(require_operator)]
CallerDep = Annotated[Operator | ApiKey, Depends(get_caller)]
