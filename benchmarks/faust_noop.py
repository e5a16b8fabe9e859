"""The Faust reference of the ingest benchmark: an agent that does nothing, on the worker's touch topic.

    IDSTREAM_...=... python benchmarks/faust_noop.py COUNT_FILE

Same app settings as ``idstream worker`` (``streams.app.faust_app``), same topic, same batching
(``take_events(IDSTREAM_BATCH_SIZE, within=IDSTREAM_BATCH_WITHIN)``), its own consumer group; the body only
counts. After each batch it writes how many events it has seen to COUNT_FILE, so the benchmark can time it
and read its CPU from /proc from the first batch to the last: what Faust's own per-event path costs.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, cast

import faust
from faust.streams import Stream

from streams.app import faust_app
from streams.settings import Settings


def main() -> None:
    out = Path(sys.argv[1])
    settings = Settings()
    bootstrap = settings.kafka_bootstrap_servers or ""
    app = faust_app(settings, f"{settings.app_id}-faust-noop", bootstrap)
    touches = app.topic(*settings.touch_topics, key_type=bytes, value_type=bytes, value_serializer="raw")
    seen = 0

    async def nothing(stream: faust.StreamT[Any]) -> None:
        nonlocal seen
        async for events in cast(Stream[Any], stream).take_events(settings.batch_size, within=settings.batch_within):
            seen += len(events)
            out.write_text(str(seen))

    app.agent(touches, name="idstream.noop", concurrency=1)(nothing)
    worker = faust.Worker(app, quiet=True, override_logging=False, redirect_stdouts=False)
    worker.spinner = None
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
