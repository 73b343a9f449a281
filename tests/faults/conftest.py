"""Fault tests share the session stack (tests/conftest.py) and the export fixtures."""

from tests.exporters.conftest import (  # noqa: F401 (fixtures, found by name)
    cleanup_integrations,
    export_settings,
    mixpanel_sink,
    posthog_sink,
)
