"""Client keys beside ``AUTH_TOKEN``: which models a key may use, and its own limits."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs

from aiproxy.config import Config, KeyConfig
from aiproxy.errors import ProxyError, shown
from aiproxy.limits.base import Limits

if TYPE_CHECKING:
    from aiproxy.routing.plan import Planner, Route

__all__ = ["Grant", "KeyRing"]


@attrs.frozen
class Grant:
    """What one client key may do: the names it may ask for and the models they reach."""

    key: KeyConfig
    names: frozenset[str]  # requestable names (listed ones, and models of listed groups)
    models: frozenset[str]  # configured models it may reach
    limits: Limits

    @property
    def everything(self) -> bool:
        return not self.key.models

    def check(self, name: str) -> None:
        """403 when the key may not ask for ``name`` (unknown names stay 404 later)."""
        if not self.everything and name not in self.names:
            raise ProxyError(403, f"key {self.key.name!r} may not use model {shown(name)}",
                             code="model_not_allowed", param="model")

    def allows(self, route: Route) -> bool:
        return self.everything or route.name in self.models


class KeyRing:
    """Keys by SHA-256 digest, resolved against one generation's models and groups."""

    def __init__(self, config: Config, planner: Planner) -> None:
        self._grants: dict[str, Grant] = {}
        for key in config.keys:
            models: set[str] = set()
            for listed in key.models:
                models.update(route.name for route in planner.expand(listed))
            self._grants[key.digest] = Grant(
                key=key, names=frozenset(key.models) | frozenset(models),
                models=frozenset(models),
                limits=Limits(key.requests_per_minute, key.requests_per_hour,
                              key.requests_per_day, key.tokens_per_minute, key.tokens_per_day))

    def find(self, token: bytes) -> Grant | None:
        # A dict lookup on digests: timing reveals nothing about a key without its preimage.
        return self._grants.get(hashlib.sha256(token).hexdigest())

    @property
    def grants(self) -> Mapping[str, Grant]:
        return self._grants

