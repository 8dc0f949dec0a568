"""The floor reference for non-streaming calls: the least an aiohttp proxy can do.

Read the client's body, POST it with one shared ``ClientSession`` to the upstream's
``/chat/completions``, return the upstream's bytes and status. No parsing, no auth, no logs.
aiproxy's throughput is judged against this (``benchmarks/run.py``).

    python benchmarks/floor_passthrough.py --port 9002 --upstream http://127.0.0.1:9001/v1
"""

from __future__ import annotations

import argparse
import gc

import aiohttp
from aiohttp import web
from loops import CHOICES, new_loop

SESSION = web.AppKey("session", aiohttp.ClientSession)
URL = web.AppKey("url", str)
_FORWARD = {"Content-Type": "application/json", "Authorization": "Bearer upstream-token"}


async def forward(request: web.Request) -> web.Response:
    body = await request.read()
    async with request.app[SESSION].post(request.app[URL], data=body, headers=_FORWARD) as up:
        data = await up.read()
        return web.Response(body=data, status=up.status,
                            headers={"Content-Type": up.headers.get("Content-Type",
                                                                    "application/json")})


def make_app(upstream: str) -> web.Application:
    app = web.Application()
    app[URL] = upstream.rstrip("/") + "/chat/completions"

    async def session_ctx(app: web.Application):
        # limit=0: no connection cap, as aiproxy's sessions.
        app[SESSION] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        yield
        await app[SESSION].close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_post("/v1/chat/completions", forward)
    app.router.add_post("/chat/completions", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="upstream base URL, e.g. http://h:p/v1")
    parser.add_argument("--loop", choices=CHOICES, default="auto",
                        help="event loop, chosen as aiproxy's --loop chooses (auto: uvloop when "
                             "installed), so that floor and proxy are compared on the same loop")
    parser.add_argument("--gc-young", type=int, metavar="N",
                        help="the cyclic collector's young-generation threshold (default: "
                             "CPython's); run.py starts a second floor with aiproxy's")
    args = parser.parse_args()
    if args.gc_young:
        gc.set_threshold(args.gc_young)
    web.run_app(make_app(args.upstream), host=args.host, port=args.port, access_log=None,
                print=None, loop=new_loop(args.loop))



if __name__ == "__main__":
    main()
