"""The served OpenAPI document is valid and matches the routes the app really has."""

from __future__ import annotations

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
    routed = {(route.method, route.resource.canonical) for route in proxy.app.router.routes()
              if route.method != "HEAD" and route.resource is not None}
    assert documented == routed

    # Every documented path answers (anything but 404/405) with its method.
    for method, path in sorted(documented):
        async with proxy.http.request(method, proxy.url(path), headers=proxy.auth,
                                      json={}) as resp:
            assert resp.status not in (404, 405), (method, path, resp.status)
