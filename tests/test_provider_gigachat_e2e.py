"""GigaChat end to end: the openai SDK → aiproxy → a fake Sber OAuth + GigaChat REST v1.

The fake answers in the shapes of Sber's reference,
https://developers.sber.ru/docs/ru/gigachat/api/reference/rest/post-chat (answers with a
function call carry ``functions_state_id``; streams end with ``data: [DONE]``).
"""

from __future__ import annotations

from typing import Any

import pytest

from aiproxy_providers.gigachat import GREEDY_TEMPERATURE
from tests.conftest import StartProxy
from tests.provider_fakes import FakeGigaChat

GIGA = "gigachat/GigaChat-2-Max"
REASONING = "gigachat/GigaChat-2-Reasoning"
STATE = "77d3fb14-457a-46ba-937e-8d856156d003"  # what giga_completion answers with a call
WEATHER_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
QUESTION = {"role": "user", "content": "What is the weather in Paris?"}
HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
async def gigachat(aiohttp_server: Any) -> FakeGigaChat:
    return await FakeGigaChat.start(aiohttp_server)


class TestGreedyDecoding:
    """Defect 2. post-chat: temperature has exclusiveMinimum 0 (0 is a 422); "from 0 to 0.001"
    resets temperature and top_p to the most deterministic answer."""

    async def test_temperature_zero_becomes_the_documented_deterministic_value(
            self, start_proxy: StartProxy, gigachat: FakeGigaChat) -> None:
        proxy = await start_proxy({"models": [gigachat.model(GIGA)]})
        answer = await proxy.client.chat.completions.create(model=GIGA, messages=HI,
                                                            temperature=0)
        assert answer.choices[0].message.content == "Hello from GigaChat"
        sent = gigachat.calls("chat/completions")[0].body
        assert sent["temperature"] == GREEDY_TEMPERATURE
        assert 0 < sent["temperature"] < 0.001

    async def test_other_temperatures_and_top_p_pass_unchanged(
            self, start_proxy: StartProxy, gigachat: FakeGigaChat) -> None:
        proxy = await start_proxy({"models": [gigachat.model(GIGA)]})
        await proxy.client.chat.completions.create(model=GIGA, messages=HI,
                                                   temperature=0.7, top_p=0)
        sent = gigachat.calls("chat/completions")[0].body
        assert (sent["temperature"], sent["top_p"]) == (0.7, 0)
