"""Where the servers are: configured ones, or those of a running `idstream up`."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from identity import ConfigurationError
from streams.settings import Settings

__all__ = ["Servers", "forget", "redis_url", "remember", "servers"]


@dataclass(frozen=True)
class Servers:
    kafka: str
    redis: str
    pid: int | None = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def servers(settings: Settings) -> Servers:
    """Configured servers win; else the ones a running `idstream up` recorded; else a clear error."""
    if settings.kafka_bootstrap_servers and settings.redis_url:
        return Servers(settings.kafka_bootstrap_servers, settings.redis_url)
    path = settings.state_file
    if path.exists():
        state = Servers(**json.loads(path.read_text(encoding="utf-8")))
        if state.pid is None or _alive(state.pid):
            return Servers(
                settings.kafka_bootstrap_servers or state.kafka, settings.redis_url or state.redis, state.pid
            )
    raise ConfigurationError(
        "no servers: start `idstream up` in another terminal, or set IDSTREAM_KAFKA_BOOTSTRAP_SERVERS "
        "and IDSTREAM_REDIS_URL"
    )


def redis_url(settings: Settings) -> str:
    """Redis alone (the lookup API, export, lookup): configured, else the one `idstream up` recorded."""
    if settings.redis_url:
        return settings.redis_url
    return servers(settings).redis


def remember(path: Path, state: Servers) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(state)), encoding="utf-8")


def forget(path: Path) -> None:
    path.unlink(missing_ok=True)
