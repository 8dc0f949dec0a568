"""An OpenAI-shaped fake upstream for the Responses API and legacy completions tests.

``FakeOpenAIAPI(native=False)`` serves only ``/v1/chat/completions`` (so aiproxy translates);
``native=True`` adds ``/v1/responses`` (create, stream, retrieve by ``previous_response_id``,
delete) and ``/v1/completions`` in the shapes of the OpenAI reference, so aiproxy passes
requests through. Chat answers follow the request: a ``get_weather`` tool call when tools are
offered and the user asks about weather, the tool's answer once a tool result came back, a
JSON object for ``response_format: json_schema``, else ``echo: <last user text>``.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import attrs
import orjson
from aiohttp import web

WEATHER_ARGS = '{"city": "Paris"}'
PERSON = {"name": "Ann", "age": 30}


@attrs.define
class Seen:
    path: str
    method: str
    body: Any
    headers: dict[str, str]


def _sse(events: list[dict[str, Any]], *, named: bool) -> bytes:
    out = b""
    for event in events:
        head = b"event: " + event["type"].encode() + b"\n" if named else b""
        out += head + b"data: " + orjson.dumps(event) + b"\n\n"
    return out


class FakeOpenAIAPI:
    def __init__(self, *, native: bool = False) -> None:
        self.native = native
        self.seen: list[Seen] = []
        self.finish = "stop"  # the next chat answers' finish_reason
        self.cut_stream = False  # chat streams break after their first text chunk
        self.context_limit: int | None = None  # chat refuses more messages than this
        self.fail_status: int | None = None  # every call answers this error status
        self.error_event = False  # native streams send an error event after their first delta
        self.stored: dict[str, dict[str, Any]] = {}
        self.deleted: list[str] = []
        self._ids = itertools.count(1)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        if self.native:
            app.router.add_post("/v1/responses", self.responses)
            app.router.add_delete("/v1/responses/{id}", self.delete)
            app.router.add_post("/v1/completions", self.completions)
        return app

    def calls(self, path: str) -> list[Seen]:
        return [s for s in self.seen if s.path == path]

    async def _record(self, request: web.Request) -> Any:
        raw = await request.read()
        body = orjson.loads(raw) if raw else None
        self.seen.append(Seen(request.path, request.method, body, dict(request.headers)))
        return body

    @staticmethod
    def _error(status: int, message: str, code: str | None = None) -> web.Response:
        return web.json_response({"error": {"message": message, "type": "invalid_request_error",
                                            "param": None, "code": code}}, status=status)

    # --- chat completions ----------------------------------------------------------------

    def _answer(self, body: dict[str, Any]) -> tuple[str | None, list[dict[str, Any]]]:
        messages = body["messages"]
        last = messages[-1]
        if last["role"] == "tool":
            return f"It is sunny in Paris ({last['content']})", []
        text = last.get("content")
        if isinstance(text, list):
            text = " ".join(p.get("text", "") for p in text if p.get("type") == "text")
        fmt = body.get("response_format") or {}
        if fmt.get("type") == "json_schema":
            return orjson.dumps(PERSON).decode(), []
        if body.get("tools") and "weather" in (text or ""):
            return None, [{"id": f"call_{next(self._ids)}", "type": "function",
                           "function": {"name": "get_weather", "arguments": WEATHER_ARGS}}]
        return f"echo: {text}", []

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if self.fail_status:
            return self._error(self.fail_status, "upstream failure")
        if self.context_limit is not None and len(body["messages"]) > self.context_limit:
            return self._error(400, "This model's maximum context length is 100 tokens.",
                               "context_length_exceeded")
        text, calls = self._answer(body)
        usage = {"prompt_tokens": 11, "completion_tokens": 7, "total_tokens": 18,
                 "prompt_tokens_details": {"cached_tokens": 3},
                 "completion_tokens_details": {"reasoning_tokens": 2}}
        finish = "tool_calls" if calls else self.finish
        base = {"id": "chatcmpl-fake", "created": 1700000000, "model": body["model"]}
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": text}
            if calls:
                message["tool_calls"] = calls
            return web.json_response({**base, "object": "chat.completion", "choices": [
                {"index": 0, "message": message, "finish_reason": finish}], "usage": usage})
        chunk = {**base, "object": "chat.completion.chunk"}
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        for call in calls:  # as OpenAI streams a call: id and name first, then the arguments
            head = {"index": 0, "id": call["id"], "type": "function",
                    "function": {"name": call["function"]["name"], "arguments": ""}}
            deltas.append({"tool_calls": [head]})
            args = call["function"]["arguments"]
            for piece in (args[:6], args[6:]):
                deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
        if text:
            words = text.split(" ")
            deltas += [{"content": w if i == 0 else " " + w} for i, w in enumerate(words)]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, delta in enumerate(deltas):
            await resp.write(_sse([{**chunk, "choices": [
                {"index": 0, "delta": delta, "finish_reason": None}]}], named=False))
            if self.cut_stream and i == 1:
                assert request.transport is not None
                request.transport.abort()
                return resp
        await resp.write(_sse([{**chunk, "choices": [
            {"index": 0, "delta": {}, "finish_reason": finish}]}], named=False))
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(_sse([{**chunk, "choices": [], "usage": usage}], named=False))
        await resp.write(b"data: [DONE]\n\n")
        return resp

    # --- the Responses API (native) ------------------------------------------------------

    async def responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        if self.fail_status:
            return self._error(self.fail_status, "upstream failure")
        previous = body.get("previous_response_id")
        if previous and previous not in self.stored:
            return self._error(400, f"Previous response with id '{previous}' not found.",
                               "previous_response_not_found")
        items = body["input"] if isinstance(body["input"], list) else [
            {"role": "user", "content": body["input"]}]
        last = items[-1]
        n = next(self._ids)
        if last.get("type") == "function_call_output":
            output: dict[str, Any] = {
                "id": f"msg_up{n}", "type": "message", "role": "assistant", "status": "completed",
                "content": [{"type": "output_text", "text": f"native: sunny ({last['output']})",
                             "annotations": [], "logprobs": []}]}
        elif body.get("tools") and "weather" in str(last.get("content")):
            output = {"id": f"fc_up{n}", "type": "function_call", "status": "completed",
                      "call_id": f"call_up{n}", "name": "get_weather", "arguments": WEATHER_ARGS}
        else:
            content = last.get("content")
            text = content if isinstance(content, str) else " ".join(
                p.get("text", "") for p in content or ())
            output = {"id": f"msg_up{n}", "type": "message", "role": "assistant",
                      "status": "completed",
                      "content": [{"type": "output_text", "text": f"native: {text}",
                                   "annotations": [], "logprobs": []}]}
        response = {"id": f"resp_up{n}", "object": "response", "created_at": 1700000000,
                    "status": "completed", "model": f"{body['model']}-2025", "output": [output],
                    "previous_response_id": previous, "parallel_tool_calls": True,
                    "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools", []),
                    "usage": {"input_tokens": 21, "input_tokens_details": {"cached_tokens": 0},
                              "output_tokens": 9, "output_tokens_details": {"reasoning_tokens": 0},
                              "total_tokens": 30}}
        if body.get("store", True):
            self.stored[response["id"]] = response
        if not body.get("stream"):
            return web.json_response(response)
        created = {**response, "status": "in_progress", "output": [], "usage": None}
        events: list[dict[str, Any]] = [{"type": "response.created", "response": created},
                                        {"type": "response.in_progress", "response": created}]
        events.append({"type": "response.output_item.added", "output_index": 0,
                       "item": {**output, "status": "in_progress"}})
        if output["type"] == "message":
            text = output["content"][0]["text"]
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            events.append({"type": "response.content_part.added", "item_id": output["id"],
                           "output_index": 0, "content_index": 0, "part": part})
            events += [{"type": "response.output_text.delta", "item_id": output["id"],
                        "output_index": 0, "content_index": 0, "delta": piece, "logprobs": []}
                       for piece in (text[:7], text[7:])]
            events.append({"type": "response.output_text.done", "item_id": output["id"],
                           "output_index": 0, "content_index": 0, "text": text,
                           "logprobs": []})
            events.append({"type": "response.content_part.done", "item_id": output["id"],
                           "output_index": 0, "content_index": 0,
                           "part": output["content"][0]})
        events += [{"type": "response.output_item.done", "output_index": 0, "item": output},
                   {"type": "response.completed", "response": response}]
        for seq, event in enumerate(events):
            event["sequence_number"] = seq
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for event in events:  # one write each, as a paced upstream sends them
            await resp.write(_sse([event], named=True))
            await asyncio.sleep(0)
            if self.error_event and event["type"] == "response.output_text.delta":
                await resp.write(_sse([{"type": "error", "code": "server_error",
                                        "message": "The server had an error",
                                        "sequence_number": event["sequence_number"] + 1}],
                                      named=True))
                return resp
        return resp

    async def delete(self, request: web.Request) -> web.Response:
        await self._record(request)
        response_id = request.match_info["id"]
        if self.stored.pop(response_id, None) is None:
            return self._error(404, f"Response with id '{response_id}' not found.")
        self.deleted.append(response_id)
        return web.json_response({"id": response_id, "object": "response", "deleted": True})

    # --- legacy completions (native) -----------------------------------------------------

    async def completions(self, request: web.Request) -> web.StreamResponse:
        body = await self._record(request)
        prompt = body["prompt"]
        one = not isinstance(prompt, list) or all(isinstance(t, int) for t in prompt)
        prompts = [prompt] if one else prompt
        choices = [{"text": f" native completion of {p!r}", "index": i, "logprobs": None,
                    "finish_reason": "length"} for i, p in enumerate(prompts)]
        base = {"id": "cmpl-up", "object": "text_completion", "created": 1700000000,
                "model": body["model"]}
        usage = {"prompt_tokens": 4, "completion_tokens": 6, "total_tokens": 10}
        if not body.get("stream"):
            return web.json_response({**base, "choices": choices, "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for choice in choices:
            await resp.write(_sse([{**base, "choices": [choice]}], named=False))
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(_sse([{**base, "choices": [], "usage": usage}], named=False))
        await resp.write(b"data: [DONE]\n\n")
        return resp
