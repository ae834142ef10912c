"""Shared test setup. Under CI a skipped test fails the run: a skip must never hide a gap."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if os.environ.get("CI") and skipped and exitstatus == 0:
        print(f"\nCI: {skipped} test(s) skipped; under CI every test must run")
        session.exitstatus = 1
