"""aiproxy: an OpenAI-compatible LLM proxy in front of many providers."""

from __future__ import annotations

__version__ = "0.1.0"
