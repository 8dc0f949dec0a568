"""The served OpenAPI document is valid and matches the routes the app really has."""

from __future__ import annotations

import re
from pathlib import Path

import orjson
from openapi_spec_validator import validate

ROOT = Path(__file__).resolve().parent.parent


async def test_served_document_is_valid_and_matches_the_routes(start_proxy):
    proxy = await start_proxy({"models": [{"name": "m", "provider": "mock"}]})
    async with proxy.http.get(proxy.url("/openapi.json")) as resp:  # public
        assert resp.status == 200
        served = orjson.loads(await resp.read())
    assert served == orjson.loads((ROOT / "aiproxy" / "openapi.json").read_bytes())
    validate(served)

    documented = {(method.upper(), path) for path, item in served["paths"].items()
                  for method in item}
    # (Leaving out HEAD, and the catch-all route of every method that answers 404 and 405.)
    routed = {(route.method, route.resource.canonical) for route in proxy.app.router.routes()
              if route.method not in ("HEAD", "*") and route.resource is not None}
    assert documented == routed

    # Every documented path answers (anything but 404/405) with its method; a path with a
    # parameter ({id}) may answer 404 for that id, but never the router's "no such endpoint".
    for method, path in sorted(documented):
        concrete = re.sub(r"\{[^}]+\}", "unknown-id", path)
        async with proxy.http.request(method, proxy.url(concrete), headers=proxy.auth,
                                      json={}) as resp:
            code = (await resp.json())["error"]["code"] if resp.status == 404 else None
            assert resp.status != 405, (method, path)
            assert resp.status != 404 or ("{" in path and code != "not_found"), (method, path)
