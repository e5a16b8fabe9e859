"""The lookup endpoint: who is this caller? Reads the Redis identity graph directly.

    GET /v1/lookup?kind=phone&value=8%20(916)%20123-45-67  -> 200 {"status": "found", "profile_id", "profile"}
                                                           -> 404 {"status": "not_found"}
    GET /v1/profiles/{profile_id}                           -> 200 {"profile_id", "profile"} (a retired id
                                                               answers with the surviving id), or 404

The raw value is normalized exactly as in the stream. This first version serves loopback only and has
no tokens; the API issue adds bearer-token auth, batch lookups and the OpenAPI description.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from streams.redis_store import RedisIdentityStore

__all__ = ["create_lookup_app"]

STORE: web.AppKey[RedisIdentityStore] = web.AppKey("store", RedisIdentityStore)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"status": "error", "message": message}, status=status)


async def lookup(request: web.Request) -> web.Response:
    kind, value = request.query.get("kind"), request.query.get("value")
    if not kind or value is None:
        return _error(400, "query parameters 'kind' and 'value' are required")
    store = request.app[STORE]
    loop = asyncio.get_running_loop()
    pid = await loop.run_in_executor(None, store.lookup_raw, kind, value)
    if pid is None:
        return web.json_response({"status": "not_found"}, status=404)
    profile = await loop.run_in_executor(None, store.profile, pid)
    body: dict[str, Any] = {"status": "found", "profile_id": pid, "profile": profile}
    return web.json_response(body)


async def profile(request: web.Request) -> web.Response:
    store = request.app[STORE]
    loop = asyncio.get_running_loop()
    live = await loop.run_in_executor(None, store.resolve, request.match_info["profile_id"])
    if live is None:
        return web.json_response({"status": "not_found"}, status=404)
    found = await loop.run_in_executor(None, store.profile, live)
    return web.json_response({"profile_id": live, "profile": found})


def create_lookup_app(store: RedisIdentityStore) -> web.Application:
    app = web.Application()
    app[STORE] = store
    app.router.add_get("/v1/lookup", lookup)
    app.router.add_get("/v1/profiles/{profile_id}", profile)
    return app
