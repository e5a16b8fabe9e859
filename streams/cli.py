"""The ``idstream`` command."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from identity import Identifier, IdstreamError
from schemas import InvalidMessage, decode_touch, export_schemas
from streams.runtime import tune_gc
from streams.settings import Settings

__all__ = ["main"]


def _dump(obj: Any, out: IO[str]) -> None:
    out.write(json.dumps(obj, ensure_ascii=False, sort_keys=True) + "\n")


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    if path == "-":
        yield from enumerate(sys.stdin.buffer, 1)
        return
    with Path(path).open("rb") as handle:
        yield from enumerate(handle, 1)


def cmd_schema_export(args: argparse.Namespace) -> int:
    for path in export_schemas(Path(args.directory)):
        print(path)
    return 0


def cmd_normalize(args: argparse.Namespace) -> int:
    normalizer = Settings().graph().normalizer
    failed = 0
    for value in args.values:
        result = normalizer.normalize(args.kind, value)
        if isinstance(result, Identifier):
            _dump({"kind": result.kind, "input": value, "normalized": result.value}, sys.stdout)
        else:
            failed += 1
            _dump(
                {"kind": args.kind, "input": value, "rejected": result.reason, "message": result.message},
                sys.stdout,
            )
    return 1 if failed else 0


def cmd_resolve(args: argparse.Namespace) -> int:
    """Resolve a JSON-lines file of touch events with the in-memory core."""
    graph = Settings().graph()
    tune_gc()
    tally: Counter[str] = Counter()
    for number, line in _lines(args.file):
        if not line.strip():
            continue
        try:
            event = decode_touch(line.rstrip(b"\r\n"))
            result = graph.apply(event.to_touch())
        except InvalidMessage as exc:
            tally["invalid"] += 1
            _dump({"line": number, "error": exc.to_dict()}, sys.stderr)
            continue
        except IdstreamError as exc:  # e.g. a type this core does not apply yet: report, go on
            tally["refused"] += 1
            _dump({"line": number, "error": exc.to_dict()}, sys.stderr)
            continue
        tally[result.status] += 1
        tally["conflicts"] += len(result.conflicts)
        tally["rejected_identifiers"] += len(result.rejected)
        if args.changes:
            _dump(
                {
                    "event_id": result.event_id,
                    "status": result.status,
                    "profile_id": result.profile_id,
                    "changes": [c.to_dict() for c in result.changes],
                    "conflicts": [c.to_dict() for c in result.conflicts],
                    "rejected": [r.to_dict() for r in result.rejected],
                },
                sys.stdout,
            )
    if not args.changes:
        for profile in graph.profiles():
            _dump(profile, sys.stdout)
    _dump({"summary": {**dict(sorted(tally.items())), "persons": len(graph)}}, sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="idstream", description="Real-time identity resolution.")
    sub = parser.add_subparsers(dest="command", required=True)

    schema = sub.add_parser("schema", help="the wire contract").add_subparsers(dest="schema_command", required=True)
    export = schema.add_parser("export", help="write the JSON Schema of every message into DIR")
    export.add_argument("directory")
    export.set_defaults(func=cmd_schema_export)

    normalize = sub.add_parser("normalize", help="show how values of a kind normalize")
    normalize.add_argument("kind")
    normalize.add_argument("values", nargs="+")
    normalize.set_defaults(func=cmd_normalize)

    resolve = sub.add_parser("resolve", help="resolve a JSON-lines file of touch events offline")
    resolve.add_argument("file", help="path, or - for standard input")
    resolve.add_argument("--changes", action="store_true", help="print each event's outcome instead of profiles")
    resolve.set_defaults(func=cmd_resolve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
