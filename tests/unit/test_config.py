"""env.example documents exactly the variables Settings reads."""

import re
from pathlib import Path

import pytest

from flow.config import Settings

ROOT = Path(__file__).resolve().parents[2]


def documented() -> set[str]:
    text = (ROOT / "env.example").read_text()
    return {m.group(1).lower() for m in re.finditer(r"^([A-Z][A-Z0-9_]*)=", text, re.M)}


def test_env_example_lists_every_setting_and_nothing_else() -> None:
    assert documented() == set(Settings.model_fields)


def test_bad_price_override_json_is_refused_with_the_variable_named() -> None:
    with pytest.raises(ValueError, match="FLOW_PRICE_OVERRIDES"):
        Settings(flow_price_overrides="{not json")


def test_secrets_do_not_print() -> None:
    s = Settings(supabase_service_role_key="very-secret-value")
    assert "very-secret-value" not in repr(s)
    assert "very-secret-value" not in s.model_dump_json()
