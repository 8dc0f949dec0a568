"""The plugin contract's public surface, pinned: a name or signature that changes by accident
fails here (after httpx's tests/test_exported_members.py).

A deliberate change updates this file, CHANGELOG.md ("Plugin API") and docs/plugins.md, and
bumps PLUGIN_API_VERSION when it is incompatible (docs/plugins.md, "Versioning").
"""

from __future__ import annotations

import enum
import inspect
from typing import Any

import attrs
import pytest

import aiproxy.kit
import aiproxy.provider
from aiproxy.provider import (
    PLUGIN_API_VERSION,
    SUPPORTED_PLUGIN_API_VERSIONS,
    Parameters,
    Provider,
    StreamAssembler,
)

# Every name aiproxy.provider exports: attrs values by their fields, enums by their values,
# callables by their signatures, constants by their type.
EXPORTED: dict[str, Any] = {
    'Capability': ('chat', 'embeddings', 'images'),
    'ChatRequest': ('body', 'raw', 'stream', 'continuation'),
    'ChatResponse': ('data',),
    'ConfigError': "(errors: 'list[str]') -> 'None'",
    'DataURL': ('media_type', 'data'),
    'EmbeddingsRequest': ('body', 'raw'),
    'EmbeddingsResponse': ('data',),
    'ErrorKind': (
        'rate_limited', 'overloaded', 'timeout', 'connection', 'protocol', 'bad_request', 'auth',
        'content_filter', 'context_length',
    ),
    'ErrorRule': ('kind', 'code', 'status'),
    'ErrorTable': ('codes', 'statuses', 'context_length'),
    'Event': ('data', 'name'),
    'FunctionTool': ('name', 'description', 'parameters', 'strict', 'where'),
    'ImageRequest': ('body', 'raw'),
    'ImageResponse': ('images',),
    'Message': ('index', 'role', 'content', 'tool_calls', 'raw'),
    # The config owns ModelConfig and may add fields (a compatible change): only the ones
    # plugins read are pinned, as a subset.
    'ModelConfig': ('name', 'provider', 'url', 'token', 'upstream_model', 'options', 'timeouts'),
    'OPENAI_CHAT_PARAMETERS': 'frozenset',
    'OPENAI_EMBEDDING_PARAMETERS': 'frozenset',
    'PLUGIN_API_VERSION': 'int',
    'MALFORMED_EVENT': 'dict',
    'Parameters': ('provider', 'supported', 'ignored', 'notes', 'extensions', 'api'),
    'Part': ('kind', 'where', 'text', 'url', 'detail', 'audio', 'raw'),
    'Provider': "(model: 'ModelConfig', session: 'aiohttp.ClientSession') -> 'None'",
    'ROLES': 'frozenset',
    'RateLimitHint': ('remaining', 'reset_after'),
    'SSEEvent': ('data', 'event'),
    'SUPPORTED_PLUGIN_API_VERSIONS': 'frozenset',
    'StreamAssembler': (
        "(model: 'str', *, include_usage: 'bool', provider: 'str', logprobs: 'bool' = False,"
        " id: 'str | None' = None) -> 'None'"
    ),
    'StreamChunks': ('model', 'id', 'created', 'logprobs'),
    'ToolCall': ('id', 'name', 'arguments', 'where', 'raw'),
    'ToolChoice': ('mode', 'name'),
    'UpstreamError': (
        "(kind: 'ErrorKind', message: 'str', *, status: 'int | None' = None,"
        " code: 'str | None' = None, param: 'str | None' = None,"
        " retry_after: 'float | None' = None, upstream_status: 'int | None' = None,"
        " provider_name: 'str | None' = None) -> 'None'"
    ),
    'UpstreamFailure': ('status', 'message', 'codes', 'param', 'retry_after', 'headers'),
    # A Protocol: by its members (what send() returns, whichever client made the call).
    'UpstreamResponse': ('_body', 'charset', 'close', 'content', 'content_length',
                         'content_type', 'headers', 'json', 'method', 'ok', 'raise_for_status',
                         'read', 'reason', 'release', 'request_info', 'status', 'text', 'url'),
    'assistant_message': (
        "(text: 'str | None', tool_calls: 'Sequence[Mapping[str, Any]]' = ()) -> 'dict[str, Any]'"
    ),
    'bad_request': (
        "(message: 'str', *, param: 'str | None' = None,"
        " code: 'str | None' = None) -> 'UpstreamError'"
    ),
    'chat_completion': (
        "(model: 'str', choices: 'Sequence[Mapping[str, Any]]', usage: 'Mapping[str, Any] | None',"
        " *, id: 'str | None' = None, created: 'int | None' = None) -> 'dict[str, Any]'"
    ),
    'classify': (
        "(failure: 'UpstreamFailure', table: 'ErrorTable | None' = None, *,"
        " provider_name: 'str | None' = None) -> 'UpstreamError'"
    ),
    'completion_id': "() -> 'str'",
    'data_url': "(url: 'Any') -> 'DataURL | None'",
    'embedding_base64': "(vector: 'Sequence[float]') -> 'str'",
    'embedding_encoding': '(body: \'Mapping[str, Any]\') -> "Literal[\'float\', \'base64\']"',
    'embedding_texts': "(body: 'Mapping[str, Any]', *, provider: 'str') -> 'list[str]'",
    'embeddings_answer': (
        "(vectors: 'Sequence[Sequence[float]]', *, model: 'str', prompt_tokens: 'int',"
        ' encoding: "Literal[\'float\', \'base64\']" = \'float\') -> \'dict[str, Any]\''
    ),
    'end_response': "(resp: 'UpstreamResponse', *, complete: 'bool') -> 'None'",
    'error_from_status': (
        "(status: 'int', message: 'str', *, headers: 'Mapping[str, str] | None' = None,"
        " code: 'str | None' = None, param: 'str | None' = None,"
        " provider_name: 'str | None' = None) -> 'UpstreamError'"
    ),
    'error_json': "(body: 'bytes') -> 'Any'",
    'function_tools': (
        "(body: 'Mapping[str, Any]', *, provider: 'str',"
        " legacy: 'bool' = False) -> 'list[FunctionTool]'"
    ),
    'image_media_type': "(data: 'bytes') -> 'str | None'",
    'is_default': "(name: 'str', value: 'Any') -> 'bool'",
    'iter_sse': (
        "(content: 'aiohttp.StreamReader', max_event: 'int' = 16777216) -> "
        "'AsyncGenerator[SSEEvent, None]'"
    ),
    'json_object': (
        "(raw: 'bytes | str', *, provider: 'str', what: 'str' = 'the answer') -> 'dict[str, Any]'"
    ),
    'max_tokens_of': "(body: 'Mapping[str, Any]') -> 'Any'",
    'messages_of': (
        "(body: 'Mapping[str, Any]', *, provider: 'str', roles: 'Collection[str]' = ('system',"
        " 'user', 'assistant', 'tool')) -> 'list[Message]'"
    ),
    'openai_finish_reason': (
        "(raw: 'Any', table: 'Mapping[str, str]', *, tool_calls: 'bool' = False,"
        " default: 'str' = 'stop') -> 'str'"
    ),
    'openai_tool_call': (
        "(name: 'str', arguments: 'Any', *, id: 'str | None' = None, **extra: 'Any') -> 'dict[str,"
        " Any]'"
    ),
    'openai_usage': (
        "(prompt: 'Any', completion: 'Any', *, total: 'Any' = None, cached: 'Any' = None,"
        " reasoning: 'Any' = None) -> 'dict[str, Any]'"
    ),
    'parse_rate_limit_headers': "(headers: 'Mapping[str, str]') -> 'RateLimitHint | None'",
    'parse_retry_after': "(value: 'str | None', now: 'float | None' = None) -> 'float | None'",
    'parts_of': (
        "(content: 'Any', where: 'str', *, provider: 'str', kinds: 'Collection[str]' = ('text',"
        " 'refusal', 'image_url', 'input_audio', 'file')) -> 'list[Part]'"
    ),
    'protocol_error': "(message: 'str') -> 'UpstreamError'",
    'read_body': "(resp: 'UpstreamResponse', *, provider: 'str') -> 'bytes'",
    'stop_of': "(body: 'Mapping[str, Any]') -> 'list[str] | None'",
    'structure_options': (
        "(data: 'Mapping[str, Any]', cls: 'type[T]', path: 'str' = 'options') -> 'T'"
    ),
    'text_of': "(content: 'Any', where: 'str', *, provider: 'str', joiner: 'str' = '') -> 'str'",
    'token_count': "(value: 'Any') -> 'int | None'",
    'tool_call_id': "() -> 'str'",
    'tool_choice_of': (
        "(body: 'Mapping[str, Any]', tools: 'Sequence[FunctionTool]', *, provider: 'str',"
        " legacy: 'bool' = False) -> 'ToolChoice | None'"
    ),
}

# The Provider class, in the four parts docs/plugins.md walks through.
PROVIDER_DECLARES: dict[str, Any] = {
    'plugin_api_version': None,
    'capabilities': 'frozenset',
    'default_url': None,
    'requires_token': True,
    'options_type': None,
    'chat_parameters': None,
    'embedding_parameters': None,
}
PROVIDER_IMPLEMENTS: dict[str, Any] = {
    '__init__': "(self, model: 'ModelConfig', session: 'aiohttp.ClientSession') -> 'None'",
    'chat': "(self, request: 'ChatRequest') -> 'ChatResponse'",
    'stream': "(self, request: 'ChatRequest') -> 'AsyncIterator[dict[str, Any]]'",
    'embeddings': "(self, request: 'EmbeddingsRequest') -> 'EmbeddingsResponse'",
    'images': "(self, request: 'ImageRequest') -> 'ImageResponse'",
    'close': "(self) -> 'None'",
    'error_from_response': (
        "(self, status: 'int', body: 'bytes', headers: 'Mapping[str, str]') -> 'UpstreamError'"
    ),
}
PROVIDER_USES: dict[str, Any] = {
    'accepts_continuation': 'property',
    'upstream_model': 'property',
    'client_timeout': 'property',
    'send': (
        "(self, method: 'str', url: 'str', *, data: 'bytes | None' = None, headers: 'Mapping[str,"
        " str] | None' = None, **kwargs: 'Any') -> 'UpstreamResponse'"
    ),
}
PROVIDER_CORE_ONLY: dict[str, Any] = {
    'redact': "(self, text: 'str') -> 'str'",
    'note_rate_limit': "(self, headers: 'Mapping[str, str]') -> 'None'",
}
STREAM_ASSEMBLER: dict[str, Any] = {
    '__init__': (
        "(self, model: 'str', *, include_usage: 'bool', provider: 'str', logprobs: 'bool' = False,"
        " id: 'str | None' = None) -> 'None'"
    ),
    'start': "(self, index: 'int' = 0) -> 'list[dict[str, Any]]'",
    'text': (
        "(self, text: 'str', index: 'int' = 0, *, logprobs: 'Any' = None) -> 'list[dict[str,"
        " Any]]'"
    ),
    'tool_call': (
        "(self, name: 'str', arguments: 'Any', *, id: 'str | None' = None, index: 'int' = 0,"
        " **extra: 'Any') -> 'list[dict[str, Any]]'"
    ),
    'tool_call_delta': (
        "(self, key: 'Any', *, id: 'str | None' = None, name: 'str | None' = None,"
        " arguments: 'str' = '', index: 'int' = 0) -> 'list[dict[str, Any]]'"
    ),
    'knows_call': "(self, key: 'Any', index: 'int' = 0) -> 'bool'",
    'has_tool_calls': "(self, index: 'int' = 0) -> 'bool'",
    'finish': "(self, reason: 'str', index: 'int' = 0) -> 'list[dict[str, Any]]'",
    'finished': "(self, index: 'int' = 0) -> 'bool'",
    'open_choices': 'property',
    'end': "(self, reason: 'str' = 'stop') -> 'list[dict[str, Any]]'",
    'complete': 'property',
    'read': (
        "(self, resp: 'UpstreamResponse', *, done: 'bytes | None' = b'[DONE]',"
        ' end: \'str\' = \'its end\', framing: "Literal[\'sse\','
        ' \'ndjson\']" = \'sse\') -> '
        "'contextlib.AbstractAsyncContextManager[AsyncIterator[Event]]'"
    ),
    'id': 'property',
    'started': 'property',
}
PARAMETERS: dict[str, Any] = {
    '__init__': (
        "(self, provider: 'str', supported: 'Iterable[str]',"
        " ignored: 'Iterable[str]' = frozenset(), notes: 'Mapping[str, str]' = NOTHING,"
        ' extensions: \'Iterable[str]\' = frozenset(), api: "Literal[\'chat\','
        ' \'embeddings\']" = \'chat\') -> None'
    ),
    'check': "(self, body: 'Mapping[str, Any]') -> 'None'",
    'error': "(self, name: 'str') -> 'UpstreamError'",
    'markdown': "(self) -> 'str'",
    'taken': 'property',
    'refused': 'property',
}


def surface(obj: Any) -> Any:
    if inspect.isclass(obj) and getattr(obj, "_is_protocol", False):
        return tuple(sorted(set(obj.__annotations__) | {
            n for n, v in vars(obj).items()
            if not n.startswith("__") and (callable(v) or isinstance(v, property))}))
    if inspect.isclass(obj) and attrs.has(obj):
        return tuple(a.name for a in attrs.fields(obj))
    if inspect.isclass(obj) and issubclass(obj, enum.Enum):
        return tuple(m.value for m in obj)
    if callable(obj):
        return str(inspect.signature(obj))
    return type(obj).__name__


def member(cls: type, name: str) -> Any:
    value = inspect.getattr_static(cls, name)
    if isinstance(value, property):
        return "property"
    if callable(value):
        return str(inspect.signature(getattr(cls, name)))
    value = getattr(cls, name)
    return "frozenset" if isinstance(value, frozenset) else value


class TestExportedMembers:
    def test_names(self) -> None:
        assert sorted(aiproxy.provider.__all__) == sorted(EXPORTED)
        assert len(set(aiproxy.provider.__all__)) == len(aiproxy.provider.__all__)

    def test_the_kit_is_re_exported_whole(self) -> None:
        for name in aiproxy.kit.__all__:
            assert getattr(aiproxy.provider, name) is getattr(aiproxy.kit, name), name

    def test_every_name_is_aiproxy_s_own(self) -> None:
        for name in aiproxy.provider.__all__:
            obj = getattr(aiproxy.provider, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert obj.__module__.startswith("aiproxy."), (name, obj.__module__)

    @pytest.mark.parametrize("name", sorted(EXPORTED))
    def test_surface(self, name: str) -> None:
        got = surface(getattr(aiproxy.provider, name))
        if name == "ModelConfig":
            assert set(EXPORTED[name]) <= set(got)
        else:
            assert got == EXPORTED[name]


class TestProvider:
    @pytest.mark.parametrize("table", [PROVIDER_DECLARES, PROVIDER_IMPLEMENTS, PROVIDER_USES,
                                       PROVIDER_CORE_ONLY], ids=["declares", "implements",
                                                                 "uses", "core-only"])
    def test_members(self, table: dict[str, Any]) -> None:
        assert {name: member(Provider, name) for name in table} == table

    def test_nothing_else_is_public(self) -> None:
        public = {n for n in vars(Provider) if not n.startswith("_")}
        known = PROVIDER_DECLARES.keys() | PROVIDER_IMPLEMENTS.keys() | PROVIDER_USES.keys() \
            | PROVIDER_CORE_ONLY.keys()
        assert public == known - {"__init__"}

    def test_kit_classes(self) -> None:
        assert {n: member(StreamAssembler, n) for n in STREAM_ASSEMBLER} == STREAM_ASSEMBLER
        assert {n: member(Parameters, n) for n in PARAMETERS} == PARAMETERS

    def test_version(self) -> None:
        # Bumped only with CHANGELOG.md's "Plugin API" section saying what changed.
        assert PLUGIN_API_VERSION == 2
        assert frozenset({2}) == SUPPORTED_PLUGIN_API_VERSIONS
