"""Build ``streams/zdict/v1.bin``, the preset dictionary stored values are compressed with.

    python benchmarks/make_zdict.py

zlib primes its window with the dictionary, so the JSON keys and values every unit, aggregate and profile
repeat ("occurred_at", "form_submit", "attribution", ...) cost a few bits instead of being spelled out in
each value: a stored profile takes about half the bytes. The sample is ``idstream generate``'s synthetic
stream (no real person's data). A stored value names its dictionary in its first byte, so a new dictionary
must get a new file and tag, never replace this one.
"""

from __future__ import annotations

from pathlib import Path

import orjson

from identity import IdentityGraph
from identity.golden import Stored
from streams.generate import generate

OUT = Path(__file__).resolve().parent.parent / "streams" / "zdict" / "v1.bin"


def main() -> None:
    graph = IdentityGraph(aggregate=Stored)
    graph.apply_many(generate(400, 4242).touches)
    units = b"".join(orjson.dumps(graph.export_unit(root)) for root in graph.unit_roots()[:60])
    held = (graph.aggregate_of(n) for root in graph.unit_roots() for n in graph.unit_nodes(root))
    aggregates = b"".join(orjson.dumps(a.serialize()) for a in list(filter(None, held))[:60])
    profiles = b"".join(orjson.dumps(p) for p in list(graph.profiles())[:40])
    # the most useful bytes last: zlib reaches the end of its window most cheaply
    OUT.write_bytes(units[-3000:] + aggregates[-5000:] + profiles[-8000:])
    print(f"{OUT}: {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
