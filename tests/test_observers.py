"""The observers (metrics, the usage ledger, the access line, traces) see every request once it
has ended; a client does not wait for them, except where a budget's charge must land first."""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections.abc import Callable
from typing import Any

import orjson

from aiproxy.http.state import OBSERVERS
from aiproxy.record import Record
from tests.conftest import TOKEN

BODY = orjson.dumps({"model": "echo", "messages": [{"role": "user", "content": "hi"}]})
# A guard against a hang in a broken build, never a timing bound: the tests below wait on
# events and pass at once when the behaviour holds.
GUARD = 10.0


def post_in_thread(port: int, done: threading.Event, got: list[Any]) -> threading.Thread:
    """POST one chat completion from a thread of its own (a blocking client: it can read the
    answer while the server's event loop is held), then set ``done``."""

    def run() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=GUARD * 2)
        try:
            conn.request("POST", "/v1/chat/completions", body=BODY, headers={
                "Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"})
            resp = conn.getresponse()
            got.append((resp.status, orjson.loads(resp.read())))
        finally:
            conn.close()
            done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def observed_while_answering(proxy: Any, observer: Callable[[Record, threading.Event],
                                                                None]) -> tuple[int, Any]:
    """One request from a thread of its own, with ``observer(record, answered)`` added to the
    observers (``answered`` is set once the client has the whole answer); returns the
    client's status and body, after the observer ran."""
    answered, observed = threading.Event(), threading.Event()

    def observe(record: Record) -> None:
        observer(record, answered)
        observed.set()

    proxy.app[OBSERVERS].append(observe)
    got: list[Any] = []
    thread = post_in_thread(proxy.server.port, answered, got)
    for _ in range(int(GUARD * 100)):
        if observed.is_set():
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the observer never ran")
    thread.join(GUARD)
    return got[0]


class TestAfterTheAnswer:
    async def test_the_answer_leaves_before_the_observers_run(self, start_proxy):
        proxy = await start_proxy({"models": [{"name": "echo", "provider": "mock"}]})
        seen: list[tuple[str, bool]] = []

        def hold(record: Record, answered: threading.Event) -> None:
            # Holds the server's event loop until the client has the whole answer. Run before
            # the answer was written, it would wait out the guard and see no answer.
            seen.append((record.request_id, answered.wait(GUARD)))

        status, body = await observed_while_answering(proxy, hold)
        assert status == 200
        assert body["choices"][0]["message"]["content"] == "You said: hi"
        assert len(seen) == 1 and seen[0][1] is True  # the client had its answer first

    async def test_the_next_request_sees_what_the_last_one_recorded(self, start_proxy):
        proxy = await start_proxy({"models": [{"name": "echo", "provider": "mock"}]})
        for _ in range(3):
            async with proxy.http.post(proxy.url("/v1/chat/completions"), data=BODY,
                                       headers=proxy.auth) as resp:
                assert resp.status == 200
        async with proxy.http.get(proxy.url("/metrics"), headers=proxy.auth) as resp:
            text = await resp.text()
        line = next(line for line in text.splitlines()
                    if line.startswith("aiproxy_requests_total{")
                    and 'route="/v1/chat/completions"' in line)
        assert line.endswith(" 3.0")

    async def test_a_failing_observer_costs_neither_the_answer_nor_the_others(
            self, start_proxy):
        proxy = await start_proxy({"models": [{"name": "echo", "provider": "mock"}]})
        after: list[str] = []

        def broken(record: Record) -> None:
            raise RuntimeError("an observer's bug")

        proxy.app[OBSERVERS].insert(0, broken)
        proxy.app[OBSERVERS].append(lambda record: after.append(record.request_id))
        async with proxy.http.post(proxy.url("/v1/chat/completions"), data=BODY,
                                   headers=proxy.auth) as resp:
            assert resp.status == 200
            request_id = resp.headers["X-Request-ID"]
        await asyncio.sleep(0)  # the observers run once the answer has left
        assert after == [request_id]


class TestBeforeTheAnswer:
    async def test_with_a_budget_the_charge_is_observed_before_the_answer(self, start_proxy):
        config = {"models": [{"name": "echo", "provider": "mock", "budget": {"daily": 100}}]}
        proxy = await start_proxy(config)
        order: list[str] = []

        def note(record: Record, answered: threading.Event) -> None:
            order.append("answered" if answered.is_set() else "observed")

        status, _ = await observed_while_answering(proxy, note)
        assert status == 200
        # Observed inline: the answer could not have left before.
        assert order == ["observed"]
