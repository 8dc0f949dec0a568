"""The validation and the OpenAPI document agree: what ``tests/test_fuzz.py`` found, pinned.

Each test is a request the document calls valid that the proxy refused, or one the document
calls invalid that the proxy let through, before the fix.
"""

from __future__ import annotations

import pytest

from tests.conftest import openai_model

MOCK = {"models": [{"name": "m", "provider": "mock"}]}


class TestIntegralNumbers:
    """JSON Schema's integer is a number without a fraction: 100.0 is 100."""

    async def test_chat_takes_integral_floats_and_sends_integers_upstream(
            self, start_proxy, fake_upstream):
        fake, url = fake_upstream
        proxy = await start_proxy({"models": [openai_model("up", url)]})
        body = {"model": "up", "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 100.0, "n": 1.0, "seed": 145997.0}
        async with proxy.http.post(proxy.url("/v1/chat/completions"), json=body,
                                   headers=proxy.auth) as resp:
            assert resp.status == 200, await resp.text()
        sent = fake.requests_for("up")[-1]
        assert sent.body["max_tokens"] == 100 and type(sent.body["max_tokens"]) is int
        assert b'"seed":145997,' in sent.raw or b'"seed":145997}' in sent.raw

    @pytest.mark.parametrize("seed", [-9223372036854775809, 2.5, float(2**53 + 2)])
    async def test_a_float_that_is_no_exact_integer_stays_refused(self, start_proxy, seed):
        # -9223372036854775809 is below the range; orjson reads it as the float -2**63, which
        # must not pass for the in-range integer it rounds to.
        proxy = await start_proxy(MOCK)
        raw = ('{"model": "m", "messages": [{"role": "user", "content": "hi"}], "seed": '
               f"{seed}}}")
        async with proxy.http.post(proxy.url("/v1/chat/completions"), data=raw,
                                   headers={**proxy.auth,
                                            "Content-Type": "application/json"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["param"] == "seed"

    async def test_embeddings_take_integral_dimensions_and_token_ids(self, start_proxy):
        proxy = await start_proxy(MOCK)
        body = {"model": "m", "input": [[213614.0, 427.0, 1989]], "dimensions": 16.0}
        async with proxy.http.post(proxy.url("/v1/embeddings"), json=body,
                                   headers=proxy.auth) as resp:
            assert resp.status == 200, await resp.text()
            assert len((await resp.json())["data"][0]["embedding"]) == 16


class TestChatMembers:
    """Members the document types are checked: the proxy never forwards what it calls invalid."""

    @pytest.mark.parametrize(("extra", "param"), [
        ({"messages": [{"role": "user", "content": [1]}]}, "messages[0].content[0]"),
        ({"messages": [{"role": "user", "content": "x", "name": 5}]}, "messages[0].name"),
        ({"messages": [{"role": "tool", "content": "x", "tool_call_id": []}]},
         "messages[0].tool_call_id"),
        ({"messages": [{"role": "assistant", "tool_calls": ["x"]}]}, "messages[0].tool_calls[0]"),
        # Two members, no content: still checked (only role + content skip the rest).
        ({"messages": [{"role": "user", "name": 5}]}, "messages[0].name"),
        ({"messages": [{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": 1}]},
         "messages[1].tool_call_id"),
        ({"tools": [1]}, "tools[0]"),
        ({"stop": ["a", 1]}, "stop"),
        ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage"),
    ])
    async def test_wrong_member_types_are_400(self, start_proxy, extra, param):
        proxy = await start_proxy(MOCK)
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], **extra}
        async with proxy.http.post(proxy.url("/v1/chat/completions"), json=body,
                                   headers=proxy.auth) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["param"] == param

    async def test_null_optional_members_are_absent_ones(self, start_proxy):
        proxy = await start_proxy(MOCK)
        body = {"model": "m", "user": None, "stop": None, "tools": None, "seed": None,
                "stream_options": {"include_usage": None},
                "messages": [{"role": "user", "content": "hi", "name": None}]}
        async with proxy.http.post(proxy.url("/v1/chat/completions"), json=body,
                                   headers=proxy.auth) as resp:
            assert resp.status == 200, await resp.text()


class TestImages:
    @pytest.mark.parametrize(("body", "param"), [
        ({"prompt": "a cat", "inputs": 0}, "inputs"),
        ({"inputs": " \x1c"}, "inputs"),
        ({"prompt": "", "inputs": "a cat"}, "prompt"),
        ({}, "prompt"),
    ])
    async def test_old_image_checks_every_spelling_of_the_prompt(self, start_proxy, body, param):
        proxy = await start_proxy({"models": [{"name": "m", "provider": "mock"}]})
        async with proxy.http.post(proxy.url("/image"), json=body, headers=proxy.auth) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["param"] == param

    async def test_null_members_are_absent_ones(self, start_proxy):
        proxy = await start_proxy({"models": [{"name": "m", "provider": "mock"}]})
        body = {"prompt": "a cat", "model": None, "size": None, "response_format": None}
        async with proxy.http.post(proxy.url("/v1/images/generations"), json=body,
                                   headers=proxy.auth) as resp:
            assert resp.status == 200, await resp.text()
        async with proxy.http.post(proxy.url("/v1/embeddings"), headers=proxy.auth,
                                   json={"model": "m", "input": "x", "dimensions": None}) as resp:
            assert resp.status == 200, await resp.text()


class TestDoors:
    """Completions, Responses and Messages check what their documents declare."""

    @pytest.mark.parametrize(("body", "param"), [
        ({"model": "m", "prompt": "x", "suffix": {}}, "suffix"),
        ({"model": "m", "prompt": [1, -314]}, "prompt"),
        ({"model": "m", "prompt": [[2**32]]}, "prompt"),
        ({"model": "\x1c", "prompt": "x"}, "model"),
    ])
    async def test_completions(self, start_proxy, body, param):
        proxy = await start_proxy(MOCK)
        async with proxy.http.post(proxy.url("/v1/completions"), json=body,
                                   headers=proxy.auth) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["param"] == param

    @pytest.mark.parametrize(("extra", "words"), [
        ({"system": [{"text": "no type"}]}, "system.0"),
        ({"tools": ["x"]}, "tools.0"),
        ({"stop_sequences": ["a", 1]}, "stop_sequences"),
        ({"max_tokens": 2**31}, "max_tokens"),
        ({"top_k": -1}, "top_k"),
    ])
    async def test_messages(self, start_proxy, extra, words):
        proxy = await start_proxy(MOCK)
        body = {"model": "m", "max_tokens": 10,
                "messages": [{"role": "user", "content": "hi"}], **extra}
        async with proxy.http.post(proxy.url("/v1/messages"), json=body,
                                   headers=proxy.auth) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
            assert error["type"] == "invalid_request_error" and error["message"].startswith(words)

    async def test_messages_null_members_are_absent_ones(self, start_proxy):
        proxy = await start_proxy(MOCK)
        body = {"model": "m", "max_tokens": 10.0, "system": None, "tools": None,
                "stop_sequences": None, "messages": [{"role": "user", "content": "hi"}]}
        async with proxy.http.post(proxy.url("/v1/messages"), json=body,
                                   headers=proxy.auth) as resp:
            assert resp.status == 200, await resp.text()

    @pytest.mark.parametrize("tokens", [0, 2**31, 18446744073709551616])
    async def test_responses_bound_max_output_tokens(self, start_proxy, tokens):
        # 18446744073709551616 is past u64: orjson reads it as a float, refused as no integer.
        proxy = await start_proxy(MOCK)
        raw = f'{{"model": "m", "input": "hi", "max_output_tokens": {tokens}}}'
        async with proxy.http.post(proxy.url("/v1/responses"), data=raw,
                                   headers={**proxy.auth,
                                            "Content-Type": "application/json"}) as resp:
            assert resp.status == 400
            assert (await resp.json())["error"]["param"] == "max_output_tokens"
