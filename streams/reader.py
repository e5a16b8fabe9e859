"""Asynchronous reads of the Redis identity graph for the lookup API.

One script call (``streams/lua/read.lua``) per identifier or profile id, all of a batch in one
pipelined round trip. Each person is one record the worker wrote as served (the same profile
``profiles.updates`` carries): nothing is aggregated or rendered at read time.

The persons contesting an ambiguous identifier are ranked inside Redis (:data:`RANK_LUA`): only the
first few come back whole, however many there are (a spammed phone gathers hundreds).
Every Redis error is raised as :mod:`streams.redis_errors` maps it: a transient one (a lost connection,
a timeout, a busy or paused server) as :class:`~identity.TransientError`, which the API answers with 503.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any, Final, NamedTuple

import redis.asyncio as aioredis

from identity import Identifier, Normalizer, ResolutionPolicy
from streams.redis_errors import mapped
from streams.redis_store import READ_KEY_NAMES, READ_LUA, Found, node_of, parse_read

__all__ = ["RANK_LUA", "AsyncReader", "Ranked"]

#: The persons behind profile ids, most touches first, then the most recent last touch, then by id; the first
#: ``ARGV[1]`` of them as the read script answers a profile id, and how many there are in all. Ranks come from
#: the header the worker writes in front of each profile record: nothing is decoded here.
#: KEYS: as read.lua's. ARGV[1]: how many to return whole; ARGV[2..]: (live or retired) profile ids.
#: Returns {count of distinct live persons, {{record, live id, "", {}, ""}, ...}}.
RANK_LUA: Final = (
    resources.files("streams").joinpath("lua").joinpath("common.lua").read_text(encoding="utf-8")
    + r"""
local prof, redirect = KEYS[2], KEYS[3]

local limit = tonumber(ARGV[1])
local rows, seen = {}, {}
for i = 2, #ARGV do
  local pid = live_pid(prof, redirect, ARGV[i])
  if pid and not seen[pid] then
    seen[pid] = true
    local record = redis.call("HGET", prof, pid)
    local one = string.find(record, RS, 1, true)
    local two = string.find(record, RS, one + 1, true)
    rows[#rows + 1] = { tonumber(string.sub(record, 1, one - 1)), string.sub(record, one + 1, two - 1), pid, record }
  end
end
table.sort(rows, function(x, y)
  if x[1] ~= y[1] then return x[1] > y[1] end
  if x[2] ~= y[2] then return lt(y[2], x[2]) end
  return lt(x[3], y[3])
end)
local top = {}
for i = 1, math.min(limit, #rows) do top[i] = { rows[i][4], rows[i][3], "", {}, "" } end
return { #rows, top }
"""
)


class Ranked(NamedTuple):
    """The first persons of a ranking (most relevant first), and how many persons were ranked in all."""

    total: int
    first: list[Found]


class AsyncReader:
    def __init__(
        self, client: aioredis.Redis, policy: ResolutionPolicy, normalizer: Normalizer, prefix: str = "idstream"
    ) -> None:
        self.client = client
        self.policy = policy
        self.normalizer = normalizer
        self.keys = [f"{{{prefix}}}:{name}" for name in READ_KEY_NAMES]
        self._script = client.register_script(READ_LUA)
        self._rank = client.register_script(RANK_LUA)

    async def _calls(self, script: Any, calls: Sequence[Sequence[str | int]], what: str) -> list[Any]:
        """Each call's answer: one script call, or all of them pipelined in one round trip."""
        if not calls:
            return []
        with mapped(what):
            if len(calls) == 1:
                return [await script(keys=self.keys, args=list(calls[0]))]
            async with self.client.pipeline(transaction=False) as pipe:
                for args in calls:
                    await script(keys=self.keys, args=list(args), client=pipe)  # loaded by execute
                return list(await pipe.execute())

    async def _run(self, requests: Sequence[tuple[str, str]]) -> list[Found | None]:
        raws = await self._calls(self._script, requests, "lookup")
        return [parse_read(raw) for raw in raws]

    async def identifiers(self, idents: Sequence[Identifier]) -> list[Found | None]:
        """The person holding each normalized identifier (with the persons contesting it)."""
        return await self._run([("node", node_of(i)) for i in idents])

    async def profiles(self, profile_ids: Sequence[str]) -> list[Found | None]:
        """Live or retired profile ids -> their live person (``candidates`` is just the person)."""
        return await self._run([("pid", pid) for pid in profile_ids])

    async def ranked(self, groups: Sequence[Sequence[str]], limit: int) -> list[Ranked]:
        """For each group of profile ids (the candidates of an ambiguous identifier): its first ``limit``
        persons, most touches first, then the most recent last touch, then by profile id; and how many
        distinct live persons the group holds. Only the first ones are read whole."""
        raws = await self._calls(self._rank, [(limit, *pids) for pids in groups], "candidates")
        answers = []
        for total, first in raws:
            found = [parse_read(raw) for raw in first or []]
            answers.append(Ranked(int(total), [f for f in found if f is not None]))
        return answers

    async def ping(self) -> bool:
        with mapped("ping"):
            return bool(await self.client.ping())
