"""docs/providers/*.md print each provider's OpenAI parameter declaration: checked here, so
the pages cannot drift from the code.

After changing a declaration, rewrite the tables with ``python -m tests.test_provider_docs``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from aiproxy.plugins import ProviderRegistry
from aiproxy.provider import Parameters
from aiproxy_providers.cloudflare import CloudflareProvider
from aiproxy_providers.cohere import CohereProvider
from aiproxy_providers.gemini import GeminiProvider
from aiproxy_providers.gigachat import GigaChatProvider

DOCS = Path(__file__).resolve().parent.parent / "docs" / "providers"


def _declared(value: Parameters | None) -> Parameters:
    assert value is not None
    return value


# page -> (block name, declaration) for every table the page prints.
TABLES: dict[str, list[tuple[str, Parameters]]] = {
    "gemini.md": [("chat", _declared(GeminiProvider.chat_parameters)),
                  ("embeddings", _declared(GeminiProvider.embedding_parameters))],
    "cohere.md": [("chat", _declared(CohereProvider.chat_parameters)),
                  ("embeddings", _declared(CohereProvider.embedding_parameters))],
    "gigachat.md": [("chat", _declared(GigaChatProvider.chat_parameters)),
                    ("embeddings", _declared(GigaChatProvider.embedding_parameters))],
    "cloudflare.md": [(f"chat {name}", params)
                      for name, params in CloudflareProvider.family_parameters.items()],
}


def _block(name: str) -> re.Pattern[str]:
    return re.compile(rf"(<!-- parameters: {re.escape(name)} -->\n)(.*?)(\n<!-- /parameters -->)",
                      re.DOTALL)


def regenerate() -> None:
    for page, tables in TABLES.items():
        path = DOCS / page
        text = path.read_text()
        for name, params in tables:
            text, count = _block(name).subn(
                lambda m, params=params: m.group(1) + params.markdown() + m.group(3), text)
            assert count == 1, f"{page}: no <!-- parameters: {name} --> block"
        path.write_text(text)


@pytest.mark.parametrize(("page", "name", "params"),
                         [(page, name, params) for page, tables in TABLES.items()
                          for name, params in tables])
def test_the_page_prints_the_declaration(page: str, name: str, params: Parameters) -> None:
    match = _block(name).search((DOCS / page).read_text())
    assert match is not None, f"docs/providers/{page} has no <!-- parameters: {name} --> block"
    assert match.group(2) == params.markdown(), (
        f"docs/providers/{page} ({name}) differs from the declaration: run "
        "python -m tests.test_provider_docs")


def test_every_declaring_provider_has_its_page() -> None:
    registry = ProviderRegistry()
    documented = {id(params) for tables in TABLES.values() for _, params in tables}
    for name in ("gemini", "google", "cohere", "gigachat", "cloudflare", "openai",
                 "openrouter", "groq", "huggingface"):
        cls = registry.get(name)
        for params in (cls.chat_parameters, cls.embedding_parameters):
            if params is not None:
                assert id(params) in documented, f"{name}: its declaration has no page"


if __name__ == "__main__":
    regenerate()
