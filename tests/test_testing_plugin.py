"""The pytest plugin of ``aiproxy.testing``, as a plugin author meets it: ``pytest`` in a fresh
project that imports nothing but aiproxy gets the fixtures and the conformance report. A check
that does not apply is no test (nothing is skipped) and the report names it, with why. Each
test runs pytest in a subprocess, in an empty directory."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from aiproxy.testing import CHECKS, ConformanceAdapter, applicable_checks, skipped_checks

# A plugin author's test module: the OpenAI plugin as "their" provider, an adapter that
# describes only chat (so the tool, embeddings and image checks are not run, and say why),
# and tests of their own on the plugin's fixtures.
PROJECT_TEST = '''
from __future__ import annotations

import pytest
from aiohttp import web

from aiproxy.provider import ErrorKind
from aiproxy.testing import RETRY_AFTER, ConformanceAdapter, conformance_tests, json_response
from aiproxy_providers.openai import OpenAIProvider


class Adapter(ConformanceAdapter):
    provider = OpenAIProvider
    chat_paths = ("/chat/completions",)

    def answer_text(self, text, usage, request):
        return {"id": "c1", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": usage.prompt_tokens,
                          "completion_tokens": usage.completion_tokens,
                          "total_tokens": usage.total_tokens}}

    def stream_text(self, pieces, usage, request):
        def chunk(delta, finish=None):
            return {"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        events = [chunk({"role": "assistant"}), *(chunk({"content": p}) for p in pieces),
                  chunk({}, "stop")]
        if (request.json.get("stream_options") or {}).get("include_usage"):
            events.append({"id": "c1", "object": "chat.completion.chunk", "created": 1,
                           "model": "m", "choices": [], "usage": {
                               "prompt_tokens": usage.prompt_tokens,
                               "completion_tokens": usage.completion_tokens,
                               "total_tokens": usage.total_tokens}})
        return [*events, b"[DONE]"]

    def error(self, kind, message, request):
        if kind is ErrorKind.RATE_LIMITED:
            return json_response({"error": {"message": message}}, status=429,
                                 headers={"Retry-After": str(int(RETRY_AFTER))})
        return None


TestMine = conformance_tests(Adapter())


@pytest.mark.asyncio
async def test_fixtures(aiproxy_upstream, aiproxy_provider):
    async def chat(request):
        body = await request.json()
        return json_response({"id": "x", "object": "chat.completion", "created": 1,
                              "model": body["model"], "choices": [{"index": 0, "message": {
                                  "role": "assistant", "content": "hi"},
                                  "finish_reason": "stop"}]})

    aiproxy_upstream.route("POST", "/chat/completions", chat)
    provider = aiproxy_provider(OpenAIProvider, token="k", upstream_model="gpt-x")
    from aiproxy.testing import chat_request
    answer = await provider.chat(chat_request())
    assert answer.data["choices"][0]["message"]["content"] == "hi"
    (seen,) = aiproxy_upstream.requests_to("/chat/completions")
    assert seen.json["model"] == "gpt-x"
    assert seen.headers["Authorization"] == "Bearer k"
'''


def _pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=project, capture_output=True, text=True, timeout=180, check=False)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "test_plugin_conformance.py").write_text(PROJECT_TEST, encoding="utf-8")
    return tmp_path


# What the adapter above does not describe, as the report words it.
NOT_RUN = {
    "tool_round_trip": "the adapter's upstream makes no tool calls "
                       "(answer_tool_call not overridden)",
    "embeddings": "the adapter describes no embeddings answer "
                  "(answer_embeddings not overridden)",
    "images": "the adapter describes no images answer (answer_image not overridden)",
    "error_auth": "the adapter's upstream has no AUTH answer",
}


def _adapter() -> ConformanceAdapter:
    """The project's adapter, loaded here: what the suite should make of it."""
    namespace: dict[str, object] = {"__name__": "plugin_project"}
    exec(compile(PROJECT_TEST, "test_plugin_conformance.py", "exec"), namespace)  # noqa: S102
    adapter = namespace["Adapter"]
    assert isinstance(adapter, type) and issubclass(adapter, ConformanceAdapter)
    return adapter()


def _collected(out: subprocess.CompletedProcess[str]) -> set[str]:
    return set(re.findall(r"test_conformance\[(\w+)\]", out.stdout))


def test_a_check_that_does_not_apply_is_not_collected(project: Path) -> None:
    out = _pytest(project, "--collect-only", "-k", "TestMine")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    collected = _collected(out)
    assert collected == set(applicable_checks(_adapter()))
    assert {"chat", "stream_usage", "error_rate_limited", "connection_refused"} <= collected
    assert not collected & set(NOT_RUN), collected & set(NOT_RUN)


def test_pytest_runs_the_suite_and_reports_what_it_did_not_run(project: Path) -> None:
    out = _pytest(project, "-rs")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    text = out.stdout
    report = text[text.index("aiproxy conformance"):]
    counts = re.search(r"OpenAIProvider \(TestMine\): (\d+) passed, (\d+) not run\n", report)
    assert counts, report
    passed, not_run = map(int, counts.groups())
    lines = re.findall(r"^  not run (\w+): (.+)$", report, re.M)
    # Every check either ran or is named with its reason; none is both.
    assert len(lines) == not_run and passed + not_run == len(CHECKS)
    reasons = dict(lines)
    assert reasons == skipped_checks(_adapter())
    for check, reason in NOT_RUN.items():
        assert reasons[check] == reason, (check, reasons.get(check))
    assert "error_rate_limited" not in reasons  # it ran and passed
    # pytest's own count: the fixtures test and the checks that apply; nothing skipped.
    assert re.search(rf"^{passed + 1} passed in ", text.splitlines()[-1]), text[-500:]
    assert "skipped" not in text.replace("not run", "") and "SKIPPED" not in text


def test_a_failing_check_fails_the_run_and_is_reported(project: Path) -> None:
    test = project / "test_plugin_conformance.py"
    # The upstream's usage no longer matches what the provider reports.
    test.write_text(test.read_text(encoding="utf-8").replace(
        '"prompt_tokens": usage.prompt_tokens,\n                          "completion',
        '"prompt_tokens": 1,\n                          "completion', 1), encoding="utf-8")
    out = _pytest(project, "-k", "TestMine")
    assert out.returncode == 1, out.stdout[-4000:]
    assert "FAILED" in out.stdout and "test_conformance[chat]" in out.stdout
    report = out.stdout[out.stdout.index("aiproxy conformance"):]
    assert "  failed chat" in report
    assert f"  not run images: {NOT_RUN['images']}" in report


def test_a_deselected_suite_is_not_reported(project: Path) -> None:
    out = _pytest(project, "-k", "test_fixtures")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "aiproxy conformance" not in out.stdout


def test_the_plugin_is_the_entry_point_and_can_be_disabled(project: Path) -> None:
    out = _pytest(project, "-p", "no:aiproxy", "-k", "TestMine", "-rs", "-vv")  # -q is on
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert "aiproxy conformance" not in out.stdout
    # The suite still runs without the plugin, the same tests (conformance_tests chose them),
    # and skips none.
    assert _collected(out) == set(applicable_checks(_adapter()))
    assert "skipped" not in out.stdout and "SKIPPED" not in out.stdout


def test_every_public_name_of_the_old_module_still_imports() -> None:
    """aiproxy.testing was one module; plugins import these names from it."""
    import aiproxy.testing as kit

    old = ["CHECKS", "CHECK_TIMEOUT", "ERROR_KINDS", "RETRY_AFTER", "TEXT", "TEXT_PIECES",
           "USAGE", "Check", "CheckResult", "ConformanceAdapter", "ConformanceReport",
           "FakeUpstream", "Handler", "RecordedRequest", "SSEEvent", "StreamEvent", "Usage",
           "applicable_checks", "chat_request", "collect_stream", "conformance_tests",
           "encode_stream", "json_response", "run_check", "run_conformance",
           "stream_response"]
    assert set(old) <= set(kit.__all__)
    assert all(hasattr(kit, name) for name in kit.__all__)
