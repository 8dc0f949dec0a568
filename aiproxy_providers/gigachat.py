"""Sber GigaChat: OpenAI chat (and embeddings) over GigaChat's REST API v1.

GigaChat speaks nearly the OpenAI dialect, with three differences this plugin bridges:

* authorization is a short-lived access token from an OAuth endpoint, fetched with the
  project's ``client_id:client_secret`` (base64, as "Basic") and cached here until shortly
  before it expires;
* tools are the older OpenAI ``functions``/``function_call`` shape, with ``arguments`` as a JSON
  object instead of a string, one call per message, and results sent back as role ``function``;
* Sber's certificates chain to the Russian Trusted Root CA, which most systems do not trust:
  ``options.ca_bundle`` adds it for this provider's calls only.

Sber's documentation, which the behaviour below follows:

* OAuth: https://developers.sber.ru/docs/ru/gigachat/api/reference/rest/gigachat-api and
  https://developers.sber.ru/docs/en/gigachat/api/authorization
* chat: https://developers.sber.ru/docs/ru/gigachat/api/reference/rest/post-chat
* functions: https://developers.sber.ru/docs/ru/gigachat/api/function-calling and
  https://developers.sber.ru/docs/ru/gigachat/guides/functions/function-calling-modes
* streaming: https://developers.sber.ru/docs/en/gigachat/api/response-token-streaming
* errors: https://developers.sber.ru/docs/ru/gigachat/api/errors-description
* structured output (``response_format``) and reasoning (``reasoning_effort``), which the chat
  reference does not list yet: the official SDK, https://github.com/ai-forever/gigachat
  (``src/gigachat/models/chat.py``, ``models/response_format.py``), and the request it records
  against the live API (``tests/integration/cassettes/test_chat_response_format_json_schema``)
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import attrs
import orjson
import structlog

from aiproxy.provider import (
    Capability,
    ChatRequest,
    ChatResponse,
    ConfigError,
    EmbeddingsRequest,
    EmbeddingsResponse,
    ErrorKind,
    ModelConfig,
    Provider,
    StreamChunks,
    UpstreamError,
    completion_id,
    embedding_base64,
    end_response,
    error_from_status,
    iter_sse,
    tool_call_id,
)

__all__ = ["GigaChatOptions", "GigaChatProvider"]

DEFAULT_URL = "https://gigachat.devices.sberbank.ru/api/v1"
DEFAULT_OAUTH_URL = "https://ngw.devices.sberbank.ru:9443/api/v2/oauth"
# PERS: individuals; B2B: businesses paying in advance; CORP: businesses paying afterwards.
SCOPES = ("GIGACHAT_API_PERS", "GIGACHAT_API_B2B", "GIGACHAT_API_CORP")
# A token is replaced this long before its expiry, so no request goes out with a dying one.
REFRESH_MARGIN = 60.0
# Sber documents a 30-minute token lifetime; used only if an OAuth answer omits the expiry.
DEFAULT_TOKEN_LIFETIME = 30 * 60.0

# post-chat, temperature: "from 0 to 0.001" resets temperature and top_p to the most
# deterministic answer, and 0 itself is refused (exclusiveMinimum). Half-way, clear of both ends.
GREEDY_TEMPERATURE = 0.0005

_REASONING_EFFORTS = {"minimal": "low", "low": "low", "medium": "medium", "high": "high",
                      "xhigh": "high", "max": "high"}

_FINISH_REASONS = {
    "stop": "stop",
    "length": "length",
    "function_call": "tool_calls",
    "blacklist": "content_filter",  # GigaChat's own moderation refused the topic
}

_log = structlog.get_logger(__name__)


def _check_scope(inst: object, attribute: attrs.Attribute[Any], value: str) -> None:
    if value not in SCOPES:
        raise ValueError(f"scope: must be one of {', '.join(SCOPES)}, got {value!r}")


def _to_bool(value: Any) -> bool:
    # Typed Any because the config converter hands booleans to its integer hook; a "${VAR}"
    # substitution gives a string, so "true"/"false" are accepted too. Anything else is an error:
    # a typo must never switch TLS verification off.
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise ValueError(f"insecure_skip_verify: expected true or false, got {value!r}")


@attrs.frozen
class GigaChatOptions:
    """``options:`` of a GigaChat model."""

    # Alternative to ``token: "client_id:client_secret"``.
    client_id: str | None = None
    client_secret: str | None = attrs.field(default=None, repr=False)
    # The old proxy always sent CORP: the default keeps its configs working unchanged.
    scope: str = attrs.field(default="GIGACHAT_API_CORP", validator=_check_scope)
    oauth_url: str = DEFAULT_OAUTH_URL
    # A PEM file of extra CAs (Sber's Russian Trusted Root CA) trusted for this provider only.
    ca_bundle: str | None = None
    # Development only: no certificate check at all. Never the default.
    insecure_skip_verify: Any = attrs.field(default=False, converter=_to_bool)


def _bad_request(param: str, message: str) -> UpstreamError:
    return UpstreamError(ErrorKind.BAD_REQUEST, message, status=400,
                         code="unsupported_parameter", param=param)


def _protocol(message: str) -> UpstreamError:
    return UpstreamError(ErrorKind.PROTOCOL, message)


def _authorization_key(model: ModelConfig, opts: GigaChatOptions) -> str:
    """The base64 "authorization key" Sber's OAuth endpoint takes as Basic credentials."""
    name = model.name
    if opts.client_id or opts.client_secret:
        if not (opts.client_id and opts.client_secret):
            raise ConfigError([f"{name}: options: client_id and client_secret go together"])
        if model.token:
            raise ConfigError([f"{name}: give either token: or options client_id/client_secret, "
                               "not both"])
        pair = f"{opts.client_id}:{opts.client_secret}"
    elif model.token:
        token = model.token.strip()
        if ":" not in token:
            # The personal area hands out the key ready-made (base64 of id:secret); base64 has
            # no colon, so the two forms cannot be confused.
            try:
                base64.b64decode(token, validate=True)
            except ValueError:
                raise ConfigError([f"{name}: token: expected \"client_id:client_secret\" or the "
                                   "base64 authorization key from Sber's personal area"]) from None
            return token
        pair = token
    else:
        raise ConfigError([f"{name}: token: required (\"client_id:client_secret\" or the "
                           "authorization key), or options client_id and client_secret"])
    return base64.b64encode(pair.encode()).decode("ascii")


def _ssl_setting(name: str, opts: GigaChatOptions) -> ssl.SSLContext | bool:
    """What aiohttp's ``ssl=`` gets on this provider's calls (and on no one else's)."""
    if opts.ca_bundle and opts.insecure_skip_verify:
        raise ConfigError([f"{name}: options: ca_bundle and insecure_skip_verify exclude each "
                           "other"])
    if opts.insecure_skip_verify:
        _log.warning("gigachat_tls_verification_disabled", model=name)
        return False
    if not opts.ca_bundle:
        return True
    # The system's CAs stay trusted (an oauth_url behind a corporate proxy may need them);
    # the bundle is added to them.
    ctx = ssl.create_default_context()
    try:
        ctx.load_verify_locations(cafile=opts.ca_bundle)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError([f"{name}: options.ca_bundle: cannot load {opts.ca_bundle}: "
                           f"{getattr(exc, 'strerror', None) or exc}"]) from None
    return ctx


def _text(content: Any, param: str) -> str:
    """OpenAI message content (a string or text parts) as the plain string GigaChat takes."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise _bad_request(param, f"{param}: expected a string or a list of parts")
    texts = []
    for j, part in enumerate(content):
        if isinstance(part, dict) and part.get("type") == "text":
            texts.append(str(part.get("text") or ""))
        else:
            # GigaChat reads images only as files uploaded to its own storage (attachments).
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise _bad_request(f"{param}[{j}]", f"GigaChat takes text content only; "
                               f"{kind!r} parts are not supported")
    return "\n".join(texts)


def _arguments(value: Any, param: str) -> dict[str, Any]:
    """OpenAI tool-call arguments (a JSON string) as the object GigaChat expects."""
    if isinstance(value, dict):
        return value
    if value is None or (isinstance(value, str) and not value.strip()):
        return {}
    try:
        parsed = orjson.loads(value) if isinstance(value, str | bytes) else None
    except orjson.JSONDecodeError:
        parsed = None
    if not isinstance(parsed, dict):
        raise _bad_request(param, f"{param}: tool call arguments must be a JSON object")
    return parsed


def _function_result(content: Any, param: str) -> str:
    # GigaChat wants "a valid JSON object" as a function result (post-chat, role function);
    # OpenAI tools may answer anything, so other results are wrapped as {"result": ...}.
    text = _text(content, param)
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return orjson.dumps({"result": text}).decode()
    return text if isinstance(parsed, dict) else orjson.dumps({"result": parsed}).decode()


def _messages(messages: Any) -> list[dict[str, Any]]:
    """OpenAI messages → GigaChat messages."""
    if not isinstance(messages, list) or not messages:
        raise _bad_request("messages", "messages: expected a non-empty list")
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool_call_id → function name, for role "function" messages
    i = 0
    while i < len(messages):
        msg = messages[i]
        if not isinstance(msg, dict):
            raise _bad_request(f"messages[{i}]", f"messages[{i}]: expected an object")
        role = msg.get("role")
        param = f"messages[{i}]"
        if role in ("system", "developer", "user"):
            out.append({"role": "user" if role == "user" else "system",
                        "content": _text(msg.get("content"), f"{param}.content")})
        elif role == "assistant":
            calls = msg.get("tool_calls") or []
            if not calls and isinstance(msg.get("function_call"), dict):
                calls = [{"function": msg["function_call"]}]  # OpenAI's legacy shape
            content = _text(msg.get("content"), f"{param}.content")
            if not calls:
                out.append({"role": "assistant", "content": content})
                i += 1
                continue
            # GigaChat makes one call per message. Parallel calls (from another model, before a
            # fallback) become alternating call/result pairs, the order GigaChat's history has.
            k = i + 1
            while k < len(messages) and isinstance(messages[k], dict) \
                    and messages[k].get("role") in ("tool", "function"):
                k += 1
            results: dict[str, int] = {}  # tool_call_id → index of its result
            for index in range(i + 1, k):
                results.setdefault(messages[index].get("tool_call_id") or "", index)
            placed: set[int] = set()
            for j, call in enumerate(calls):
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not fn.get("name"):
                    raise _bad_request(f"{param}.tool_calls[{j}]",
                                       "a tool call needs a function name")
                name = str(fn["name"])
                arguments = _arguments(fn.get("arguments"),
                                       f"{param}.tool_calls[{j}].function.arguments")
                assistant: dict[str, Any] = {"role": "assistant",
                                             "content": content if j == 0 else "",
                                             "function_call": {"name": name,
                                                               "arguments": arguments}}
                call_id = call.get("id")
                state = _state_from_call_id(call_id)
                if state is not None:
                    # The answer's functions_state_id, kept in the call id (see _call_id).
                    assistant["functions_state_id"] = state
                out.append(assistant)
                if call_id:
                    names[call_id] = name
                    if call_id in results:
                        index = results[call_id]
                        out.append(_function_message(messages[index], index, names))
                        placed.add(index)
            for index in range(i + 1, k):
                if index not in placed:
                    out.append(_function_message(messages[index], index, names))
            i = k
            continue
        elif role in ("tool", "function"):
            out.append(_function_message(msg, i, names))
        else:
            raise _bad_request(f"{param}.role", f"{param}.role: unsupported role {role!r}")
        i += 1
    return out


def _function_message(msg: Mapping[str, Any], i: int, names: Mapping[str, str]) -> dict[str, Any]:
    name = msg.get("name") or names.get(msg.get("tool_call_id") or "")
    if not name:
        raise _bad_request(f"messages[{i}].tool_call_id", f"messages[{i}]: a tool result must "
                           "answer a tool call of an earlier assistant message")
    return {"role": "function", "name": name,
            "content": _function_result(msg.get("content"), f"messages[{i}].content")}


def _functions(body: Mapping[str, Any]) -> tuple[list[dict[str, Any]], Any]:
    """``tools``/``tool_choice`` (or legacy ``functions``/``function_call``) → GigaChat's."""
    functions: list[dict[str, Any]] = []
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise _bad_request("tools", "tools: expected a list")
        for j, tool in enumerate(tools):
            if not isinstance(tool, dict) or tool.get("type", "function") != "function" \
                    or not isinstance(tool.get("function"), dict):
                raise _bad_request(f"tools[{j}]", "GigaChat takes function tools only")
            functions.append(_function_description(tool["function"], f"tools[{j}].function"))
    elif body.get("functions"):
        legacy = body["functions"]
        if not isinstance(legacy, list):
            raise _bad_request("functions", "functions: expected a list")
        for j, fn in enumerate(legacy):
            functions.append(_function_description(fn, f"functions[{j}]"))
    choice = body.get("tool_choice", body.get("function_call"))
    if not functions:
        return functions, "none" if choice == "none" else None
    if choice is None or choice == "auto":
        # OpenAI's default with tools is auto; say so rather than rely on GigaChat's default.
        return functions, "auto"
    if choice == "none":
        return functions, "none"
    if choice == "required":
        # GigaChat can force a named function only; with one tool that is the same thing.
        if len(functions) == 1:
            return functions, {"name": functions[0]["name"]}
        raise _bad_request("tool_choice", "GigaChat cannot require \"some\" tool: name one "
                           "({\"type\": \"function\", \"function\": {\"name\": ...}})")
    if isinstance(choice, dict):
        fn = choice.get("function") if "function" in choice else choice
        if isinstance(fn, dict) and fn.get("name"):
            return functions, {"name": str(fn["name"])}
    raise _bad_request("tool_choice", f"tool_choice: unsupported value {choice!r}")


def _function_description(fn: Any, param: str) -> dict[str, Any]:
    if not isinstance(fn, dict) or not fn.get("name"):
        raise _bad_request(param, f"{param}: a function needs a name")
    out: dict[str, Any] = {"name": fn["name"]}
    if fn.get("description"):
        out["description"] = fn["description"]
    # GigaChat expects a parameters schema even for a function without arguments.
    out["parameters"] = fn.get("parameters") or {"type": "object", "properties": {}}
    return out


# GigaChat answers a function call with a `functions_state_id` and wants it back on that
# assistant message in the next request (post-chat, messages[].functions_state_id). OpenAI
# clients keep nothing but the tool call's id across turns, so the state travels inside it:
# "call_gsu" + the UUID's 32 hex digits (40 characters, the most OpenAI accepts in a tool call id,
# so the history can still fall back to an OpenAI model), or, for a state that is not a UUID in
# canonical form, "call_gsb" + its UTF-8 in unpadded base64url. Both use only [A-Za-z0-9_-].
_STATE_UUID = "call_gsu"
_STATE_TEXT = "call_gsb"
_HEX32 = frozenset("0123456789abcdef")


def _call_id(state: Any) -> str:
    """The OpenAI tool call id for a GigaChat function call (which has no id of its own)."""
    if not isinstance(state, str) or not state:
        return tool_call_id()
    try:
        if str(uuid.UUID(state)) == state:
            return _STATE_UUID + uuid.UUID(state).hex
    except ValueError:
        pass
    return _STATE_TEXT + base64.urlsafe_b64encode(state.encode()).decode().rstrip("=")


def _state_from_call_id(call_id: Any) -> str | None:
    """The ``functions_state_id`` a tool call id made by :func:`_call_id` carries, if any."""
    if not isinstance(call_id, str):
        return None
    body = call_id[len(_STATE_UUID):]
    if call_id.startswith(_STATE_UUID) and len(body) == 32 and set(body) <= _HEX32:
        return str(uuid.UUID(hex=body))
    if call_id.startswith(_STATE_TEXT):
        encoded = call_id[len(_STATE_TEXT):]
        try:
            state = base64.b64decode(encoded + "=" * (-len(encoded) % 4), altchars=b"-_",
                                     validate=True).decode()
        except ValueError:  # not base64url, or not UTF-8 (UnicodeDecodeError is a ValueError)
            return None
        return state or None
    return None


def _tool_call(fc: Mapping[str, Any], state: Any = None) -> dict[str, Any]:
    """GigaChat's ``function_call`` (arguments an object) → an OpenAI tool call whose id keeps
    the answer's ``functions_state_id``."""
    args = fc.get("arguments")
    arguments = args if isinstance(args, str) else orjson.dumps(args or {}).decode()
    return {"id": _call_id(state), "type": "function",
            "function": {"name": str(fc.get("name")), "arguments": arguments}}


def _response_format(fmt: Any) -> dict[str, Any] | None:
    """OpenAI ``response_format`` → GigaChat's; None for plain text.

    GigaChat takes ``{"type": "json_schema", "schema": <JSON Schema>, "strict"?: bool}``
    (the schema at the top level, as the official SDK sends it: ai-forever/gigachat
    ``models/response_format.py``), where OpenAI nests ``{name, schema, strict}`` under
    ``json_schema``. OpenAI's ``name`` and ``description`` have no place there and are dropped.
    """
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise _bad_request("response_format", "response_format: expected an object")
    kind = fmt.get("type")
    if kind in (None, "text"):
        return None
    if kind != "json_schema":
        return fmt  # json_object and GigaChat's own types: as sent (GigaChat judges them)
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    if not isinstance(schema, dict):
        raise _bad_request("response_format.json_schema.schema",
                           "response_format: a json_schema needs json_schema.schema (an object)")
    out: dict[str, Any] = {"type": "json_schema", "schema": schema}
    strict = spec.get("strict") if isinstance(spec, dict) else None
    if isinstance(strict, bool):
        out["strict"] = strict
    return out


def _reasoning_effort(effort: Any) -> str | None:
    """OpenAI ``reasoning_effort`` → GigaChat's ``reasoning_effort`` (low, medium, high).

    The v1 chat request takes ``reasoning_effort`` for reasoning models such as
    GigaChat-2-Reasoning (the official SDK's ``Chat.reasoning_effort``, ai-forever/gigachat
    ``models/chat.py``, and its reasoning example). OpenAI's ``minimal``, ``xhigh`` and ``max``
    go to the nearest level GigaChat has; ``none`` cannot be expressed (GigaChat documents no
    way to turn reasoning off), so it is refused rather than silently reasoning anyway.
    """
    if effort is None:
        return None
    mapped = _REASONING_EFFORTS.get(effort) if isinstance(effort, str) else None
    if mapped is None:
        raise _bad_request("reasoning_effort", f"reasoning_effort {effort!r} is not supported "
                           "by GigaChat: use low, medium or high (minimal maps to low, "
                           "xhigh and max to high)")
    return mapped


def _finish_reason(raw: Any, called: bool) -> str:
    if raw == "error":
        # GigaChat gave up mid-answer; what it sent is incomplete, another attempt may succeed.
        raise UpstreamError(ErrorKind.OVERLOADED, "GigaChat ended the answer with an error")
    if called:
        return "tool_calls"
    return _FINISH_REASONS.get(str(raw), "stop")


def _usage(raw: Any) -> dict[str, Any] | None:
    if not isinstance(raw, dict):
        return None
    prompt = int(raw.get("prompt_tokens") or 0)
    completion = int(raw.get("completion_tokens") or 0)
    usage: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                             "total_tokens": int(raw.get("total_tokens") or prompt + completion)}
    if raw.get("precached_prompt_tokens"):
        usage["prompt_tokens_details"] = {"cached_tokens": int(raw["precached_prompt_tokens"])}
    return usage


def _json_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _protocol(f"GigaChat sent a malformed {what} (not JSON)") from None
    if not isinstance(data, dict):
        raise _protocol(f"GigaChat sent a malformed {what} (not an object)")
    return data


class GigaChatProvider(Provider):
    """Sber GigaChat, with its OAuth token fetched once and shared by all requests."""

    capabilities = frozenset({Capability.CHAT, Capability.EMBEDDINGS})
    default_url = DEFAULT_URL
    options_type = GigaChatOptions

    def __init__(self, model: ModelConfig, session: aiohttp.ClientSession) -> None:
        super().__init__(model, session)
        opts: GigaChatOptions = self.options
        self._auth_key = _authorization_key(model, opts)
        self._ssl = _ssl_setting(model.name, opts)
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
        data = _json_object(await self._read(resp), "OAuth answer")
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
                    ) -> aiohttp.ClientResponse:
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

    async def _call(self, url: str, body: bytes, accept: str) -> aiohttp.ClientResponse:
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

    @staticmethod
    async def _read(resp: aiohttp.ClientResponse) -> bytes:
        try:
            return await resp.read()
        except (TimeoutError, aiohttp.ClientError):
            raise _protocol("GigaChat's answer was cut off") from None
        finally:
            resp.release()

    def _scrub(self, text: str) -> str:
        """Upstream text with our credentials removed, in case an error ever echoes them."""
        for secret in (*self._secrets, self._token):
            if secret:
                text = text.replace(secret, "***")
        return text

    def error_from_response(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> UpstreamError:
        # GigaChat answers {"status": 401, "message": "..."}; OAuth {"code": 7, "message": "..."}.
        message, code = "", None
        try:
            parsed = orjson.loads(body) if body else None
        except orjson.JSONDecodeError:
            parsed = None
        if isinstance(parsed, dict):
            err = parsed.get("error")
            source = err if isinstance(err, dict) else parsed
            message = str(source.get("message") or "")
            if source.get("code") is not None:
                code = str(source["code"])
        message = self._scrub(message) or f"upstream answered HTTP {status}"
        message = f"GigaChat: {message}"
        if status == 402:
            # The model's token budget is used up: another model or account may still serve.
            return UpstreamError(ErrorKind.RATE_LIMITED, message, status=429, code=code,
                                 upstream_status=status)
        if status == 413:
            # "Payload too large": the prompt exceeds the model's context window.
            return UpstreamError(ErrorKind.CONTEXT_LENGTH, message, status=400,
                                 code="context_length_exceeded", upstream_status=status)
        return error_from_status(status, message, headers=headers, code=code)

    # --- chat ---------------------------------------------------------------------------

    def _chat_body(self, request: ChatRequest, stream: bool) -> bytes:
        """The GigaChat request for an OpenAI one; 400 for what would change the answer."""
        body = request.body
        if body.get("n") not in (None, 1):
            raise _bad_request("n", "GigaChat returns one choice per request (n must be 1)")
        if body.get("stop"):
            raise _bad_request("stop", "GigaChat does not support stop sequences")
        for penalty in ("frequency_penalty", "presence_penalty"):
            if body.get(penalty) not in (None, 0):
                raise _bad_request(penalty, f"GigaChat does not support {penalty}; "
                                   "use repetition_penalty")
        if body.get("logprobs") or body.get("top_logprobs") is not None:
            raise _bad_request("logprobs", "GigaChat does not return log probabilities")
        if body.get("logit_bias"):
            raise _bad_request("logit_bias", "GigaChat does not support logit_bias")
        out: dict[str, Any] = {"model": self.upstream_model,
                               "messages": _messages(body.get("messages"))}
        functions, function_call = _functions(body)
        if functions:
            out["functions"] = functions
        if function_call is not None:
            out["function_call"] = function_call
        # Harmless when absent upstream: seed, user, metadata, store, parallel_tool_calls,
        # service_tier, stream_options are dropped. GigaChat's own extensions pass through.
        for key in ("temperature", "top_p", "repetition_penalty", "update_interval",
                    "profanity_check"):
            if body.get(key) is not None:
                out[key] = body[key]
        if out.get("temperature") == 0:
            # post-chat: temperature must be > 0 (0 is a 422); a value from 0 to 0.001 is its
            # documented switch to the most deterministic answer, which OpenAI's 0 asks for.
            out["temperature"] = GREEDY_TEMPERATURE
        effort = _reasoning_effort(body.get("reasoning_effort"))
        if effort is not None:
            out["reasoning_effort"] = effort
        max_tokens = body.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        if max_tokens is not None:
            out["max_tokens"] = max_tokens
        fmt = _response_format(body.get("response_format"))
        if fmt is not None:
            out["response_format"] = fmt
        if stream:
            out["stream"] = True
        return orjson.dumps(out)

    async def chat(self, request: ChatRequest) -> ChatResponse:
        body = self._chat_body(request, stream=False)
        resp = await self._call(self._chat_url, body, "application/json")
        data = _json_object(await self._read(resp), "chat answer")
        raw_choices = data.get("choices")
        if not isinstance(raw_choices, list) or not raw_choices:
            raise _protocol("GigaChat answered without choices")
        choices = []
        for k, choice in enumerate(raw_choices):
            msg = choice.get("message") if isinstance(choice, dict) else None
            if not isinstance(msg, dict):
                raise _protocol("GigaChat answered a choice without a message")
            message: dict[str, Any] = {"role": "assistant", "content": msg.get("content") or ""}
            fc = msg.get("function_call")
            called = False
            if isinstance(fc, dict) and fc.get("name"):
                called = True
                message["tool_calls"] = [_tool_call(fc, msg.get("functions_state_id"))]
                message["content"] = message["content"] or None
            choices.append({"index": choice.get("index", k), "message": message,
                            "finish_reason": _finish_reason(choice.get("finish_reason"), called)})
        out: dict[str, Any] = {
            "id": completion_id(),
            "object": "chat.completion",
            "created": int(data.get("created") or time.time()),
            "model": self.model.name,
            "choices": choices,
        }
        usage = _usage(data.get("usage"))
        if usage is not None:
            out["usage"] = usage
        return ChatResponse(data=out)

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        body = self._chat_body(request, stream=True)
        resp = await self._call(self._chat_url, body, "text/event-stream")
        chunks = StreamChunks(self.model.name)
        done = role_sent = called = False
        finish: str | None = None
        state: Any = None  # the functions_state_id, for the tool call's id
        usage: dict[str, Any] | None = None
        try:
            try:
                async for event in iter_sse(resp.content):
                    if event.data.strip() == b"[DONE]":
                        done = True
                        break
                    data = _json_object(event.data, "stream event")
                    usage = _usage(data.get("usage")) or usage
                    choices = data.get("choices")
                    if not isinstance(choices, list):
                        if data.get("message"):  # an error reported inside the stream
                            message = self._scrub(str(data["message"]))
                            raise error_from_status(int(data.get("status") or 500),
                                                    f"GigaChat: {message}")
                        raise _protocol("GigaChat sent a stream event without choices")
                    for choice in choices[:1]:  # n is 1
                        raw = choice.get("delta") if isinstance(choice, dict) else None
                        raw = raw if isinstance(raw, dict) else {}
                        # It comes with the function call's delta; an earlier one counts too.
                        state = raw.get("functions_state_id") or state
                        delta: dict[str, Any] = {}
                        if not role_sent:
                            delta["role"] = "assistant"
                        content = raw.get("content")
                        if isinstance(content, str) and (content or not role_sent):
                            delta["content"] = content
                        fc = raw.get("function_call")
                        if isinstance(fc, dict) and fc.get("name"):
                            # GigaChat sends a call whole, in one event.
                            delta["tool_calls"] = [{"index": 0, **_tool_call(fc, state)}]
                            called = True
                        if delta:
                            role_sent = True
                            yield chunks.chunk(delta)
                        if choice.get("finish_reason"):
                            finish = _finish_reason(choice["finish_reason"], called)
            except (TimeoutError, aiohttp.ClientError, ValueError):
                raise _protocol("GigaChat's stream was cut off") from None
            if not done:
                raise _protocol("GigaChat's stream ended before [DONE]")
        finally:
            end_response(resp, complete=done)
        for chunk in chunks.end(finish or ("tool_calls" if called else "stop"), usage,
                                include_usage=request.include_usage, role_sent=role_sent):
            yield chunk

    # --- embeddings ---------------------------------------------------------------------

    async def embeddings(self, request: EmbeddingsRequest) -> EmbeddingsResponse:
        body = request.body
        value = body.get("input")
        texts = [value] if isinstance(value, str) else value
        if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
            raise _bad_request("input", "GigaChat embeds strings only (no token arrays)")
        if body.get("dimensions") is not None:
            raise _bad_request("dimensions", "GigaChat embeddings have a fixed size")
        encoding = body.get("encoding_format") or "float"
        if encoding not in ("float", "base64"):
            raise _bad_request("encoding_format", "encoding_format: float or base64")
        payload = orjson.dumps({"model": self.upstream_model, "input": texts})
        resp = await self._call(self._embeddings_url, payload, "application/json")
        data = _json_object(await self._read(resp), "embeddings answer")
        items = data.get("data")
        if not isinstance(items, list):
            raise _protocol("GigaChat answered embeddings without data")
        out, prompt_tokens = [], 0
        for k, item in enumerate(items):
            vector = item.get("embedding") if isinstance(item, dict) else None
            if not isinstance(vector, list):
                raise _protocol("GigaChat answered an embedding without a vector")
            usage = item.get("usage")
            if isinstance(usage, dict):
                prompt_tokens += int(usage.get("prompt_tokens") or 0)
            embedding: Any = vector if encoding == "float" else embedding_base64(vector)
            out.append({"object": "embedding", "index": item.get("index", k),
                        "embedding": embedding})
        return EmbeddingsResponse(data={
            "object": "list", "data": out, "model": self.model.name,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}})

    async def close(self) -> None:
        self._token = None
