"""Fault tests share the session stack (tests/conftest.py) and the export fixtures; the
figures of every fault are printed together at the end of the run."""

from typing import Any

from tests.exporters.conftest import (  # noqa: F401 (fixtures, found by name)
    cleanup_integrations,
    export_settings,
    mixpanel_sink,
    posthog_sink,
)
from tests.faults.report import LINES


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if LINES:
        terminalreporter.section("fault suite: one line per fault")
        for line in LINES:
            terminalreporter.write_line(line)
