"""The conformance suite: one test per adapter x case x path x quantity (ids: adapter/case-id/quantity on the
eager path, adapter@path/case-id/quantity on any other execution path).

Which adapters and cases run is chosen by the bnconform pytest plugin's options (see conformance.execution.plugin);
the verdict itself comes from conformance.core.engine.evaluate, run in one worker process per adapter.
"""
import pytest


def test_batchnorm(bn_check, bn_session, request):
    adapter, item, quantity = bn_check  # item: the case id, or case-id@path
    if adapter == "missing":
        pytest.skip(quantity)
    if adapter == "none":
        pytest.fail(f"collected zero checks: {quantity}", pytrace=False)
    bn_session.enforce(bn_session.record(adapter, item, quantity), request)
