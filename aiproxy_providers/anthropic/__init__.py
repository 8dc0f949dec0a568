"""Anthropic's Claude over the Messages API: OpenAI chat translated both ways, and the
Messages API passed through natively for the ``/v1/messages`` front door.

See ``docs/providers/anthropic.md``. The package: ``models.py`` (what each model id accepts),
``request.py`` (OpenAI → Messages; ``content.py`` its content blocks), ``response.py``
(Messages → OpenAI), ``errors.py`` (errors and rate-limit headers), ``provider.py`` (the plugin).
"""

from __future__ import annotations

from .provider import DEFAULT_MAX_TOKENS, DEFAULT_VERSION, AnthropicOptions, AnthropicProvider

__all__ = ["DEFAULT_MAX_TOKENS", "DEFAULT_VERSION", "AnthropicOptions", "AnthropicProvider"]
