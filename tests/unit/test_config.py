"""env.example documents exactly the variables Settings reads."""

import re
from pathlib import Path

import pytest

from flow.config import MAX_INSTANCE_STALE_SECONDS, Settings, retired_settings

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


def test_readme_configuration_table_is_generated_from_settings() -> None:
    from flow.config import settings_table

    table = settings_table((ROOT / "env.example").read_text())
    readme = (ROOT / "README.md").read_text()
    start, end = "<!-- config:start -->\n", "\n<!-- config:end -->"
    assert start in readme and end in readme, "README lacks the configuration table markers"
    current = readme.split(start, 1)[1].split(end, 1)[0]
    assert current == table, "README's configuration table is stale: run scripts/config-table"
    for row in table.splitlines()[2:]:
        assert row.rsplit("|", 2)[1].strip(), f"env.example does not describe {row}"


def test_private_urls_are_refused_in_production() -> None:
    with pytest.raises(ValueError, match="FLOW_ALLOW_PRIVATE_URLS is for development only"):
        Settings(flow_env="production", flow_allow_private_urls=True)
    assert Settings(flow_env="development", flow_allow_private_urls=True).flow_allow_private_urls
    assert not Settings(flow_env="production").flow_allow_private_urls


def test_the_former_private_urls_name_is_ignored_and_named_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("FLOW_ALLOW_PRIVATE_URLS", raising=False)
    monkeypatch.setenv("FLOW_WEBHOOK_ALLOW_PRIVATE", "true")
    assert not Settings(flow_env="development").flow_allow_private_urls
    assert not Settings(flow_env="production").flow_allow_private_urls  # nor refused
    warning = "FLOW_WEBHOOK_ALLOW_PRIVATE is no longer read and is ignored: set "
    assert retired_settings() == [warning + "FLOW_ALLOW_PRIVATE_URLS instead"]
    monkeypatch.delenv("FLOW_WEBHOOK_ALLOW_PRIVATE")
    assert retired_settings(env_file=tmp_path / "missing") == []
    (tmp_path / ".env").write_text("flow_webhook_allow_private=true\n")
    assert retired_settings(env_file=tmp_path / ".env") == [
        warning + "FLOW_ALLOW_PRIVATE_URLS instead"
    ]


def test_instance_staleness_keeps_a_lost_call_within_sixty_seconds() -> None:
    """A lost call ends within FLOW_INSTANCE_STALE_SECONDS plus one heartbeat period (a
    third of it) of its instance's last beat."""
    from flow.bot.instance import InstanceJobs

    assert MAX_INSTANCE_STALE_SECONDS + MAX_INSTANCE_STALE_SECONDS / 3 <= 60
    assert Settings(flow_instance_stale_seconds=45).flow_instance_stale_seconds == 45
    with pytest.raises(ValueError, match="flow_instance_stale_seconds"):
        Settings(flow_instance_stale_seconds=46)
    assert InstanceJobs.heartbeat_seconds(MAX_INSTANCE_STALE_SECONDS) == 15
