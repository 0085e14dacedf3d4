"""Unit tests start from an empty engine cache: a test that plants a bug in the oracle or the tolerance must not
be handed what an earlier test computed (conformance.core.engine.Shared shares results across adapters)."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _nothing_shared_between_tests():
    from conformance.core import engine

    engine.clear_caches()
    yield
    engine.clear_caches()
