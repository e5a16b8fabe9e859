"""The warehouse: touches, persons, deals, attribution and ad spend in SQL tables for BI tools.

PostgreSQL in production, SQLite as the embedded default; the schema is migrated with Alembic
(``sinks/warehouse/migrations``), the sink is :class:`WarehouseWriter`, the reports are in
:mod:`sinks.warehouse.report`.
"""

from sinks.warehouse.db import connect, head_revision, migrate, revision
from sinks.warehouse.writer import Message, WarehouseTopics, WarehouseWriter, WriteStats

__all__ = [
    "Message",
    "WarehouseTopics",
    "WarehouseWriter",
    "WriteStats",
    "connect",
    "head_revision",
    "migrate",
    "revision",
]
