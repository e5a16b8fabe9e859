"""Connecting to the warehouse, migrating it, and the few places PostgreSQL and SQLite differ."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError

from identity.errors import ConfigurationError, TransientError

__all__ = ["MIGRATIONS", "chunks", "connect", "from_db", "head_revision", "insert", "migrate", "revision", "to_db"]

MIGRATIONS = Path(__file__).with_name("migrations")
T = TypeVar("T")


def connect(url: str) -> Engine:
    """An engine for ``url`` (``postgresql+psycopg://...`` or ``sqlite:///path``); SQLite's folder is created."""
    if url.startswith("sqlite"):
        database = url.split("///", 1)[1] if "///" in url else ""
        if database and database != ":memory:":
            # the warehouse holds personal data: a folder created for it is the owner's alone
            Path(database).expanduser().parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            url = "sqlite:///" + str(Path(database).expanduser())
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    if url.startswith(("postgresql", "postgres")):
        if url.startswith("postgres://"):
            url = "postgresql://" + url[len("postgres://") :]
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        return create_engine(url, pool_pre_ping=True)
    raise ConfigurationError(
        f"warehouse URL must be postgresql://... or sqlite:///...; got scheme {url.split(':')[0]!r}"
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")  # BI tools read while the sink writes
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def migrate(engine: Engine) -> str:
    """Apply every migration not yet applied (idempotent); returns the revision the warehouse is at."""
    try:
        with engine.begin() as connection:
            command.upgrade(_config(connection), "head")
    except OperationalError as exc:
        raise TransientError(f"warehouse unavailable: {exc.orig}") from None
    return revision(engine) or ""


def revision(engine: Engine) -> str | None:
    """The migration the warehouse is at; None for an empty database."""
    with engine.connect() as connection:
        current: str | None = MigrationContext.configure(connection).get_current_revision()
        return current


def head_revision() -> str:
    head: str | None = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    if head is None:  # pragma: no cover - the repository ships migrations
        raise ConfigurationError(f"no warehouse migrations found in {MIGRATIONS}")
    return head


def insert(connection: Connection, table: Table) -> Any:
    """An INSERT that supports ``on_conflict_do_*`` on this connection's dialect."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def to_db(moment: datetime) -> datetime:
    """A time as stored: UTC (SQLite keeps no offset, so every stored time must be UTC)."""
    return moment.astimezone(UTC)


def from_db(moment: datetime | None) -> datetime | None:
    """A time as read back: aware, in UTC."""
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def chunks(items: Iterable[T], size: int = 500) -> Iterator[list[T]]:
    """Bind parameters in bounded lists (SQLite limits variables per statement)."""
    chunk: list[T] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def transient(exc: DBAPIError) -> bool:
    """A database error that may go away by itself (connection lost, database locked, serialization)."""
    return isinstance(exc, OperationalError) or bool(getattr(exc, "connection_invalidated", False))
