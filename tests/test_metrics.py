"""/metrics after a known sequence of requests shows exactly the counts expected."""

from __future__ import annotations

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_settings, openai_model

MSG = [{"role": "user", "content": "hello"}]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(data: dict, name: str, **labels: str) -> float:
    return data.get((name, tuple(sorted(labels.items()))), 0.0)


async def scrape(proxy, token: str | None = None) -> dict:
    headers = {"Authorization": f"Bearer {token}"} if token else proxy.auth
    async with proxy.http.get(proxy.url("/metrics"), headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        return samples(await resp.text())


async def test_counts_after_a_known_sequence(start_proxy, fake_upstream):
    fake, url = fake_upstream
    proxy = await start_proxy({"models": [
        openai_model("m1", url, priority=1, model_size="G", requests_per_minute=4),
        openai_model("m2", url, priority=2, model_size="G")]})
    await proxy.client.chat.completions.create(model="m1", messages=MSG)  # m1 ok
    fake.script("m1", "500", "500")
    # m1 500, one quick retry on m1, 500 again → m2 ok
    await proxy.client.chat.completions.create(model="G", messages=MSG)
    stream = await proxy.client.chat.completions.create(model="m2", messages=MSG, stream=True,
                                                        stream_options={"include_usage": True})
    async for _ in stream:
        pass
    with pytest.raises(openai.NotFoundError):
        await proxy.client.chat.completions.create(model="nope", messages=MSG)
    await proxy.client.chat.completions.create(model="m1", messages=MSG)  # m1: 4th of 4
    await proxy.client.chat.completions.create(model="G", messages=MSG)  # m1 limited → m2

    for path in ("/v1/a", "/v1/b"):  # random paths must not mint label values
        async with proxy.http.get(proxy.url(path), headers=proxy.auth) as resp:
            assert resp.status == 404

    data = await scrape(proxy)
    assert value(data, "aiproxy_requests_total", route="unmatched", model="", provider="",
                 status="404") == 2
    route = "/v1/chat/completions"
    assert value(data, "aiproxy_requests_total", route=route, model="m1", provider="openai",
                 status="200") == 2
    assert value(data, "aiproxy_requests_total", route=route, model="m2", provider="openai",
                 status="200") == 3
    assert value(data, "aiproxy_requests_total", route=route, model="", provider="",
                 status="404") == 1
    assert value(data, "aiproxy_upstream_errors_total", model="m1", kind="overloaded") == 2
    assert value(data, "aiproxy_fallbacks_total") == 2
    assert value(data, "aiproxy_rate_limited_total", model="m1") == 1
    assert value(data, "aiproxy_retries_total") == 0
    # 12 tokens an answer (7 in, 5 out): m1 answered 2, m2 answered 3 (one streamed).
    assert value(data, "aiproxy_tokens_total", model="m1", direction="in") == 14
    assert value(data, "aiproxy_tokens_total", model="m2", direction="out") == 15
    assert value(data, "aiproxy_time_to_first_token_seconds_count", model="m2") == 1
    assert value(data, "aiproxy_request_duration_seconds_count", route=route) == 6
    assert value(data, "aiproxy_overhead_seconds_count", route=route) == 4
    assert value(data, "aiproxy_streams_in_flight") == 0
    assert value(data, "aiproxy_circuit_breaker_state", model="m1") == 0


async def test_breaker_and_stream_errors_are_visible(start_proxy, fake_upstream):
    fake, url = fake_upstream
    fake.defaults["bad"] = "503"
    fake.script("cut", "cut")
    proxy = await start_proxy({"models": [
        openai_model("bad", url, circuit_breaker={"failures": 1, "cooldown": 60}),
        openai_model("cut", url)]}, settings=make_settings(retry_max_retries=0))
    with pytest.raises(openai.APIStatusError):
        await proxy.client.chat.completions.create(model="bad", messages=MSG)
    stream = await proxy.client.chat.completions.create(
        model="cut", messages=[{"role": "user", "content": "1 2 3 4 5 6 7 8"}], stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass
    data = await scrape(proxy)
    assert value(data, "aiproxy_circuit_breaker_state", model="bad") == 2
    assert value(data, "aiproxy_stream_errors_total", model="cut", kind="protocol") == 1


async def test_metrics_need_a_token(start_proxy):
    proxy = await start_proxy({"models": [{"name": "m", "provider": "mock"}]},
                              settings=make_settings(metrics_token="scraper"))
    async with proxy.http.get(proxy.url("/metrics")) as resp:
        assert resp.status == 401
    await scrape(proxy, token="scraper")
    # The metrics token opens /metrics only.
    async with proxy.http.get(proxy.url("/v1/models"),
                              headers={"Authorization": "Bearer scraper"}) as resp:
        assert resp.status == 401


async def test_workers_metrics_add_up_across_processes(tmp_path):
    import asyncio
    import os
    import subprocess
    import sys

    import aiohttp

    from tests.conftest import TOKEN
    from tests.test_cli import free_port, wait_ready

    config = tmp_path / "c.yaml"
    config.write_text("models:\n  - {name: echo, provider: mock}\n")
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if k not in ("AUTH_TOKEN", "PROMETHEUS_MULTIPROC_DIR")}
    env.update(AUTH_TOKEN=TOKEN, LOG_LEVEL="WARNING")
    proc = subprocess.Popen([sys.executable, "-m", "aiproxy", "--config", str(config),
                             "--addr", f"127.0.0.1:{port}", "--workers", "2"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_ready(url, proc)
        headers = {"Authorization": f"Bearer {TOKEN}"}

        async def scrape_once() -> dict:
            async with aiohttp.ClientSession(headers=headers) as session, session.get(
                    url + "/metrics") as resp:
                return samples(await resp.text())

        def served_by(data: dict) -> set:
            # The breaker gauge is kept per process, labelled with its pid.
            return {dict(labels).get("pid") for (name, labels) in data
                    if name == "aiproxy_circuit_breaker_state"}

        # Separate connections, so SO_REUSEPORT spreads them over the workers; go on until
        # both have served (the second may still be starting when the first answers).
        sent = 0
        for _ in range(50):
            for _ in range(10):
                async with aiohttp.ClientSession(headers=headers) as session, session.post(
                        url + "/v1/chat/completions",
                        json={"model": "echo", "messages": MSG}) as resp:
                    assert resp.status == 200
                sent += 1
            if len(served_by(await scrape_once())) == 2:
                break
        totals = set()
        for _ in range(6):  # whichever worker answers the scrape reports the sum
            data = await scrape_once()
            assert len(served_by(data)) == 2
            totals.add(value(data, "aiproxy_requests_total", route="/v1/chat/completions",
                             model="echo", provider="mock", status="200"))
        assert totals == {sent}
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)


def test_in_process_histograms_are_cumulative_and_exact():
    from aiproxy.metrics import Metrics

    metrics = Metrics()
    for seconds in (0.003, 0.007, 0.007, 400.0):
        metrics.duration.labels("/r").observe(seconds)
    metrics.streams.inc()
    metrics.streams.inc()
    metrics.streams.dec()
    data = samples(metrics.render().decode())
    bucket = "aiproxy_request_duration_seconds_bucket"
    assert value(data, bucket, route="/r", le="0.005") == 1
    assert value(data, bucket, route="/r", le="0.01") == 3
    assert value(data, bucket, route="/r", le="300.0") == 3
    assert value(data, bucket, route="/r", le="+Inf") == 4
    assert value(data, "aiproxy_request_duration_seconds_count", route="/r") == 4
    assert value(data, "aiproxy_request_duration_seconds_sum", route="/r") == pytest.approx(400.017)
    assert value(data, "aiproxy_streams_in_flight") == 1
