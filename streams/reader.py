"""Asynchronous reads of the Redis identity graph for the lookup API.

One script call (``streams/lua/read.lua``) per identifier or profile id, all of a batch in one
pipelined round trip; rendering shares :func:`streams.redis_store.render_person` with the worker,
so the API shows exactly what ``profiles.updates`` carries.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis
import redis.asyncio as aioredis

from identity import Identifier, Normalizer, ResolutionPolicy, TransientError
from streams.redis_store import READ_KEY_NAMES, READ_LUA, Found, node_of, parse_read

__all__ = ["AsyncReader"]


class AsyncReader:
    def __init__(
        self, client: aioredis.Redis, policy: ResolutionPolicy, normalizer: Normalizer, prefix: str = "idstream"
    ) -> None:
        self.client = client
        self.policy = policy
        self.normalizer = normalizer
        self.keys = [f"{{{prefix}}}:{name}" for name in READ_KEY_NAMES]
        self._script = client.register_script(READ_LUA)

    async def _run(self, requests: Sequence[tuple[str, str]]) -> list[Found | None]:
        if not requests:
            return []
        try:
            if len(requests) == 1:
                mode, arg = requests[0]
                raws: list[Any] = [await self._script(keys=self.keys, args=[mode, arg])]
            else:
                async with self.client.pipeline(transaction=False) as pipe:
                    for mode, arg in requests:
                        await self._script(keys=self.keys, args=[mode, arg], client=pipe)  # loaded by execute
                    raws = await pipe.execute()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise TransientError(f"redis unavailable: {exc}") from exc
        return [parse_read(raw, self.policy) for raw in raws]

    async def identifiers(self, idents: Sequence[Identifier]) -> list[Found | None]:
        """The person holding each normalized identifier (with the persons contesting it)."""
        return await self._run([("node", node_of(i)) for i in idents])

    async def profiles(self, profile_ids: Sequence[str]) -> list[Found | None]:
        """Live or retired profile ids -> their live person (``candidates`` is just the person)."""
        return await self._run([("pid", pid) for pid in profile_ids])

    async def ping(self) -> bool:
        return bool(await self.client.ping())
