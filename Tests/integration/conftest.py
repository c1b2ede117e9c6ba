"""Fixtures for the hub's integration tests.

Every test drives the real `hub` binary (HUB_BINARY, default .build/debug/hub) started as a
subprocess on a free port, over real WebSocket and HTTP connections. Each hub's stderr is kept in
test-artifacts/ (at the repository root) for debugging. Helpers live in hubtest.py.
"""

import os
import time

import pytest

import hubtest
from hubtest import HUB_BINARY, Hub, HubFactory


def pytest_sessionstart(session):
    hubtest.SESSION_START = time.time()
    if not os.access(HUB_BINARY, os.X_OK):
        raise pytest.UsageError(f"hub binary not found at {HUB_BINARY}: run `swift build` "
                                "or set HUB_BINARY")


@pytest.fixture
def hub_factory(request, tmp_path_factory):
    """Start hubs: hub_factory(*extra_args, env=..., config=...) -> Hub. Every hub still running
    at teardown gets SIGTERM and must exit 0 within 10 s."""
    factory = HubFactory(request, tmp_path_factory)
    yield factory
    problems = factory.teardown()
    assert not problems, "; ".join(problems)


@pytest.fixture
def hub(hub_factory) -> Hub:
    """A hub with default options (token secret and API key set)."""
    return hub_factory()
