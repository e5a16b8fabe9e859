"""Redis errors mapped to idstream's error tree, in this one place, and Redis clients built with explicit timeouts.

The rule: anything that can succeed later is a :class:`~identity.TransientError`: the worker retries the batch
with backoff and never acknowledges it, the lookup API answers 503. That covers lost connections and timeouts,
a server that is loading its data set (``LOADING``), a script still running (``BUSY``), a full server under
``noeviction`` (``OOM``), a replica or a primary that cannot take writes now (``READONLY``, ``MASTERDOWN``,
``NOREPLICAS``, ``MISCONF``), cluster redirections and reconfiguration (``MOVED``, ``ASK``, ``TRYAGAIN``,
``CLUSTERDOWN``), and access the operator can still grant (``NOAUTH``, ``NOPERM``, ``WRONGPASS``). A dead
letter is for input that can never succeed, and no store error is that: what is left (a script error, a
wrongly typed key) is a :class:`StoreError`, which the processor narrows down to the one event that causes it.

A script that runs past the client's socket timeout keeps running in Redis: the retry meets ``BUSY`` (transient)
until it ends, then finds its events applied (``duplicate``) and publishes them. Socket timeouts are explicit:
the worker's (``IDSTREAM_REDIS_TIMEOUT``) covers the longest script a healthy batch runs; the API's is short,
so a lookup answers 503 quickly instead of waiting behind a stalled server.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import redis
import redis.asyncio as aioredis

from identity import IdstreamError, TransientError

__all__ = ["StoreError", "async_client", "is_transient", "mapped", "sync_client", "to_idstream"]

#: Reply prefixes of errors that pass by themselves or by an operator's action, never by changing the input.
TRANSIENT_REPLIES = (
    "BUSY", "LOADING", "OOM", "READONLY", "MASTERDOWN", "NOREPLICAS", "MISCONF", "MOVED", "ASK", "TRYAGAIN",
    "CLUSTERDOWN", "NOAUTH", "NOPERM", "WRONGPASS", "UNBLOCKED",
)  # fmt: skip

_TRANSIENT_TYPES: tuple[type[Exception], ...] = (
    redis.ConnectionError,  # includes AuthenticationError, MaxConnectionsError
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.OutOfMemoryError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.MasterDownError,
    redis.exceptions.NoPermissionError,
    redis.exceptions.ClusterError,  # MOVED/ASK/TRYAGAIN/CLUSTERDOWN and unreachable nodes
    redis.exceptions.MaxClientsReachedError,
    OSError,
)


class StoreError(IdstreamError):
    """Redis refused an operation for a reason retrying cannot fix (a script error, a wrongly typed key)."""

    code = "store_error"


def is_transient(exc: BaseException) -> bool:
    """Can the same Redis call succeed later?"""
    if isinstance(exc, _TRANSIENT_TYPES):
        return True
    if isinstance(exc, redis.ResponseError):
        text = str(exc).lstrip("-")
        if text.startswith(TRANSIENT_REPLIES):
            return True
        # an error raised by a command inside a script keeps its code after the script's own prefix
        # (Redis 7: "OOM command not allowed ... script: ..."; Redis 6: "ERR Error running script ...: -OOM ...")
        return any(f"-{reply} " in text or f": {reply} " in text for reply in TRANSIENT_REPLIES)
    return False


def to_idstream(exc: Exception, what: str = "redis") -> IdstreamError:
    """The idstream error for a Redis (or socket) error; never carries an identifier value, only the reply."""
    reply = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    if is_transient(exc):
        return TransientError(f"{what}: redis unavailable ({type(exc).__name__}: {reply})")
    return StoreError(f"{what}: redis refused the operation ({type(exc).__name__}: {reply})")


@contextlib.contextmanager
def mapped(what: str = "redis") -> Iterator[None]:
    """Raise Redis errors inside the block as :func:`to_idstream` maps them."""
    try:
        yield
    except IdstreamError:
        raise
    except (redis.RedisError, OSError) as exc:
        raise to_idstream(exc, what) from exc


def sync_client(url: str, *, timeout: float, max_connections: int = 32) -> redis.Redis:
    """A client whose calls fail after ``timeout`` seconds instead of hanging, and whose pool waits
    (up to ``timeout``) for a free connection instead of refusing one."""
    pool = redis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 5.0),
    )
    return redis.Redis(connection_pool=pool)


def async_client(url: str, *, timeout: float, max_connections: int = 64, **kwargs: Any) -> aioredis.Redis:
    """The asyncio counterpart of :func:`sync_client`: many concurrent lookups queue for ``max_connections``."""
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=timeout,
        socket_timeout=timeout,
        socket_connect_timeout=min(timeout, 5.0),
        **kwargs,
    )
    return aioredis.Redis(connection_pool=pool)
