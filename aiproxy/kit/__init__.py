"""The translation kit: what a provider plugin may use so that it writes only its request
mapping, its response mapping and its error table.

Everything here is re-exported by :mod:`aiproxy.provider`, the one module a plugin imports.

- :mod:`.errors`   UpstreamError and its kinds; ``bad_request``; ErrorTable + ``classify``
- :mod:`.params`   Parameters: the OpenAI parameters a provider takes, drops or refuses
- :mod:`.messages` messages, roles, content parts, data URLs, tool calls of a request
- :mod:`.tools`    ``tools`` and ``tool_choice``
- :mod:`.answers`  ids, messages, tool calls, finish reasons, embeddings; reading JSON answers
- :mod:`.usage`    one usage normaliser
- :mod:`.stream`   StreamAssembler: role, tool-call indexes, finish, usage and the end of a stream
"""

from __future__ import annotations

from aiproxy.kit.answers import (
    assistant_message,
    chat_completion,
    completion_id,
    embedding_base64,
    embedding_encoding,
    embedding_texts,
    embeddings_answer,
    image_media_type,
    json_object,
    max_tokens_of,
    openai_finish_reason,
    openai_tool_call,
    read_body,
    stop_of,
    tool_call_id,
)
from aiproxy.kit.errors import (
    ErrorKind,
    ErrorRule,
    ErrorTable,
    RateLimitHint,
    UpstreamError,
    UpstreamFailure,
    bad_request,
    classify,
    error_from_status,
    error_json,
    parse_rate_limit_headers,
    parse_retry_after,
    protocol_error,
)
from aiproxy.kit.messages import (
    ROLES,
    DataURL,
    Message,
    Part,
    ToolCall,
    data_url,
    messages_of,
    parts_of,
    text_of,
)
from aiproxy.kit.params import (
    OPENAI_CHAT_PARAMETERS,
    OPENAI_EMBEDDING_PARAMETERS,
    Parameters,
    is_default,
)
from aiproxy.kit.stream import Event, StreamAssembler, StreamChunks, end_response
from aiproxy.kit.tools import FunctionTool, ToolChoice, function_tools, tool_choice_of
from aiproxy.kit.usage import openai_usage, token_count

__all__ = [
    "OPENAI_CHAT_PARAMETERS",
    "OPENAI_EMBEDDING_PARAMETERS",
    "ROLES",
    "DataURL",
    "ErrorKind",
    "ErrorRule",
    "ErrorTable",
    "Event",
    "FunctionTool",
    "Message",
    "Parameters",
    "Part",
    "RateLimitHint",
    "StreamAssembler",
    "StreamChunks",
    "ToolCall",
    "ToolChoice",
    "UpstreamError",
    "UpstreamFailure",
    "assistant_message",
    "bad_request",
    "chat_completion",
    "classify",
    "completion_id",
    "data_url",
    "embedding_base64",
    "embedding_encoding",
    "embedding_texts",
    "embeddings_answer",
    "end_response",
    "error_from_status",
    "error_json",
    "function_tools",
    "image_media_type",
    "is_default",
    "json_object",
    "max_tokens_of",
    "messages_of",
    "openai_finish_reason",
    "openai_tool_call",
    "openai_usage",
    "parse_rate_limit_headers",
    "parse_retry_after",
    "parts_of",
    "protocol_error",
    "read_body",
    "stop_of",
    "text_of",
    "token_count",
    "tool_call_id",
    "tool_choice_of",
]
