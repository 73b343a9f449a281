"""The local ``/rest/v1`` gateway: forwards ``/rest/v1/*`` to PostgREST.

supabase-py always calls ``SUPABASE_URL + "/rest/v1/..."``; on a hosted project
Supabase's API gateway strips that prefix before PostgREST sees the request. This
few-line reverse proxy plays that part on a developer machine, for tests and the demo.
It is not used in production.
"""

from __future__ import annotations

import argparse
import asyncio

from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

PREFIX = "/rest/v1"
HOP_HEADERS = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "content-encoding",
    "host",
}


SESSION = web.AppKey("session", ClientSession)


def build_app(upstream: str) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024)

    async def on_startup(app: web.Application) -> None:
        app[SESSION] = ClientSession(
            connector=TCPConnector(limit=256, keepalive_timeout=60),
            timeout=ClientTimeout(total=120),
            auto_decompress=False,
        )

    async def on_cleanup(app: web.Application) -> None:
        await app[SESSION].close()

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def proxy(request: web.Request) -> web.StreamResponse:
        path = request.match_info["tail"]
        url = f"{upstream}/{path}"
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        body = await request.read()
        session = app[SESSION]
        async with session.request(
            request.method, url, params=request.query, headers=headers, data=body or None
        ) as resp:
            payload = await resp.read()
            out_headers = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_HEADERS}
            if "Content-Encoding" in resp.headers:
                out_headers["Content-Encoding"] = resp.headers["Content-Encoding"]
            return web.Response(status=resp.status, body=payload, headers=out_headers)

    app.on_startup.append(on_startup)
    app.on_cleanup.append(on_cleanup)
    app.router.add_get("/health", health)
    app.router.add_route("*", PREFIX + "/{tail:.*}", proxy)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Local /rest/v1 gateway in front of PostgREST")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="PostgREST base URL")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        pass
    asyncio.set_event_loop(asyncio.new_event_loop())
    web.run_app(
        build_app(args.upstream.rstrip("/")),
        host=args.host,
        port=args.port,
        print=None,
        access_log=None,
    )


if __name__ == "__main__":
    main()
