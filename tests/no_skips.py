"""This suite's rule, as a hook: a skipped test fails.

CI must run every test: a test skipped in CI does not exist. So a skip of any origin (a
``skip``/``skipif`` mark, ``pytest.skip()``, ``importorskip``, an async test with no asyncio
plugin) is reported as a failure that names its reason; a missing tool fails the test instead
(see ``tests/redis_fixture.py``). An xfail is not a skip: its report keeps its outcome.
``tests/conftest.py`` imports the hook, so it covers every test under ``tests/``.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.skipped and not hasattr(report, "wasxfail"):
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} was skipped ({reason.removeprefix('Skipped: ')}): "
                           "CI must run every test, so make it run or remove it")
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector
                               ) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """A module skipped whole (``importorskip`` at import, ``allow_module_level``) fails too."""
    report = yield
    if report.skipped:
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
        report.outcome = "failed"
        report.longrepr = (f"{collector.nodeid} was skipped ({reason.removeprefix('Skipped: ')})"
                           ": CI must run every test, so make it run or remove it")
    return report
