"""What a request cost: the model's ``price:`` (or a built-in default) times what it used.

Prices are USD per million tokens (input, output, cached input) and per generated image. The
defaults below are the providers' list prices for their common models, as published on their
pricing pages; a model's ``price:`` in the config replaces its default as a whole.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from aiproxy.config import Config, ModelConfig
from aiproxy.config.schema import PriceConfig
from aiproxy.record import Record

__all__ = ["DEFAULT_PRICES", "PriceBook", "cost_of", "default_price"]

_P = PriceConfig

# USD per 1M tokens. Sources, read 2025/2026 (check them: prices change, the config wins):
# OpenAI     https://platform.openai.com/docs/pricing
# Anthropic  https://platform.claude.com/docs/en/about-claude/pricing (cache hits = cached_input)
# Google     https://ai.google.dev/gemini-api/docs/pricing (prompts up to 200k tokens)
DEFAULT_PRICES: Mapping[str, PriceConfig] = {
    # OpenAI chat and reasoning models
    "gpt-5": _P(input=1.25, output=10.0, cached_input=0.125),
    "gpt-5-mini": _P(input=0.25, output=2.0, cached_input=0.025),
    "gpt-5-nano": _P(input=0.05, output=0.40, cached_input=0.005),
    "gpt-4.1": _P(input=2.0, output=8.0, cached_input=0.50),
    "gpt-4.1-mini": _P(input=0.40, output=1.60, cached_input=0.10),
    "gpt-4.1-nano": _P(input=0.10, output=0.40, cached_input=0.025),
    "gpt-4o": _P(input=2.50, output=10.0, cached_input=1.25),
    "gpt-4o-mini": _P(input=0.15, output=0.60, cached_input=0.075),
    "gpt-4-turbo": _P(input=10.0, output=30.0),
    "gpt-4": _P(input=30.0, output=60.0),
    "gpt-3.5-turbo": _P(input=0.50, output=1.50),
    "o1": _P(input=15.0, output=60.0, cached_input=7.50),
    "o3": _P(input=2.0, output=8.0, cached_input=0.50),
    "o3-mini": _P(input=1.10, output=4.40, cached_input=0.55),
    "o4-mini": _P(input=1.10, output=4.40, cached_input=0.275),
    # OpenAI embeddings and images (DALL·E: standard quality, 1024x1024)
    "text-embedding-3-small": _P(input=0.02),
    "text-embedding-3-large": _P(input=0.13),
    "text-embedding-ada-002": _P(input=0.10),
    "dall-e-3": _P(image=0.040),
    "dall-e-2": _P(image=0.020),
    # Anthropic
    "claude-opus-4-5": _P(input=5.0, output=25.0, cached_input=0.50),
    "claude-opus-4-1": _P(input=15.0, output=75.0, cached_input=1.50),
    "claude-opus-4": _P(input=15.0, output=75.0, cached_input=1.50),
    "claude-sonnet-4-5": _P(input=3.0, output=15.0, cached_input=0.30),
    "claude-sonnet-4": _P(input=3.0, output=15.0, cached_input=0.30),
    "claude-3-7-sonnet": _P(input=3.0, output=15.0, cached_input=0.30),
    "claude-3-5-sonnet": _P(input=3.0, output=15.0, cached_input=0.30),
    "claude-haiku-4-5": _P(input=1.0, output=5.0, cached_input=0.10),
    "claude-3-5-haiku": _P(input=0.80, output=4.0, cached_input=0.08),
    "claude-3-haiku": _P(input=0.25, output=1.25, cached_input=0.03),
    "claude-3-opus": _P(input=15.0, output=75.0, cached_input=1.50),
    # Google Gemini
    "gemini-2.5-pro": _P(input=1.25, output=10.0),
    "gemini-2.5-flash": _P(input=0.30, output=2.50),
    "gemini-2.5-flash-lite": _P(input=0.10, output=0.40),
    "gemini-2.0-flash": _P(input=0.10, output=0.40),
    "gemini-2.0-flash-lite": _P(input=0.075, output=0.30),
    "gemini-1.5-pro": _P(input=1.25, output=5.0),
    "gemini-1.5-flash": _P(input=0.075, output=0.30),
}

# Snapshot and version suffixes a default still applies to: gpt-4o-2024-08-06,
# claude-3-5-sonnet-20241022, claude-3-5-sonnet@20240620 (Vertex), gemini-1.5-pro-002,
# claude-3-5-haiku-latest, gpt-4-0613.
_SUFFIX = re.compile(r"(?:@.*|-\d{4}-\d{2}-\d{2}|-\d{8}|-\d{3,4}|-latest)$")
_MILLION = 1_000_000.0


def default_price(upstream_model: str) -> PriceConfig | None:
    """The built-in price of an upstream model id (``openai/gpt-4o`` and dated snapshots
    included), or ``None``."""
    name = upstream_model.lower().rsplit("/", 1)[-1]
    while True:
        price = DEFAULT_PRICES.get(name)
        if price is not None:
            return price
        shorter = _SUFFIX.sub("", name)
        if shorter == name:
            return None
        name = shorter


def _price_of(model: ModelConfig) -> PriceConfig | None:
    if model.price is not None:
        return model.price
    return default_price(model.upstream_model_id) or default_price(model.name)


def cost_of(record: Record, price: PriceConfig | None) -> float | None:
    """USD for what ``record`` used at ``price``: ``None`` when it was served by a model with no
    known price, or when a served chat or embedding reported no tokens; 0 when nothing was
    served. Cached input tokens are billed at the cached rate, reasoning tokens are output."""
    if record.model is None:
        return 0.0
    if price is None:
        return None
    images = getattr(record, "images", None)  # the core may report how many it generated
    if record.tokens_in is None and record.tokens_out is None:
        if price.image and _is_image(record):
            return price.image * (images if isinstance(images, int) else 1)
        return None
    tokens_in = record.tokens_in or 0
    cached = min(record.tokens_cached or 0, tokens_in)
    cached_rate = price.input if price.cached_input is None else price.cached_input
    cost = ((tokens_in - cached) * price.input + cached * cached_rate
            + (record.tokens_out or 0) * price.output) / _MILLION
    if price.image and isinstance(images, int):
        cost += price.image * images
    return cost


def _is_image(record: Record) -> bool:
    return record.route.endswith(("/images/generations", "/image"))


class PriceBook:
    """The price of every model of one config, looked up once."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.prices: dict[str, PriceConfig | None] = {m.name: _price_of(m)
                                                      for m in config.models}

    def cost(self, record: Record) -> float | None:
        return cost_of(record, self.prices.get(record.model) if record.model else None)
