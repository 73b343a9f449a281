"""Flow's settings: every environment variable the service reads, typed and documented.

One ``Settings`` class (pydantic-settings) reads the process environment and an
optional ``.env`` file. ``env.example`` documents the same variables; a test checks
that the two never drift apart. Secrets are ``SecretStr`` so they never print.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from dotenv import dotenv_values
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PLACEHOLDER_SECRET = "change-me"
# The longest period one usage report may span, in days: the API, the CLI and the
# dashboard all refuse longer ones.
MAX_REPORT_DAYS = 400
# The rates a FLOW_PRICE_OVERRIDES entry may give, USD per million tokens.
LLM_PRICE_KEYS = (
    "input",
    "output",
    "cache_read",
    "input_audio",
    "output_audio",
    "cache_read_audio",
)
# Former setting names, no longer read: each is named at start-up with its replacement.
RETIRED_SETTINGS = {"FLOW_WEBHOOK_ALLOW_PRIVATE": "FLOW_ALLOW_PRIVATE_URLS"}
# Calls of an instance that is gone end within FLOW_INSTANCE_STALE_SECONDS plus one
# heartbeat period (a third of it) of its last heartbeat: 45 keeps that within 60 s.
MAX_INSTANCE_STALE_SECONDS = 45
# A DAILY_ROOM_HOSTS entry: a host name, an IP address, or *.name.
_ROOM_HOST = re.compile(r"(\*\.)?[a-z0-9_.:-]+")


class Settings(BaseSettings):
    """Flow's configuration. Field names map to upper-case environment variables.

    Parameters:
        flow_env: ``development``, ``test`` or ``production``. Production refuses the
            simulated transport and placeholder secrets.
        supabase_url: Supabase project URL (or the local stack's gateway).
        supabase_service_role_key: service-role JWT; Flow only ever acts as service_role.
    """

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    # --- service -----------------------------------------------------------
    flow_env: Literal["development", "test", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = 8000
    flow_log_level: str = "INFO"
    flow_log_format: Literal["text", "json"] = "text"
    flow_max_body_bytes: int = 64 * 1024

    # --- running several instances: drain, metrics -------------------------
    flow_drain_seconds: float = Field(default=600.0, ge=0, le=86_400)
    flow_shutdown_goodbye: str = Field(
        default="Sorry, this line is closing now. Please call again later. Goodbye.",
        max_length=2_000,
    )
    flow_metrics_port: int = Field(default=0, ge=0, le=65_535)
    otel_exporter_otlp_endpoint: str = ""
    otel_exporter_otlp_headers: SecretStr = SecretStr("")
    otel_service_name: str = "flow"

    # --- database ----------------------------------------------------------
    supabase_url: str = ""
    supabase_service_role_key: SecretStr = SecretStr("")
    supabase_timeout_seconds: float = 10.0

    # --- auth --------------------------------------------------------------
    unkey_root_key: SecretStr = SecretStr("")
    unkey_base_url: str = ""
    unkey_timeout_seconds: float = 5.0
    flow_auth_cache_ttl_seconds: float = Field(default=10.0, ge=0, le=30)

    # --- bot ---------------------------------------------------------------
    openai_api_key: SecretStr = SecretStr("")
    openai_base_url: str = ""
    flow_llm_model: str = "gpt-4o-mini"
    flow_system_prompt: str = (
        "You are a friendly, concise voice assistant. Answer in one or two short sentences."
    )
    flow_greeting: str = ""
    flow_tts_provider: Literal["openai", "deepgram"] = "openai"
    flow_tts_model: str = "tts-1"
    flow_tts_voice: str = ""
    deepgram_api_key: SecretStr = SecretStr("")
    flow_stt_model: str = ""
    daily_api_key: SecretStr = SecretStr("")
    daily_room_hosts: str = ""
    flow_max_bots: int = Field(default=20, ge=1)
    flow_max_call_seconds: float = Field(default=1800.0, gt=0)
    flow_idle_timeout_seconds: float = Field(default=120.0, gt=0)
    flow_instance_stale_seconds: int = Field(default=30, ge=2, le=MAX_INSTANCE_STALE_SECONDS)
    flow_max_script_turns: int = Field(default=50, ge=1)
    flow_max_prompt_chars: int = Field(default=8000, ge=1)
    # Pipecat's defaults: Silero's stop_secs, the smart-turn model.
    flow_vad_stop_secs: float = Field(default=0.2, gt=0, le=5)
    flow_turn_stop: Literal["smart", "timeout"] = "smart"
    flow_turn_stop_timeout_seconds: float = Field(default=0.6, gt=0, le=10)

    # --- speech-to-speech (bot_config.mode "realtime") ---------------------
    flow_realtime_model: str = "gpt-realtime"
    flow_realtime_voice: str = "alloy"
    flow_realtime_transcription_model: str = "gpt-4o-mini-transcribe"
    openai_realtime_base_url: str = ""

    # --- WebRTC ------------------------------------------------------------
    flow_webrtc_connect_timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    flow_webrtc_ice_servers: str = ""
    flow_webrtc_loopback: bool = False

    # --- telephony (Twilio Media Streams) ------------------------------------
    twilio_account_sid: str = ""
    twilio_auth_token: SecretStr = SecretStr("")
    twilio_from_number: str = ""
    twilio_api_base_url: str = "https://api.twilio.com"
    flow_public_url: str = ""
    flow_telephony_hash_callers: bool = False
    flow_telephony_stream_token_seconds: int = Field(default=60, ge=5, le=600)

    # --- demo --------------------------------------------------------------
    flow_demo_daily_room_url: str = ""
    flow_demo_daily_token: SecretStr = SecretStr("")

    # --- metering ----------------------------------------------------------
    flow_meter_flush_seconds: float = Field(default=1.0, gt=0)
    flow_spool_dir: Path = Path(".flow/spool")
    flow_price_overrides: str = ""
    flow_voice_prices: str = ""

    # --- reconciliation with vendor usage -----------------------------------
    openai_admin_key: SecretStr = SecretStr("")
    openai_admin_base_url: str = ""
    openai_admin_timeout_seconds: float = Field(default=30.0, gt=0, le=300)
    deepgram_admin_key: SecretStr = SecretStr("")
    deepgram_project_id: str = ""
    deepgram_admin_base_url: str = ""
    deepgram_admin_timeout_seconds: float = Field(default=30.0, gt=0, le=300)
    # --- budgets -----------------------------------------------------------
    flow_budget_goodbye: str = Field(
        default="Sorry, this call has reached its spending limit. Goodbye.",
        min_length=1,
        max_length=500,
    )
    flow_budget_webhook_url: str = ""
    flow_budget_poll_seconds: float = Field(default=1.0, gt=0, le=60)

    # --- post-call ---------------------------------------------------------
    flow_insights_model: str = "gpt-4o-mini"
    flow_webhook_secret: SecretStr = SecretStr("")

    # --- outbound URLs (webhooks, export destinations) --------------------
    flow_allow_private_urls: bool = False

    # --- PostHog live capture ---------------------------------------------
    posthog_api_key: SecretStr = SecretStr("")
    posthog_host: str = ""
    posthog_capture_content: bool = False

    # --- exports -----------------------------------------------------------
    flow_secret_key: SecretStr = SecretStr("")
    flow_sync_enabled: bool = True
    flow_sync_tick_seconds: float = Field(default=15.0, gt=0)
    flow_export_source_id: str = "prism-gateway"

    @field_validator(
        "supabase_url",
        "openai_base_url",
        "openai_admin_base_url",
        "deepgram_admin_base_url",
        "openai_realtime_base_url",
        "unkey_base_url",
        "posthog_host",
        "twilio_api_base_url",
        "flow_public_url",
    )
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        return v.rstrip("/")

    @model_validator(mode="after")
    def _refuse_placeholders_in_production(self) -> Settings:
        if self.flow_env == "production":
            for name in ("flow_secret_key", "flow_webhook_secret"):
                value: SecretStr = getattr(self, name)
                if value.get_secret_value() == PLACEHOLDER_SECRET:
                    raise ValueError(f"{name.upper()} must be changed from the placeholder")
            if self.flow_allow_private_urls:
                raise ValueError(
                    "FLOW_ALLOW_PRIVATE_URLS is for development only: it is refused when "
                    "FLOW_ENV=production"
                )
            if self.flow_webrtc_loopback:
                raise ValueError(
                    "FLOW_WEBRTC_LOOPBACK is for calls from the same machine: it is refused "
                    "when FLOW_ENV=production"
                )
        if self.flow_telephony_hash_callers and not self.flow_secret_key.get_secret_value():
            raise ValueError(
                "FLOW_TELEPHONY_HASH_CALLERS keys its hash with FLOW_SECRET_KEY: set it too"
            )
        self.webrtc_ice_servers()  # refuses a malformed list at start
        self.room_hosts()
        for name in ("flow_price_overrides", "flow_voice_prices"):
            raw = getattr(self, name)
            if raw:
                try:
                    parsed = json.loads(raw)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{name.upper()} is not valid JSON: {exc}") from exc
                if not isinstance(parsed, dict):
                    raise ValueError(f"{name.upper()} must be a JSON object")
        _check_llm_price_keys(self.flow_price_overrides)
        return self

    # --- derived -----------------------------------------------------------
    @property
    def unkey_enabled(self) -> bool:
        return bool(self.unkey_root_key.get_secret_value())

    @property
    def posthog_enabled(self) -> bool:
        return bool(self.posthog_api_key.get_secret_value())

    def telephony_problem(self) -> str | None:
        """Why this instance cannot take or place phone calls, or None when it can."""
        missing = [
            name.upper()
            for name in ("twilio_account_sid", "twilio_auth_token", "flow_public_url")
            if not _text(getattr(self, name))
        ]
        return f"{', '.join(missing)} not set" if missing else None

    def room_hosts(self) -> list[str]:
        """The hosts a Daily room may be on beside ``*.daily.co`` (``DAILY_ROOM_HOSTS``,
        comma-separated): ``rooms.example.com`` is that host, ``*.example.com`` any
        name under it."""
        given = (
            h.strip().lower().rstrip(".").strip("[]") for h in self.daily_room_hosts.split(",")
        )
        hosts = [h for h in given if h]
        for host in hosts:
            if not _ROOM_HOST.fullmatch(host):
                raise ValueError(f"DAILY_ROOM_HOSTS entry {host!r} is not a host name (or *.name)")
        return hosts

    def webrtc_ice_servers(self) -> list[dict[str, Any]]:
        """The STUN/TURN servers of WebRTC calls: ``{"urls": [...], "username",
        "credential"}`` each, from ``FLOW_WEBRTC_ICE_SERVERS`` (a JSON list of URLs or of
        such objects)."""
        return _ice_servers(self.flow_webrtc_ice_servers)

    def price_overrides(self) -> dict[str, dict[str, Decimal]]:
        """Per-model negotiated prices in USD per million tokens (``input``, ``output``,
        ``cache_read``, and per modality ``input_audio``, ``output_audio``,
        ``cache_read_audio``), keyed by model name."""
        return _decimal_table(self.flow_price_overrides)

    def voice_prices(self) -> dict[str, dict[str, Decimal]]:
        """Voice vendor price overrides keyed by ``provider/model``: ``per_character`` or
        ``per_second`` in USD."""
        return _decimal_table(self.flow_voice_prices)


def _text(value: str | SecretStr) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _check_llm_price_keys(raw: str) -> None:
    """A misspelt rate would silently price at another rate: refuse it."""
    if not raw:
        return
    for model, rates in json.loads(raw).items():
        if not isinstance(rates, dict):
            raise ValueError(f"FLOW_PRICE_OVERRIDES[{model!r}] must be a JSON object of rates")
        unknown = sorted(set(rates) - set(LLM_PRICE_KEYS))
        if unknown:
            raise ValueError(
                f"FLOW_PRICE_OVERRIDES[{model!r}] has unknown rates {unknown}: "
                f"the rates are {', '.join(LLM_PRICE_KEYS)}"
            )


def _ice_servers(raw: str) -> list[dict[str, Any]]:
    if not raw.strip():
        return []
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"FLOW_WEBRTC_ICE_SERVERS is not valid JSON: {exc}") from exc
    if not isinstance(parsed, list):
        raise ValueError("FLOW_WEBRTC_ICE_SERVERS must be a JSON list")
    servers = []
    for entry in parsed:
        server = {"urls": entry} if isinstance(entry, str) else entry
        if not isinstance(server, dict) or set(server) - {"urls", "username", "credential"}:
            raise ValueError(
                "FLOW_WEBRTC_ICE_SERVERS entries are URLs or objects with urls, username "
                "and credential"
            )
        urls = server.get("urls")
        urls = [urls] if isinstance(urls, str) else urls
        if not urls or not all(
            isinstance(u, str) and u.split(":", 1)[0] in ("stun", "stuns", "turn", "turns")
            for u in urls
        ):
            raise ValueError("FLOW_WEBRTC_ICE_SERVERS urls must be stun:, stuns:, turn: or turns:")
        for key in ("username", "credential"):
            if key in server and not isinstance(server[key], str):
                raise ValueError(f"FLOW_WEBRTC_ICE_SERVERS {key} must be a string")
        servers.append({**server, "urls": urls})
    return servers


def _decimal_table(raw: str) -> dict[str, dict[str, Decimal]]:
    if not raw:
        return {}
    parsed: dict[str, Any] = json.loads(raw, parse_float=Decimal, parse_int=Decimal)
    return {k: {f: Decimal(v) for f, v in row.items()} for k, row in parsed.items()}


def retired_settings(
    environ: Mapping[str, str] | None = None, env_file: Path | None = Path(".env")
) -> list[str]:
    """A warning for each former setting name set in the environment (or ``.env``): it
    is not read any more, and the warning names the setting that replaced it."""
    names = {k.upper() for k in (os.environ if environ is None else environ)}
    if env_file is not None and env_file.is_file():
        names |= {k.upper() for k in dotenv_values(env_file)}
    return [
        f"{old} is no longer read and is ignored: set {new} instead"
        for old, new in RETIRED_SETTINGS.items()
        if old in names
    ]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def settings_table(env_example: str) -> str:
    """The README's configuration table: every setting with its default (from Settings)
    and its description (the comment above it in ``env.example``)."""
    rows = ["| Variable | Default | What it does |", "|---|---|---|"]
    comment: list[str] = []
    for line in env_example.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("# ---"):
            comment = []
        elif stripped.startswith("#"):
            comment.append(stripped.lstrip("# ").strip())
        elif "=" in stripped:
            name = stripped.split("=", 1)[0]
            field = Settings.model_fields.get(name.lower())
            if field is None:
                continue
            default = field.default
            if isinstance(default, SecretStr):
                default = ""
            shown = f"`{default}`" if default not in ("", None) else ""
            text = " ".join(comment).replace("|", "\\|")
            rows.append(f"| `{name}` | {shown} | {text} |")
            comment = []
    return "\n".join(rows)
