"""The naive aiohttp + uvloop proxy the issue uses as a reference point (bench only).

`python bench/aiohttp_proxy.py PORT HOST:PORT...`: round robin, pooled upstream connections,
bodies read whole into memory. Deliberately the obvious ~30 lines, not a tuned proxy.
"""

from __future__ import annotations

import itertools
import sys

import aiohttp
import uvloop
from aiohttp import web

HOP = {"connection", "keep-alive", "transfer-encoding", "te", "upgrade", "host", "content-length"}


def main() -> None:
    port, backends = int(sys.argv[1]), sys.argv[2:]
    rr = itertools.cycle(backends)
    session: list[aiohttp.ClientSession] = []

    async def start(app: web.Application) -> None:
        session.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)))

    async def handle(req: web.Request) -> web.Response:
        headers = {k: v for k, v in req.headers.items() if k.lower() not in HOP}
        body = await req.read()
        url = f"http://{next(rr)}{req.rel_url}"
        async with session[0].request(req.method, url, headers=headers, data=body) as r:
            data = await r.read()
            out = {k: v for k, v in r.headers.items() if k.lower() not in HOP}
            return web.Response(status=r.status, headers=out, body=data)

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.on_startup.append(start)
    app.router.add_route("*", "/{tail:.*}", handle)
    web.run_app(
        app, host="127.0.0.1", port=port, access_log=None, print=None, loop=uvloop.new_event_loop()
    )


if __name__ == "__main__":
    main()
