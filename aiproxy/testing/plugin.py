"""The pytest plugin of ``aiproxy.testing``, found through the ``pytest11`` entry point.

Installing aiproxy is enough: ``pytest`` then has the fixtures below, and after a run that
included a conformance suite (:func:`aiproxy.testing.conformance_tests`) a report of every
provider's checks: what passed and failed, and each check that was not run (it does not
apply to the adapter, so it is no test at all) with the reason. It is inert otherwise: no
autouse fixture, no option, nothing collected. Disable it with ``-p no:aiproxy``.

The fixtures are async (the fake upstream and a provider live on the test's event loop), so
they need an asyncio plugin: pytest-asyncio (or pytest-aiohttp, which brings it). The
conformance suite itself needs none.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pytest

if TYPE_CHECKING:
    import aiohttp

    from aiproxy.provider import Provider
    from aiproxy.testing.upstream import FakeUpstream

F = TypeVar("F", bound=Callable[..., Any])

try:  # strict mode of pytest-asyncio wants its own decorator on async fixtures
    import pytest_asyncio

    _fixture: Any = pytest_asyncio.fixture
except ImportError:  # pragma: no cover - pytest then says the async fixture needs a plugin
    _fixture = pytest.fixture


def _async_fixture(fn: F) -> F:
    return cast(F, _fixture(fn))

@_async_fixture
async def aiproxy_upstream() -> AsyncIterator[FakeUpstream]:
    """A running :class:`~aiproxy.testing.FakeUpstream` on 127.0.0.1; ``.url`` is its root."""
    from aiproxy.testing.upstream import FakeUpstream

    async with FakeUpstream() as fake:
        yield fake


@_async_fixture
async def aiproxy_session() -> AsyncIterator[aiohttp.ClientSession]:
    """An ``aiohttp.ClientSession``, as the core gives a provider."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        yield session


@_async_fixture
async def aiproxy_provider(aiproxy_upstream: FakeUpstream,
                           aiproxy_session: aiohttp.ClientSession
                           ) -> AsyncIterator[Callable[..., Provider]]:
    """Build providers pointed at ``aiproxy_upstream``; each is closed after the test::

        provider = aiproxy_provider(MyProvider, token="k", options={"region": "eu"})

    The keywords are :class:`~aiproxy.config.ModelConfig` fields (``name`` defaults to
    ``test/model``, ``url`` to the fake's root); or pass a whole ``model=``.
    """
    from aiproxy.config import ModelConfig
    from aiproxy.upstream import UpstreamClient

    made: list[Provider] = []
    client = UpstreamClient()

    def make(cls: type[Provider], model: ModelConfig | None = None, **fields: Any) -> Provider:
        if model is None:
            fields = {"name": "test/model", "provider": "test", "url": aiproxy_upstream.url,
                      **fields}
            model = ModelConfig(**fields)
        provider = cls(model, aiproxy_session)
        provider.upstream_client = client  # as the core builds it: plain calls over the pool
        made.append(provider)
        return provider

    yield make
    for provider in made:
        await provider.close()
    await client.close()


class ConformanceReporter:
    """Collects how each conformance test came out, and reports it at the end of the run,
    with the checks that were not tests (they do not apply to the adapter) and why."""

    def __init__(self) -> None:
        self.cases: dict[str, tuple[str, str]] = {}  # nodeid → (provider, check)
        self.outcomes: dict[str, tuple[str, str]] = {}  # nodeid → (state, reason)
        self.not_run: dict[str, Mapping[str, str]] = {}  # provider → {check: reason}

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        # After deselection (-k, -m): a suite none of whose tests run is not reported.
        for item in session.items:
            cls = getattr(item, "cls", None)
            adapter = getattr(cls, "aiproxy_adapter", None)
            callspec = getattr(item, "callspec", None)
            if cls is None or adapter is None or callspec is None \
                    or "check" not in callspec.params:
                continue
            # The name the class was bound under, as in the test ids.
            holder = item.getparent(pytest.Class)
            provider = (f"{adapter.provider.__qualname__} "
                        f"({holder.name if holder else cls.__name__})")
            self.cases[item.nodeid] = (provider, str(callspec.params["check"]))
            self.not_run.setdefault(provider, getattr(cls, "aiproxy_not_run", {}))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        case = self.cases.get(report.nodeid)
        if case is None:
            return
        if hasattr(report, "wasxfail"):
            self.outcomes[report.nodeid] = ("xfail", str(report.wasxfail))
        elif report.skipped:  # not by the suite: a skip mark or hook of the project's own
            longrepr = report.longrepr
            reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
            self.outcomes[report.nodeid] = ("skipped", reason.removeprefix("Skipped: "))
        elif report.failed:
            self.outcomes[report.nodeid] = ("failed", "")
        elif report.when == "call":
            self.outcomes[report.nodeid] = ("passed", "")

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        """One section: per provider, what passed and failed, and each check not run, why."""
        if not self.outcomes:  # --collect-only, or no conformance test ran
            return
        ran: dict[str, list[tuple[str, str, str]]] = {}
        for nodeid, (state, reason) in self.outcomes.items():
            provider, check = self.cases[nodeid]
            ran.setdefault(provider, []).append((check, state, reason))
        terminalreporter.write_sep("=", "aiproxy conformance")
        for provider, results in ran.items():
            not_run = self.not_run.get(provider, {})
            counts = {s: sum(1 for _, state, _ in results if state == s)
                      for s in ("passed", "failed", "skipped", "xfail")}
            counts["not run"] = len(not_run)
            terminalreporter.write_line(f"{provider}: " + ", ".join(
                f"{n} {state}" for state, n in counts.items() if n))
            for check, state, reason in results:
                if state != "passed":
                    terminalreporter.write_line(f"  {state} {check}"
                                                + (f": {reason}" if reason else ""))
            for check, reason in not_run.items():
                terminalreporter.write_line(f"  not run {check}: {reason}")


def pytest_configure(config: pytest.Config) -> None:
    config.pluginmanager.register(ConformanceReporter(), "aiproxy-conformance-report")
