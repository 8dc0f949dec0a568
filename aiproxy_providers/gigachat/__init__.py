"""Sber GigaChat: OpenAI chat (and embeddings) over GigaChat's REST API v1.

GigaChat speaks nearly the OpenAI dialect (``translate`` bridges the rest: tools as the older
``functions`` shape, ``functions_state_id``, greedy decoding). What is its own:

* authorization is a short-lived access token from an OAuth endpoint, fetched with the
  project's ``client_id:client_secret`` (base64, as "Basic") and cached here until shortly
  before it expires (https://developers.sber.ru/docs/ru/gigachat/api/reference/rest/gigachat-api,
  https://developers.sber.ru/docs/en/gigachat/api/authorization);
* Sber's certificates chain to the Russian Trusted Root CA, which most systems do not trust:
  ``options.ca_bundle`` adds it for this provider's calls only (``auth``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import orjson

from aiproxy.provider import (
    Capability,
    ChatRequest,
    ChatResponse,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorKind,
    ModelConfig,
    Provider,
    StreamAssembler,
    UpstreamError,
    UpstreamFailure,
    UpstreamResponse,
    assistant_message,
    chat_completion,
    classify,
    embedding_encoding,
    embedding_texts,
    embeddings_answer,
    error_json,
    json_object,
    openai_tool_call,
    protocol_error,
    read_body,
)
from aiproxy_providers.gigachat.auth import (
    DEFAULT_OAUTH_URL,
    GigaChatOptions,
    authorization_key,
    ssl_setting,
)
from aiproxy_providers.gigachat.translate import (
    CHAT_PARAMETERS,
    EMBEDDING_PARAMETERS,
    ERRORS,
    GREEDY_TEMPERATURE,
    PROVIDER,
    call_id,
    chat_body,
    finish_reason,
    usage,
)

__all__ = ["DEFAULT_OAUTH_URL", "DEFAULT_URL", "GREEDY_TEMPERATURE", "GigaChatOptions",
           "GigaChatProvider"]

DEFAULT_URL = "https://gigachat.devices.sberbank.ru/api/v1"
# A token is replaced this long before its expiry, so no request goes out with a dying one.
REFRESH_MARGIN = 60.0
# Sber documents a 30-minute token lifetime; used only if an OAuth answer omits the expiry.
DEFAULT_TOKEN_LIFETIME = 30 * 60.0


def _tool_call(fc: Mapping[str, Any], state: Any) -> dict[str, Any]:
    """GigaChat's ``function_call`` (arguments an object) → an OpenAI tool call whose id keeps
    the answer's ``functions_state_id``."""
    return openai_tool_call(str(fc.get("name")), fc.get("arguments"), id=call_id(state))


class GigaChatProvider(Provider):
    """Sber GigaChat, with its OAuth token fetched once and shared by all requests."""

    plugin_api_version = 2
    capabilities = frozenset({Capability.CHAT, Capability.EMBEDDINGS})
    default_url = DEFAULT_URL
    options_type = GigaChatOptions
    chat_parameters = CHAT_PARAMETERS
    embedding_parameters = EMBEDDING_PARAMETERS

    def __init__(self, model: ModelConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(model, session)
        opts: GigaChatOptions = self.options
        self._auth_key = authorization_key(model, opts)
        self._ssl = ssl_setting(model.name, opts)
        # url: is the API base; an old config's full chat URL is accepted as well.
        base = self.url.rstrip("/").removesuffix("/chat/completions")
        self._chat_url = f"{base}/chat/completions"
        self._embeddings_url = f"{base}/embeddings"
        self._secrets = tuple(s for s in (self._auth_key, opts.client_secret, model.token) if s)
        self._token: str | None = None
        self._token_expires = 0.0  # Unix time
        # One OAuth call at a time: every request that finds no fresh token waits on it.
        self._token_lock = asyncio.Lock()
        #: Wall clock used for token expiry; tests replace it.
        self.clock: Callable[[], float] = time.time

    # --- access token -------------------------------------------------------------------

    async def _access_token(self, rejected: str | None = None) -> str:
        """A token valid for at least REFRESH_MARGIN more seconds, fetched if need be.

        ``rejected`` is a token upstream just refused: it is not handed out again.
        """
        token = self._token
        if token is not None and token != rejected and self._fresh():
            return token
        async with self._token_lock:
            # Whoever held the lock before us may have fetched one already.
            token = self._token
            if token is not None and token != rejected and self._fresh():
                return token
            token, self._token_expires = await self._fetch_token()
            self._token = token
            return token

    def _fresh(self) -> bool:
        return self.clock() < self._token_expires - REFRESH_MARGIN

    async def _fetch_token(self) -> tuple[str, float]:
        opts: GigaChatOptions = self.options
        headers = {
            "Authorization": f"Basic {self._auth_key}",
            "RqUID": str(uuid.uuid4()),  # required, a uuid4 per request
            "Content-Type": "application/x-www-form-urlencoded",
            "Accept": "application/json",
        }
        try:
            resp = await self._send(opts.oauth_url, urlencode({"scope": opts.scope}).encode(),
                                    headers)
        except UpstreamError as err:
            if err.kind.retryable:
                # Unreachable, busy or rate-limited: transient, and retried as such.
                raise UpstreamError(err.kind, f"GigaChat OAuth: {err.message}", status=err.status,
                                    code=err.code, retry_after=err.retry_after,
                                    upstream_status=err.upstream_status) from None
            # Whatever else the OAuth endpoint refuses is our configuration, not the client's.
            raise UpstreamError(ErrorKind.AUTH, f"GigaChat OAuth refused the credentials "
                                f"(HTTP {err.upstream_status}: {err.message})",
                                code=err.code, upstream_status=err.upstream_status) from None
        data = json_object(await read_body(resp, provider=PROVIDER), provider=PROVIDER,
                           what="the OAuth answer")
        # Sber documents {access_token, expires_at (ms)}; its English page also shows {tok, exp}.
        token = data.get("access_token", data.get("tok"))
        expires = data.get("expires_at", data.get("exp"))
        if not isinstance(token, str) or not token:
            raise UpstreamError(ErrorKind.AUTH, "GigaChat OAuth answered without an access token")
        if isinstance(expires, int | float) and not isinstance(expires, bool):
            expires_at = expires / 1000 if expires > 1e11 else float(expires)  # ms or seconds
        else:
            expires_at = self.clock() + DEFAULT_TOKEN_LIFETIME
        return token, expires_at

    # --- HTTP ---------------------------------------------------------------------------

    async def _send(self, url: str, body: bytes, headers: Mapping[str, str]
                    ) -> UpstreamResponse:
        try:
            return await self.send("POST", url, data=body, headers=headers, ssl=self._ssl)
        except UpstreamError as err:
            # send() raises "from None", but the aiohttp error is still the context.
            if isinstance(err.__context__, aiohttp.ClientConnectorCertificateError):
                host = urlsplit(url).hostname
                raise UpstreamError(
                    ErrorKind.CONNECTION,
                    f"{self.model.name}: the TLS certificate of {host} is not trusted; GigaChat's "
                    "certificates chain to the Russian Trusted Root CA: set options.ca_bundle "
                    "to its PEM file") from None
            raise

    async def _call(self, url: str, body: bytes, accept: str) -> UpstreamResponse:
        """POST to the API with a cached token; a 401 refreshes the token once and retries once."""
        token = await self._access_token()
        try:
            return await self._send(url, body, self._headers(token, accept))
        except UpstreamError as err:
            if err.upstream_status != 401:
                raise
        # Revoked or expired early: one new token, one more try.
        token = await self._access_token(rejected=token)
        try:
            return await self._send(url, body, self._headers(token, accept))
        except UpstreamError as err:
            if err.upstream_status == 401 and self._token == token:
                self._token = None  # the next request starts with a new token
            raise

    @staticmethod
    def _headers(token: str, accept: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {token}", "Content-Type": "application/json",
                "Accept": accept}


    def _scrub(self, text: str) -> str:
        """Upstream text with our credentials removed, in case an error ever echoes them: the
        configured ones (``redact``) and the OAuth access token of the moment."""
        text = self.redact(text)
        for secret in (*self._secrets, self._token):
            if secret:
                text = text.replace(secret, "[redacted]")
        return text

    def error_from_response(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamError:
        # GigaChat answers {"status": 401, "message": "..."}; OAuth {"code": 7, "message": "..."}.
        message = ""
        codes: tuple[str, ...] = ()
        parsed = error_json(body)
        if isinstance(parsed, dict):
            err = parsed.get("error")
            source = err if isinstance(err, dict) else parsed
            message = str(source.get("message") or "")
            if source.get("code") is not None:
                codes = (str(source["code"]),)
        message = f"GigaChat: {self._scrub(message) or f'upstream answered HTTP {status}'}"
        return classify(UpstreamFailure(status, message, codes, headers=headers), ERRORS)

    # --- chat ---------------------------------------------------------------------------

    def _chat_body(self, request: ChatRequest, stream: bool) -> bytes:
        return orjson.dumps(chat_body(request.body, self.upstream_model, stream=stream))

    async def chat(self, request: ChatRequest) -> ChatResponse:
        body = self._chat_body(request, stream=False)
        resp = await self._call(self._chat_url, body, "application/json")
        data = json_object(await read_body(resp, provider=PROVIDER), provider=PROVIDER)
        raw_choices = data.get("choices")
        if not isinstance(raw_choices, list) or not raw_choices:
            raise protocol_error("GigaChat answered without choices")
        choices = []
        for k, choice in enumerate(raw_choices):
            msg = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(msg, dict):
                raise protocol_error("GigaChat answered a choice without a message")
            fc = msg.get("function_call")
            calls = [_tool_call(fc, msg.get("functions_state_id"))] \
                if isinstance(fc, dict) and fc.get("name") else []
            choices.append({"index": choice.get("index", k),
                            "message": assistant_message(msg.get("content") or "", calls),
                            "finish_reason": finish_reason(choice.get("finish_reason"),
                                                           bool(calls))})
        created = data.get("created")
        return ChatResponse(chat_completion(
            self.model.name, choices, usage(data.get("usage")),
            created=int(created) if isinstance(created, int | float) and created else None))

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        body = self._chat_body(request, stream=True)
        resp = await self._call(self._chat_url, body, "text/event-stream")
        out = StreamAssembler(self.model.name, include_usage=request.include_usage,
                              provider=PROVIDER)
        finish: str | None = None
        state: Any = None  # the functions_state_id, for the tool call's id
        async with out.read(resp, end="[DONE]") as events:
            async for event in events:
                data = event.data
                out.usage = usage(data.get("usage")) or out.usage
                choices = data.get("choices")
                if not isinstance(choices, list):
                    if data.get("message"):  # an error reported inside the stream
                        status = data.get("status")
                        raise classify(UpstreamFailure(
                            status if isinstance(status, int) and status >= 400 else 500,
                            f"GigaChat: {self._scrub(str(data['message']))}"), ERRORS)
                    raise protocol_error("GigaChat sent a stream event without choices")
                for choice in choices[:1]:  # n is 1
                    delta = choice.get("delta") if isinstance(choice, dict) else None
                    delta = delta if isinstance(delta, dict) else {}
                    # It comes with the function call's delta; an earlier one counts too.
                    state = delta.get("functions_state_id") or state
                    content = delta.get("content")
                    chunks = out.text(content) if isinstance(content, str) else out.start()
                    fc = delta.get("function_call")
                    if isinstance(fc, dict) and fc.get("name"):
                        # GigaChat sends a call whole, in one event.
                        chunks += out.tool_call(str(fc["name"]), fc.get("arguments"),
                                                id=call_id(state))
                    for chunk in chunks:
                        yield chunk
                    if choice.get("finish_reason"):
                        finish = finish_reason(choice["finish_reason"], out.has_tool_calls())
        for chunk in out.end(finish or "stop"):
            yield chunk

    # --- embeddings ---------------------------------------------------------------------

    async def embeddings(self, request: EmbeddingsRequest) -> EmbeddingsResponse:
        body = request.body
        EMBEDDING_PARAMETERS.check(body)
        texts = embedding_texts(body, provider=PROVIDER)
        encoding = embedding_encoding(body)
        payload = orjson.dumps({"model": self.upstream_model, "input": texts})
        resp = await self._call(self._embeddings_url, payload, "application/json")
        data = json_object(await read_body(resp, provider=PROVIDER), provider=PROVIDER)
        items = data.get("data")
        if not isinstance(items, list) or len(items) != len(texts):
            raise protocol_error("GigaChat answered embeddings without one for each input")
        if all(isinstance(item, dict) and isinstance(item.get("index"), int) for item in items):
            items = sorted(items, key=lambda item: item["index"])  # input order
        vectors, prompt_tokens = [], 0
        for item in items:
            vector = item.get("embedding") if isinstance(item, dict) else None
            if not isinstance(vector, list):
                raise protocol_error("GigaChat answered an embedding without a vector")
            vectors.append(vector)
            item_usage = item.get("usage")
            if isinstance(item_usage, dict):
                prompt_tokens += int(item_usage.get("prompt_tokens") or 0)
        return EmbeddingsResponse(embeddings_answer(vectors, model=self.model.name,
                                                    prompt_tokens=prompt_tokens,
                                                    encoding=encoding))

    async def close(self) -> None:
        self._token = None
