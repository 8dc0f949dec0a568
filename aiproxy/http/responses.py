"""The Responses API: ``POST /v1/responses`` and the stored responses (``GET``/``DELETE
/v1/responses/{id}``, ``GET /v1/responses/{id}/input_items``).

One router call per request, as chat: each candidate passes the request through when its
upstream serves the Responses API itself, and translates it through chat otherwise.
Reference: https://platform.openai.com/docs/api-reference/responses
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

import attrs
import orjson
from aiohttp import web

from aiproxy.config import Settings
from aiproxy.errors import ProxyError
from aiproxy.frontdoor.native import native_responses
from aiproxy.frontdoor.responses import (
    BrokenChain,
    ResponseEvents,
    ResponseStore,
    Stored,
    StoreUnavailable,
    Turn,
    chat_usage,
    from_chat,
    make_store,
    parse_request,
    to_chat,
    translate_stream,
)
from aiproxy.frontdoor.responses.convert import next_drop
from aiproxy.frontdoor.responses.passthrough import native_body
from aiproxy.frontdoor.responses.store import valid_id
from aiproxy.generation import Generation
from aiproxy.http.body import read_json
from aiproxy.http.chat import JSON_HEADERS, SSE_HEADERS, route_headers
from aiproxy.http.state import METRICS, Trace, generation_of, start_stream, trace_of
from aiproxy.http.usage import LEDGER
from aiproxy.observability import get_logger
from aiproxy.provider import Capability, ErrorKind, UpstreamError
from aiproxy.routing import ClientGone, Route, estimate_tokens

__all__ = ["RESPONSE_STORE", "add_routes", "owner_of"]

RESPONSE_STORE = web.AppKey("response_store", ResponseStore)
log = get_logger("aiproxy.responses")
T = TypeVar("T")


def owner_of(trace: Trace) -> str:
    """Whose responses a request sees: its client key's, or the ``AUTH_TOKEN``'s."""
    return f"key:{trace.grant.key.name}" if trace.grant is not None else "token"


def _store(request: web.Request) -> ResponseStore:
    return request.app[RESPONSE_STORE]


def _response_id(request: web.Request) -> str:
    """The path's response id; 404 for one that cannot be an id (it never reaches a key)."""
    response_id = request.match_info["id"]
    if not valid_id(response_id):
        raise _not_found(response_id[:64])
    return response_id


def _not_found(response_id: str) -> ProxyError:
    return ProxyError(404, f"Response with id {response_id!r} not found.",
                      code="response_not_found", param="response_id")


async def _stored(request: web.Request, operation: str, call: Awaitable[T]) -> T:
    """A store call, its outage the client's 503 (counted by ``operation``)."""
    try:
        return await call
    except StoreUnavailable as exc:
        request.app[METRICS].responses_store_errors.labels(operation).inc()
        raise ProxyError(503, f"the response store is unavailable: {exc}",
                         code="store_unavailable", retry_after=1.0) from None


@attrs.frozen
class _Answer:
    response: dict[str, Any]
    native: bool


async def create(request: web.Request) -> web.StreamResponse:
    body, raw = await read_json(request)
    req = parse_request(body, raw)
    trace = trace_of(request)
    trace.requested = req.model
    generation = generation_of(request)
    store, owner = _store(request), owner_of(trace)
    chain: list[Stored] = []
    if req.previous_id:
        try:
            if not valid_id(req.previous_id):
                raise BrokenChain(req.previous_id[:64])
            chain = await _stored(request, "read", store.chain(owner, req.previous_id))
        except BrokenChain as exc:
            # 400, not 404, as OpenAI answers it (clients such as Codex recover from a lost
            # conversation on this code): the request names it, the path does not.
            raise ProxyError(400, f"Previous response with id {exc.missing!r} not found.",
                             code="previous_response_not_found",
                             param="previous_response_id") from None
    items, resolved = await _resolve(request, owner, req.input, chain)
    native_only = req.native_only or (
        "references to items this proxy does not hold ('item_reference')"
        if any(i.get("type") == "item_reference" for i in items) else None)
    turn = Turn(req, tuple(i for record in chain for i in record.items()) + tuple(items))
    # What the upstream is sent: the conversation, not just this request's bytes.
    length = len(raw) + (len(orjson.dumps(turn.context)) if chain else 0)
    if native_only:
        _require_native(generation, trace, req.model, length, native_only)
    estimate = estimate_tokens(length, {"max_tokens": body.get("max_output_tokens")})
    router = generation.router

    def needs_native(route: Route) -> UpstreamError:
        # upstream_status 404: the router moves on to a candidate that may pass it through.
        return UpstreamError(ErrorKind.BAD_REQUEST, f"{native_only} need an upstream that "
                             f"serves the Responses API itself; {route.name!r} translates to "
                             "chat", status=400, upstream_status=404, code="unsupported_parameter")

    if not req.stream:
        async def call(route: Route) -> _Answer:
            native = native_responses(route.provider)
            if native is not None:
                return _Answer(await native.responses(native_body(turn, chain, route.name,
                                                                  resolved)), True)
            if native_only:
                raise needs_native(route)
            return _Answer(from_chat(turn, await _chat(route, turn), route.name), False)

        served = await router.serve(trace, trace.grant, req.model, Capability.CHAT, length,
                                    estimate, call,
                                    lambda a: chat_usage(a.response.get("usage")))
        answer = served.result.response
        answer["model"] = served.route.name
        await _keep(request, owner, turn, answer, items, served.route.name,
                    served.result.native)
        return web.Response(body=orjson.dumps(answer), headers={**JSON_HEADERS,
                                                                **route_headers(served)})

    def open_call(route: Route) -> AsyncIterator[dict[str, Any]]:
        native = native_responses(route.provider)
        if native is not None:
            return native.responses_stream(native_body(turn, chain, route.name, resolved))
        if native_only:
            raise needs_native(route)
        return translate_stream(turn, _chat_chunks(route, turn), route.name)

    lens = ResponseEvents(req.previous_id)
    stream = trace.open_stream = await router.open_stream(
        trace, trace.grant, req.model, Capability.CHAT, length, estimate, open_call, lens)
    response = await start_stream(request, {**SSE_HEADERS, **route_headers(stream.served)})

    async def emit(event: dict[str, Any]) -> None:
        await _write(response, _sse(event))

    try:
        err = await stream.pump(emit)
        if err is not None:
            await _write(response, b"".join(_sse(e) for e in lens.failure(err)))
        await response.write_eof()
    except (ClientGone, ConnectionError):
        stream.client_left()
        return response
    if lens.final is not None:
        route = stream.served.route
        await _keep(request, owner, turn, lens.final, items, route.name,
                    native_responses(route.provider) is not None)
    return response


def _sse(event: dict[str, Any]) -> bytes:
    return b"event: " + str(event.get("type")).encode() + b"\ndata: " + orjson.dumps(
        event) + b"\n\n"


async def _write(response: web.StreamResponse, data: bytes) -> None:
    try:
        await response.write(data)
    except ConnectionError:
        raise ClientGone from None


async def _resolve(request: web.Request, owner: str, items: Sequence[dict[str, Any]],
                   chain: Sequence[Stored]) -> tuple[list[dict[str, Any]],
                                                     dict[str, dict[str, Any]]]:
    """``items`` with each ``item_reference`` replaced by the item it names (from the
    conversation, else any of the owner's stored responses); the ones found, by id. An unknown
    reference stays: an upstream that stores responses itself may know it."""
    resolved: dict[str, dict[str, Any]] = {}
    if not any(i.get("type") == "item_reference" for i in items):
        return list(items), resolved
    known = {i["id"]: i for record in chain for i in record.items()
             if isinstance(i.get("id"), str)}
    out = []
    for item in items:
        if item.get("type") == "item_reference":
            found = known.get(item["id"]) or await _stored(
                request, "read", _store(request).find_item(owner, item["id"]))
            if found is not None:
                resolved[item["id"]] = found
                item = found
        out.append(item)
    return out, resolved


def _require_native(generation: Generation, trace: Trace, name: str, length: int,
                    reason: str) -> None:
    """400 at once when no candidate for ``name`` could pass the request through."""
    grant = trace.grant
    if grant is not None:
        grant.check(name)
    allowed = None if grant is None or grant.everything else grant.allows
    plan = generation.router.planner.plan(name, length, Capability.CHAT, allowed)
    if not any(native_responses(route.provider) is not None for route in plan):
        raise ProxyError(400, f"{reason} need an upstream that serves the Responses API "
                         f"itself, and no candidate for {name!r} does (an OpenAI model, or "
                         "options.responses_api: true on an OpenAI-compatible one); "
                         "translated to chat, only function tools and message, "
                         "function_call, function_call_output and reasoning items are "
                         "served", code="unsupported_parameter", param="tools")


async def _chat(route: Route, turn: Turn) -> dict[str, Any]:
    """One chat answer for ``turn``, dropping the oldest items while the upstream finds the
    context too long and the client allows it (``truncation: auto``)."""
    dropped = 0
    while True:
        try:
            return (await route.provider.chat(to_chat(turn, stream=False, drop=dropped))).data
        except UpstreamError as err:
            more = (next_drop(turn, dropped) if err.kind is ErrorKind.CONTEXT_LENGTH
                    and turn.request.truncation else None)
            if more is None:
                raise
            dropped = more


async def _chat_chunks(route: Route, turn: Turn) -> AsyncIterator[dict[str, Any]]:
    """The chat stream for ``turn``, truncated as :func:`_chat` does until its first chunk."""
    dropped = 0
    while True:
        chunks = aiter(route.provider.stream(to_chat(turn, stream=True, drop=dropped)))
        try:
            first = await anext(chunks)
        except UpstreamError as err:
            await _aclose(chunks)
            more = (next_drop(turn, dropped) if err.kind is ErrorKind.CONTEXT_LENGTH
                    and turn.request.truncation else None)
            if more is None:
                raise
            dropped = more
            continue
        except BaseException:
            await _aclose(chunks)
            raise
        break
    try:
        yield first
        async for chunk in chunks:
            yield chunk
    finally:
        await _aclose(chunks)


async def _aclose(chunks: AsyncIterator[dict[str, Any]]) -> None:
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


async def _keep(request: web.Request, owner: str, turn: Turn, answer: dict[str, Any],
                items: list[dict[str, Any]], model: str, native: bool) -> None:
    """Store the answer (``store: true``). The answer has gone or goes out either way: a store
    outage now only costs the continuation, so it is logged and counted, not answered."""
    if not turn.request.store:
        return
    if turn.request.previous_id:
        # Passed through with the conversation as items, the upstream's answer has no link.
        answer["previous_response_id"] = turn.request.previous_id
    record = Stored(owner, answer, items, model, upstream_stored=native)
    try:
        await _store(request).put(record)
    except StoreUnavailable as exc:
        request.app[METRICS].responses_store_errors.labels("store").inc()
        log.warning("response_not_stored", response_id=record.id, error=str(exc))


async def retrieve(request: web.Request) -> web.Response:
    response_id = _response_id(request)
    if request.query.get("stream") in ("true", "1"):
        raise ProxyError(400, "streaming a stored response again is not supported; retrieve it "
                         "whole", param="stream")
    record = await _stored(request, "read", _store(request).get(owner_of(trace_of(request)),
                                                                 response_id))
    if record is None:
        raise _not_found(response_id)
    return web.Response(body=orjson.dumps(record.response), headers=JSON_HEADERS)


async def delete(request: web.Request) -> web.Response:
    response_id = _response_id(request)
    trace = trace_of(request)
    record = await _stored(request, "delete", _store(request).delete(owner_of(trace),
                                                                     response_id))
    if record is None:
        raise _not_found(response_id)
    if record.upstream_stored and record.origin:
        await _delete_upstream(request, trace, record.origin, response_id)
    return web.Response(body=orjson.dumps({"id": response_id, "object": "response",
                                           "deleted": True}), headers=JSON_HEADERS)


async def _delete_upstream(request: web.Request, trace: Trace, origin: str,
                           response_id: str) -> None:
    """Delete the upstream's own copy too, through the router like any call to that model.
    Ours is gone already; a failure here is logged (the upstream keeps its copy until its
    own retention ends)."""

    async def call(route: Route) -> None:
        native = native_responses(route.provider)
        if route.name != origin or native is None:
            raise UpstreamError(ErrorKind.BAD_REQUEST, "not the model that stored it",
                                upstream_status=404)
        await native.delete_response(response_id)

    try:
        await generation_of(request).router.serve(trace, trace.grant, origin, Capability.CHAT,
                                                  0, 0, call, lambda _: None)
    except ProxyError as exc:
        log.warning("upstream_delete_failed", model=origin, response_id=response_id,
                    status=exc.status, error=exc.message)


async def input_items(request: web.Request) -> web.Response:
    """A page of the response's own input items (``limit`` 1-100, default 20; ``order``
    ``desc`` by default; ``after`` an item id): the reference's list shape."""
    response_id = _response_id(request)
    query = request.query
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        limit = 0
    if not 1 <= limit <= 100:
        raise ProxyError(400, "'limit' must be an integer from 1 to 100", param="limit")
    order = query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ProxyError(400, "'order' must be 'asc' or 'desc'", param="order")
    record = await _stored(request, "read", _store(request).get(owner_of(trace_of(request)),
                                                                 response_id))
    if record is None:
        raise _not_found(response_id)
    items = list(record.input) if order == "asc" else list(reversed(record.input))
    after = query.get("after")
    if after:
        ids = [i.get("id") for i in items]
        items = items[ids.index(after) + 1:] if after in ids else []
    page = items[:limit]
    body = {"object": "list", "data": page,
            "first_id": page[0].get("id") if page else None,
            "last_id": page[-1].get("id") if page else None, "has_more": len(items) > limit}
    return web.Response(body=orjson.dumps(body), headers=JSON_HEADERS)


def add_routes(app: web.Application, settings: Settings) -> None:
    """The routes, with and without ``/v1``, and the store they share: Redis with
    ``REDIS_URL``; else the usage ledger's database when it has one (``DATABASE_URL``, which
    the CLI always sets: by default an SQLite file beside the config); else memory (an app
    built without a database, whose ledger is in memory too)."""
    app[RESPONSE_STORE] = make_store(
        settings.redis_url, prefix=settings.redis_prefix,
        ttl=settings.responses_store_ttl, max_bytes=settings.responses_store_max_bytes,
        database=app[LEDGER].store if settings.database_url else None)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        # Registered after the ledger's lifecycle (make_app adds that first), so the database
        # is open when the store starts and still open when it stops.
        store = app[RESPONSE_STORE]
        await store.start()
        try:
            yield
        finally:
            await store.close()

    app.cleanup_ctx.append(lifecycle)
    for prefix in ("", "/v1"):
        app.router.add_post(f"{prefix}/responses", create)
        app.router.add_get(f"{prefix}/responses/{{id}}", retrieve)
        app.router.add_delete(f"{prefix}/responses/{{id}}", delete)
        app.router.add_get(f"{prefix}/responses/{{id}}/input_items", input_items)

