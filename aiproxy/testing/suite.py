"""Running the conformance suite: one check, all of them as a report, or as pytest tests."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Mapping, Sequence
from types import MappingProxyType

import attrs

from aiproxy.testing.adapter import CHECK_TIMEOUT, ConformanceAdapter
from aiproxy.testing.checks import CHAT_CHECKS, ERROR_CHECKS
from aiproxy.testing.media import MEDIA_CHECKS
from aiproxy.testing.tools import TOOL_CHECKS
from aiproxy.testing.world import Check, ConformanceFailure, world

__all__ = ["CHECKS", "CheckResult", "ConformanceReport", "applicable_checks",
           "conformance_tests", "run_check", "run_conformance", "skipped_checks"]

#: Every check, in suite order, by name.
CHECKS: dict[str, Check] = {c.name: c for c in (
    *CHAT_CHECKS, *TOOL_CHECKS, *MEDIA_CHECKS, *ERROR_CHECKS)}


@attrs.frozen
class CheckResult:
    name: str
    ok: bool
    detail: str = ""
    skipped: bool = False


@attrs.frozen
class ConformanceReport:
    provider: str
    results: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def failures(self) -> tuple[CheckResult, ...]:
        return tuple(r for r in self.results if not r.ok)

    @property
    def skipped(self) -> tuple[CheckResult, ...]:
        """The checks that did not apply, each with its reason in ``detail``."""
        return tuple(r for r in self.results if r.skipped)

    def summary(self) -> str:
        lines = [f"conformance of {self.provider}:"]
        for r in self.results:
            state = "skip" if r.skipped else "ok" if r.ok else "FAIL"
            lines.append(f"  {state:<4} {r.name}" + (f": {r.detail}" if r.detail else ""))
        return "\n".join(lines)

    def raise_for_failures(self) -> None:
        if not self.ok:
            raise AssertionError(self.summary())


def applicable_checks(adapter: ConformanceAdapter) -> list[str]:
    """Names of the checks that apply to ``adapter``, in suite order."""
    return [name for name, check in CHECKS.items() if check.skip(adapter) is None]


def skipped_checks(adapter: ConformanceAdapter) -> dict[str, str]:
    """The checks that do not apply to ``adapter``, with the reason for each."""
    return {name: reason for name, check in CHECKS.items()
            if (reason := check.skip(adapter)) is not None}


async def run_check(adapter: ConformanceAdapter, name: str) -> CheckResult:
    """Run one check of :data:`CHECKS` against ``adapter.provider``."""
    check = CHECKS[name]
    reason = check.skip(adapter)
    if reason is not None:
        return CheckResult(name, ok=True, detail=reason, skipped=True)
    bound = asyncio.timeout(CHECK_TIMEOUT)
    try:
        async with bound, world(adapter) as run:
            await check.run(run)
            if adapter.has_upstream:
                await run.expect_pool_free()
    except ConformanceFailure as exc:
        return CheckResult(name, ok=False, detail=str(exc))
    except TimeoutError as exc:
        detail = (f"did not finish within {CHECK_TIMEOUT:.0f}s (a call that hangs, or a stream "
                  "that never ends)") if bound.expired() else "".join(
                      traceback.format_exception(exc))
        return CheckResult(name, ok=False, detail=detail)
    except Exception as exc:  # noqa: BLE001 - a crash in the provider is a failed check
        return CheckResult(name, ok=False, detail="".join(traceback.format_exception(exc)))
    return CheckResult(name, ok=True)


async def run_conformance(adapter: ConformanceAdapter,
                          checks: Sequence[str] | None = None) -> ConformanceReport:
    """Run every check (or ``checks``); skipped ones are listed with their reason."""
    results = [await run_check(adapter, name) for name in (checks or CHECKS)]
    return ConformanceReport(adapter.provider.__qualname__, tuple(results))


def conformance_tests(adapter: ConformanceAdapter, name: str | None = None, *,
                      known_gaps: Mapping[str, str] | None = None) -> type[object]:
    """A pytest test class with one test per check that applies, to bind at module level::

        TestMyProviderConformance = conformance_tests(MyAdapter())

    A check that does not apply to ``adapter`` (a capability the provider does not declare,
    an answer the adapter does not describe) is not a test at all: a skipped test is one CI
    never runs. The class names those checks and why in ``aiproxy_not_run``, and the
    ``aiproxy`` pytest plugin lists them at the end of every run. ``known_gaps`` maps an
    applicable check to the reason it is known to fail: a strict xfail, so a fix turns it red
    until the entry goes. The tests are synchronous (each runs its check in
    ``asyncio.run``), so they need no asyncio pytest plugin.
    """
    import pytest  # only here: the rest of the kit works without pytest installed

    gaps = dict(known_gaps or {})
    unknown = sorted(set(gaps) - set(CHECKS))
    if unknown:
        raise ValueError(f"known_gaps names no check: {', '.join(unknown)}")
    not_run = skipped_checks(adapter)
    moot = [check for check in CHECKS if check in gaps and check in not_run]
    if moot:  # a stale entry: the check is not a test for this adapter, so it cannot xfail
        raise ValueError("known_gaps names checks that do not apply: " + ", ".join(
            f"{check} ({not_run[check]})" for check in moot))
    params = [pytest.param(check, id=check, marks=[
        pytest.mark.xfail(strict=True, reason=gaps[check])] if check in gaps else [])
        for check in CHECKS if check not in not_run]

    class ProviderConformance:
        #: Read by the pytest plugin (aiproxy.testing.plugin) for its end-of-run report.
        aiproxy_adapter = adapter
        #: The checks that are not tests here, each with the reason it does not apply.
        aiproxy_not_run: Mapping[str, str] = MappingProxyType(not_run)

        @pytest.mark.parametrize("check", params)
        def test_conformance(self, check: str) -> None:
            result = asyncio.run(run_check(adapter, check))
            if not result.ok:
                pytest.fail(f"{check}: {result.detail}", pytrace=False)

    ProviderConformance.__name__ = ProviderConformance.__qualname__ = (
        name or f"Test{type(adapter).__name__}Conformance")
    return ProviderConformance
