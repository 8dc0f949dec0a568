"""Front doors: client APIs other than Chat Completions (the Responses API, the legacy
completions), turned into the chat core's requests and back, or passed through untranslated to
an upstream that speaks the same API."""

from __future__ import annotations
