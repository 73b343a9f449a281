"""The destination registry: a lookup by name drives the create body, the masked hint,
edits and the destination built, for every destination (no database, no network)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pydantic import TypeAdapter

from flow.exporters.base import IntegrationInputError
from flow.exporters.mixpanel import MixpanelDestination
from flow.exporters.posthog import PostHogDestination
from flow.exporters.registry import PROVIDERS, IntegrationCreate, IntegrationPatch, spec_for
from flow.exporters.spec import Stored
from flow.exporters.stripe import StripeDestination
from tests.exporters.conftest import MP_SECRET, MP_TOKEN, PH_KEY

CASES: list[dict[str, Any]] = [
    {
        "body": {"provider": "posthog", "region": "eu", "project_api_key": PH_KEY},
        "settings": {"region": "eu", "host": "https://eu.i.posthog.com"},
        "hint": f"key phc_…{PH_KEY[-4:]}",
        "patch": {"host": "https://ph.example.com/", "project_api_key": "phc_new0123456789"},
        "patched": ({"host": "https://ph.example.com"}, {"project_api_key": "phc_new0123456789"}),
        "foreign": {"api_secret": MP_SECRET},
        "destination": PostHogDestination,
    },
    {
        "body": {"provider": "mixpanel", "project_token": MP_TOKEN, "api_secret": MP_SECRET},
        "settings": {"region": None, "api_host": "https://api.mixpanel.com"},
        "hint": f"token …{MP_TOKEN[-4:]}, secret …{MP_SECRET[-4:]}",
        "patch": {
            "region": "in",
            "service_account": {"username": "u", "secret": "s", "project_id": 7},
        },
        "patched": (
            {"region": "in", "api_host": "https://api-in.mixpanel.com"},
            {"service_account": {"username": "u", "secret": "s", "project_id": 7}},
        ),
        "foreign": {"host": "https://ph.example.com"},
        "destination": MixpanelDestination,
    },
    {
        "body": {"provider": "stripe", "secret_key": "sk_test_billing0123456789"},
        "settings": {"api_base": "https://api.stripe.com", "unit_meters": {}},
        "hint": "key …6789",
        "patch": {"unit_meters": {"tts_characters": "flow_tts"}, "secret_key": "rk_live_new0123"},
        "patched": (
            {"api_base": "https://api.stripe.com", "unit_meters": {"tts_characters": "flow_tts"}},
            {"secret_key": "rk_live_new0123"},
        ),
        "foreign": {"project_token": MP_TOKEN},
        "destination": StripeDestination,
    },
]


def test_every_destination_is_registered_under_its_name() -> None:
    assert list(PROVIDERS) == ["posthog", "mixpanel", "stripe"]
    assert all(spec_for(name).name == name for name in PROVIDERS)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c["body"]["provider"])
async def test_the_registry_drives_create_hint_patch_and_build(case: dict[str, Any]) -> None:
    body = TypeAdapter(IntegrationCreate).validate_python(case["body"])
    spec = spec_for(body.provider)
    assert isinstance(body, spec.create_model)

    settings_json, creds = spec.split_body(body)
    assert settings_json == case["settings"]
    assert spec.hint(creds) == case["hint"]

    given = IntegrationPatch.model_validate(case["patch"]).model_dump(exclude_unset=True)
    assert given.keys() <= spec.patch_model.model_fields.keys()
    spec.apply_patch(given, Stored(settings_json, creds))
    want_settings, want_creds = case["patched"]
    assert settings_json.items() >= want_settings.items()
    assert creds.items() >= want_creds.items()
    assert case["foreign"].keys().isdisjoint(spec.patch_model.model_fields)

    async with httpx.AsyncClient() as client:
        dest = spec.build(client, Stored(settings_json, creds), "prism-gateway")
    assert isinstance(dest, case["destination"])


def test_a_posthog_edit_refuses_a_mixpanel_region() -> None:
    given = IntegrationPatch.model_validate({"region": "in"}).model_dump(exclude_unset=True)
    with pytest.raises(IntegrationInputError, match="PostHog regions are us and eu"):
        spec_for("posthog").apply_patch(given, Stored({}, {}))
