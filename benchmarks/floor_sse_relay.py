"""The floor reference for streaming calls: a minimal line-by-line SSE relay on aiohttp.

Forward the client's body with one shared ``ClientSession``, then relay each upstream line to
the client with ``StreamResponse.write`` as soon as it arrives. No parsing of events, no
rewriting, no auth, no logs. aiproxy's streaming throughput is judged against this.

    python benchmarks/floor_sse_relay.py --port 9003 --upstream http://127.0.0.1:9001/v1
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web
from loops import CHOICES, new_loop

SESSION = web.AppKey("session", aiohttp.ClientSession)
URL = web.AppKey("url", str)
_FORWARD = {"Content-Type": "application/json", "Authorization": "Bearer upstream-token"}


async def relay(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    async with request.app[SESSION].post(request.app[URL], data=body, headers=_FORWARD) as up:
        content_type = up.headers.get("Content-Type", "")
        if not content_type.startswith("text/event-stream"):
            return web.Response(body=await up.read(), status=up.status,
                                headers={"Content-Type": content_type or "application/json"})
        response = web.StreamResponse(status=up.status, headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        async for line in up.content:  # one line at a time, as it arrives
            await response.write(line)
        await response.write_eof()
        return response


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    app[URL] = upstream.rstrip("/") + "/chat/completions"

    async def session_ctx(app: web.Application):
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/chat/completions", relay)
    app.router.add_post("/chat/completions", relay)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="upstream base URL, e.g. http://h:p/v1")
    parser.add_argument("--loop", choices=CHOICES, default="auto",
                        help="event loop, chosen as aiproxy's --loop chooses (auto: uvloop when "
                             "installed), so that floor and proxy are compared on the same loop")
    args = parser.parse_args()
    web.run_app(make_app(args.upstream), host=args.host, port=args.port, access_log=None,
                print=None, loop=new_loop(args.loop))



if __name__ == "__main__":
    main()
