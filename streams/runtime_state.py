"""Where the servers are: configured ones, or those of a running `idstream up`."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from identity import ConfigurationError
from streams.settings import Settings

__all__ = ["Servers", "forget", "private_directory", "redis_url", "remember", "servers", "warehouse_url"]


@dataclass(frozen=True)
class Servers:
    kafka: str
    redis: str
    pid: int | None = None
    warehouse: str | None = None


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
                settings.kafka_bootstrap_servers or state.kafka, settings.redis_url or state.redis, state.pid,
                state.warehouse,
            )  # fmt: skip
    raise ConfigurationError(
        "no servers: start `idstream up` in another terminal, or set IDSTREAM_KAFKA_BOOTSTRAP_SERVERS "
        "and IDSTREAM_REDIS_URL"
    )


def redis_url(settings: Settings) -> str:
    """Redis alone (the lookup API, export, lookup): configured, else the one `idstream up` recorded."""
    if settings.redis_url:
        return settings.redis_url
    return servers(settings).redis


def warehouse_url(settings: Settings) -> str:
    """The warehouse: configured, else the one a running `idstream up` uses (its data directory's), else the
    default file."""
    if "warehouse_url" in settings.model_fields_set:
        return settings.warehouse_url
    path = settings.state_file
    if path.exists():
        with contextlib.suppress(OSError, ValueError, TypeError):
            state = Servers(**json.loads(path.read_text(encoding="utf-8")))
            if state.warehouse and (state.pid is None or _alive(state.pid)):
                return state.warehouse
    return settings.warehouse_url


def private_directory(path: Path) -> None:
    """Create ``path`` and its missing parents, readable by the owner alone (0700); existing ones stay as they are."""
    missing: list[Path] = []
    directory = path
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for directory in reversed(missing):
        directory.mkdir(mode=0o700, exist_ok=True)


def remember(path: Path, state: Servers) -> None:
    """Record where `up`'s servers are, for the other commands: readable by the owner alone (it holds the
    Redis URL, password included). Written 0600 under a temporary name and renamed over the old file, so no
    one else can ever open it; a directory created for it is 0700."""
    private_directory(path.parent)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump(asdict(state), out)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def forget(path: Path) -> None:
    path.unlink(missing_ok=True)
