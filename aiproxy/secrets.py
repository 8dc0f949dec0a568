"""The credentials of one configured model, and the one way they are scrubbed from text:
used by the core on everything an upstream says (``aiproxy.errors.sanitize``) and by
plugins through ``Provider.redact``."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["Secrets"]


class Secrets:
    """The credentials of one configured model, to scrub from whatever an upstream says: its
    token (and each half of a ``client_id:secret`` token), and every ``options:`` value whose
    key names a credential or that is sent as a header."""

    MIN_LENGTH = 6  # shorter values would scrub ordinary words
    _CREDENTIAL_KEY = re.compile(r"key|token|secret|password|auth|credential", re.IGNORECASE)

    def __init__(self, values: Iterable[str]) -> None:
        unique = {v for v in values if isinstance(v, str) and len(v) >= self.MIN_LENGTH}
        # Longest first, so a token is scrubbed whole before any part of it.
        self.values = tuple(sorted(unique, key=len, reverse=True))

    @classmethod
    def of(cls, token: str | None, options: Mapping[str, Any]) -> Secrets:
        values: list[str] = []
        if token:
            values += [token, *token.split(":")]
        def walk(mapping: Mapping[str, Any], credential: bool) -> None:
            for key, value in mapping.items():
                named = credential or bool(cls._CREDENTIAL_KEY.search(str(key)))
                if isinstance(value, Mapping):
                    walk(value, named or str(key).lower() == "headers")
                elif isinstance(value, str) and named:
                    values.append(value)
        walk(options, False)
        return cls(values)

    def scrub(self, text: str) -> str:
        for value in self.values:
            if value in text:
                text = text.replace(value, "[redacted]")
        return text

    def holds(self, text: str) -> bool:
        return any(value in text for value in self.values)
