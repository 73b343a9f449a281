"""A bounded fuzz run over the app's OpenAPI schema (schemathesis, in process over ASGI,
against the real database): whatever it sends, the API never answers 5xx, and its
answers conform to the schema it publishes (status codes, content types, bodies)."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from pydantic import SecretStr
from schemathesis.checks import not_a_server_error
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from flow.config import Settings
from flow.main import create_app
from tests.api.recording_runner import RecordingRunner

MAX_EXAMPLES_PER_OPERATION = 30
# Every operation: never a 5xx. The bots, usage, budget and health routes also promise to
# answer only what their schema documents (status codes, content types, bodies).
CHECKS = [not_a_server_error]
CONFORMANCE_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
CONFORMING_PREFIXES = ("/api/bot", "/api/usage", "/api/budget", "/health")


@pytest.fixture
def fuzz_target(local_settings: Settings, api_key: dict[str, Any]) -> tuple[Any, dict[str, str]]:
    """The app's schema (served by the app itself, in process) and a real key."""
    # Fully configured (every route can work), no scheduler in the background, and a
    # runner that never fills: a 5xx could only mean a fault.
    configured = local_settings.model_copy(
        update={
            "flow_secret_key": SecretStr("fuzz-secret-key-0123456789"),
            "flow_sync_enabled": False,
        }
    )
    app = create_app(configured, RecordingRunner(capacity=10**9))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    return schema, {"Authorization": f"Bearer {api_key['plaintext']}"}


def _operations(schema: Any, ours: bool) -> list[Any]:
    found = [result.ok() for result in schema.get_all_operations()]
    return [op for op in found if op.path.startswith(CONFORMING_PREFIXES) == ours]


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzzed_bot_usage_and_health_requests_never_get_a_5xx_and_conform_to_the_schema(
    fuzz_target: tuple[Any, dict[str, str]], mode: GenerationMode
) -> None:
    schema, auth = fuzz_target
    operations = _operations(schema, ours=True)
    assert {op.label for op in operations} == {
        "POST /api/bot/join",
        "GET /api/bot/{workflow_thread_id}",
        "POST /api/bot/{workflow_thread_id}/stop",
        "PATCH /api/bot/{workflow_thread_id}/webrtc",
        "GET /api/bot",
        "GET /api/bot/{workflow_thread_id}/usage",
        "GET /api/usage",
        "GET /api/usage/export.csv",
        "GET /api/budget",
        "GET /health",
        "GET /health/live",
        "GET /health/ready",
    }
    sent = {op.label: fuzz(op, mode, CONFORMANCE_CHECKS, auth) for op in operations}
    # The run really exercised every operation that takes input.
    takes_input = {label for label in sent if not label.startswith("GET /health")}
    takes_input -= {"GET /api/budget"}
    assert all(sent[label] >= 10 for label in takes_input), sent


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzzed_requests_to_every_other_route_never_get_a_5xx(
    fuzz_target: tuple[Any, dict[str, str]], mode: GenerationMode
) -> None:
    schema, auth = fuzz_target
    for operation in _operations(schema, ours=False):
        fuzz(operation, mode, CHECKS, auth)


def fuzz(operation: Any, mode: GenerationMode, checks: list[Any], headers: dict[str, str]) -> int:
    """Run the bounded fuzz on one operation; returns how many requests it sent."""
    sent = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES_PER_OPERATION,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        nonlocal sent
        sent += 1
        case.call_and_validate(headers=headers, checks=checks)

    try:
        check()
    except Unsatisfiable:
        # No invalid input exists for an operation without parameters (GET /health*).
        if mode is not GenerationMode.NEGATIVE:
            raise
    return sent
