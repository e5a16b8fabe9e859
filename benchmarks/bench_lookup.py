"""Lookup API benchmark: latency of single and batch lookups over HTTP, driven from a separate process.

    python benchmarks/bench_lookup.py [--persons 20000] [--rate 1000] [--seconds 10] [--batches 200] [--seed 1]
                                      [--redis-url URL] [--profile-server FILE.prof]

Prints one JSON line; progress goes to stderr. Starts a private redis-server (unless --redis-url, where
the graph is written under a fresh key prefix and deleted afterwards), fills it with `idstream generate`'s
stream through the store, and serves the API with ``python -m streams.cli serve`` in a child process.
The load comes from another process (this file run with ``--client``): asyncio and one aiohttp session
(keep-alive, at most 64 connections). Queries are the graph's phones, each written in one of the raw
spellings callers send ("+7 916 123-45-67", "8 (916) 123-45-67", "79161234567" ...), plus ~5% numbers
nobody has (404).

Targets (2-core machine): single lookups p99 <= 5 ms at 1,000 requests/s; batch of 500 p99 <= 50 ms.

Phases, each after a 2 s warm-up at the same rate:

* ``healthz_ms`` (reference): ``GET /healthz`` open loop at ``--rate``: the floor of HTTP on this machine,
  client, server loop and kernel included;
* ``lookup_ms``: ``GET /v1/lookup`` open loop at ``--rate``. Requests leave at fixed intervals whatever
  the answers do, and latency runs from the *scheduled* send time, so a stalled server is charged for
  the requests queued behind it (no coordinated omission); ``lookup_send_ms`` is the same from the moment
  the request headers were written to the socket;
* ``batch500_ms``: ``POST /v1/lookup/batch`` with 500 identifiers, one after another (closed loop);
  references: ``healthz_closed_ms``, the same number of sequential ``GET /healthz``, and ``reader500_ms``,
  the server's store read alone (``AsyncReader.identifiers`` for 500 normalized phones, in this process:
  one pipelined Redis round trip and parsing, without HTTP, normalization or JSON).

Answers are checked while measuring: ``errors`` counts statuses other than 200/404 and failed requests;
``wrong_answers`` counts checked answers (every 10th single lookup, every item of every batch) whose
status is not the expected one (found/ambiguous with the person's profile id for a known phone,
not_found for an unknown one). ``fill_s`` is the time to write the stream through the store, beside
``fill_reference_s``: the same events written as one pipelined HSET each.

Where the time goes (to read a latency against the machine it ran on): ``server_cpu_ms_per_request``
and ``busy_cores`` (CPU seconds per wall second of the server and of the load generator, per phase; from
/proc, Linux only), ``dispatch_lag_ms`` (how late the generator sent: its timer granularity and its own
load, both inside ``*_ms`` and equally inside the healthz reference) and ``redis_script_us_per_read``
(Redis' own time per read script call, from INFO commandstats, warm-ups included).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType, SimpleNamespace
from typing import Any

from benchlib import cpu_seconds, percentiles

TOKEN = "bench-token-0123456789abcdef"  # noqa: S105 - a throwaway token of a throwaway server
CONNECTIONS = 64
WARMUP_S = 2.0
BATCH = 500
CHECK_EVERY = 10  # parse and check every n-th single lookup's answer
UNKNOWN_SHARE = 0.05


def log(message: str) -> None:
    sys.stderr.write(f"[bench_lookup {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


# ----------------------------------------------------------------------------- the load generator (--client)


def _expected_ok(answer: dict[str, Any], pids: Sequence[str]) -> bool:
    status = answer.get("status")
    if not pids:
        return bool(status == "not_found")
    if status == "ambiguous":
        return True
    return status == "found" and answer.get("profile_id") in pids


class Phase:
    """The outcome of one measured phase."""

    def __init__(self) -> None:
        self.scheduled: list[float] = []  # completion - scheduled send time
        self.sent: list[float] = []  # completion - headers written
        self.lag: list[float] = []  # dispatch - scheduled send time: is the generator keeping up?
        self.statuses: Counter[int] = Counter()
        self.errors = 0
        self.failures: Counter[str] = Counter()
        self.checked = 0
        self.wrong = 0
        self.first = math.inf
        self.last = 0.0
        self.server_cpu_s: float | None = None  # the server process's CPU time over the phase (Linux)
        self.client_cpu_s: float | None = None  # this load generator's

    def summary(self, rate: float | None = None) -> dict[str, Any]:
        span = self.last - self.first
        out: dict[str, Any] = {
            "requests": len(self.scheduled),
            "latency_ms": percentiles(self.scheduled),
            "send_ms": percentiles(self.sent),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "errors": self.errors,
            "failures": dict(self.failures),
            "checked": self.checked,
            "wrong": self.wrong,
        }
        if self.server_cpu_s is not None and self.scheduled:
            out["server_cpu_ms_per_request"] = round(self.server_cpu_s * 1000 / len(self.scheduled), 3)
            out["server_busy"] = round(self.server_cpu_s / span, 3) if span > 0 else None
        if self.client_cpu_s is not None and span > 0:
            out["client_busy"] = round(self.client_cpu_s / span, 3)
        if rate is not None:
            out["achieved_rate"] = round(len(self.scheduled) / span, 1) if span > 0 else 0.0
            out["dispatch_lag_ms"] = percentiles(self.lag, ("p50", "p99", "max"))
        return out


async def _open_loop(
    session: Any,
    target: Callable[[int], tuple[Any, Sequence[str] | None]],  # (URL, owners; None: no check)
    ok_statuses: frozenset[int],
    *,
    rate: float,
    seconds: float,
    start_index: int,
) -> Phase:
    """Issue ``rate * seconds`` GETs at fixed intervals, whatever the answers do."""
    phase = Phase()
    interval = 1.0 / rate
    count = round(rate * seconds)
    pending: set[asyncio.Task[None]] = set()

    async def one(index: int, scheduled: float) -> None:
        dispatched = time.perf_counter()
        url, pids = target(index)
        ctx = SimpleNamespace(sent=None)
        try:
            async with session.get(url, trace_request_ctx=ctx) as response:
                body = await response.read()
                status = response.status
        except Exception as exc:  # every failure is counted, none ends the run
            phase.errors += 1
            phase.failures[type(exc).__name__] += 1
            return
        done = time.perf_counter()
        phase.scheduled.append(done - scheduled)
        phase.sent.append(done - (ctx.sent or dispatched))
        phase.lag.append(dispatched - scheduled)
        phase.first, phase.last = min(phase.first, scheduled), max(phase.last, done)
        phase.statuses[status] += 1
        if status not in ok_statuses:
            phase.errors += 1
        elif pids is not None and index % CHECK_EVERY == 0:
            phase.checked += 1
            try:
                ok = _expected_ok(json.loads(body), pids)
            except ValueError:
                ok = False
            phase.wrong += not ok

    t0 = time.perf_counter() + 0.01
    for i in range(count):
        scheduled = t0 + i * interval
        await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))  # 0: still yield, so answers are read
        task = asyncio.create_task(one(start_index + i, scheduled))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.gather(*pending)
    return phase


async def _timed(phase: Phase, request: Any) -> bytes | None:
    """One closed-loop request: its latency, status and errors go into ``phase``; the body if it was a 200."""
    start = time.perf_counter()
    try:
        async with request as response:
            raw: bytes = await response.read()
            status = response.status
    except Exception as exc:
        phase.errors += 1
        phase.failures[type(exc).__name__] += 1
        return None
    done = time.perf_counter()
    phase.scheduled.append(done - start)
    phase.first, phase.last = min(phase.first, start), done
    phase.statuses[status] += 1
    if status != 200:
        phase.errors += 1
        return None
    return raw


async def _closed_loop_batches(
    session: Any, base: str, queries: list[list[Any]], batches: int, rng: random.Random
) -> Phase:
    phase = Phase()
    for _ in range(batches):
        chosen = rng.sample(queries, min(BATCH, len(queries)))
        body = json.dumps({"identifiers": [{"kind": "phone", "value": q[0]} for q in chosen]}).encode()
        headers = {"Content-Type": "application/json"}
        raw = await _timed(phase, session.post(f"{base}/v1/lookup/batch", data=body, headers=headers))
        if raw is None:
            continue
        try:
            results = json.loads(raw)["results"]
        except (ValueError, KeyError):
            phase.wrong += len(chosen)
            continue
        if len(results) != len(chosen):
            phase.wrong += len(chosen)
            continue
        for q, answer in zip(chosen, results, strict=True):
            phase.checked += 1
            phase.wrong += not (answer.get("value") == q[0] and _expected_ok(answer, q[2]))
    return phase


async def _closed_loop_health(session: Any, base: str, count: int) -> Phase:
    phase = Phase()
    for _ in range(count):
        await _timed(phase, session.get(f"{base}/healthz"))
    return phase


async def run_client(plan: dict[str, Any]) -> dict[str, Any]:
    import aiohttp  # noqa: PLC0415 - only the load generator needs the client side
    from yarl import URL  # noqa: PLC0415

    base: str = plan["base"]
    rate: float = plan["rate"]
    seconds: float = plan["seconds"]
    queries: list[list[Any]] = plan["queries"]  # [raw value, E.164 or "", [profile ids]]
    rng = random.Random(plan["seed"])
    health_url = URL(f"{base}/healthz")
    lookup_urls = [URL(f"{base}/v1/lookup").with_query(kind="phone", value=q[0]) for q in queries]

    async def headers_sent(session: Any, ctx: SimpleNamespace, params: Any) -> None:
        if ctx.trace_request_ctx is not None:
            ctx.trace_request_ctx.sent = time.perf_counter()

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(headers_sent)
    connector = aiohttp.TCPConnector(limit=CONNECTIONS, keepalive_timeout=60)
    timeout = aiohttp.ClientTimeout(total=10)
    headers = {"Authorization": f"Bearer {plan['token']}"}

    def health(_: int) -> tuple[URL, Sequence[str] | None]:
        return health_url, None

    def lookup(i: int) -> tuple[URL, Sequence[str] | None]:
        return lookup_urls[i % len(queries)], queries[i % len(queries)][2]

    server_pid: int = plan["server_pid"]

    async def measured(coro: Awaitable[Phase]) -> Phase:
        before, mine = cpu_seconds(server_pid), time.process_time()
        phase = await coro
        after = cpu_seconds(server_pid)
        phase.client_cpu_s = time.process_time() - mine
        if before is not None and after is not None:
            phase.server_cpu_s = after - before
        return phase

    out: dict[str, Any] = {}
    async with aiohttp.ClientSession(
        connector=connector, timeout=timeout, headers=headers, trace_configs=[trace]
    ) as session:
        log(f"client: GET /healthz at {rate:g}/s: {WARMUP_S:g} s warm-up, {seconds:g} s measured")
        ok = frozenset({200})
        await _open_loop(session, health, ok, rate=rate, seconds=WARMUP_S, start_index=0)
        phase = await measured(_open_loop(session, health, ok, rate=rate, seconds=seconds, start_index=0))
        out["healthz"] = phase.summary(rate)

        log(f"client: GET /v1/lookup at {rate:g}/s: {WARMUP_S:g} s warm-up, {seconds:g} s measured")
        offset = rng.randrange(len(queries))
        ok = frozenset({200, 404})
        await _open_loop(session, lookup, ok, rate=rate, seconds=WARMUP_S, start_index=offset)
        offset += round(rate * WARMUP_S)
        phase = await measured(_open_loop(session, lookup, ok, rate=rate, seconds=seconds, start_index=offset))
        out["lookup"] = phase.summary(rate)

        batches: int = plan["batches"]
        log(f"client: POST /v1/lookup/batch x{BATCH}: 5 warm-up, {batches} measured, one after another")
        await _closed_loop_batches(session, base, queries, 5, rng)
        out["batch"] = (await measured(_closed_loop_batches(session, base, queries, batches, rng))).summary()
        await _closed_loop_health(session, base, 50)
        out["healthz_closed"] = (await measured(_closed_loop_health(session, base, batches))).summary()
    return out


def client_main(plan_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text(encoding="utf-8"))
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    result = asyncio.run(run_client(plan))
    sys.stdout.write(json.dumps(result) + "\n")


# ----------------------------------------------------------------------------- the driver


def _stop_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _terminate(process: subprocess.Popen[Any], name: str, timeout: float = 15.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()  # the server exits gracefully on SIGTERM (and cProfile writes its file)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        log(f"{name} ignored SIGTERM for {timeout:g} s; killing it")
        process.kill()
        process.wait(timeout)


def raw_spellings(e164: str, rng: random.Random) -> str:
    """One of the ways a caller writes a phone."""
    if not e164.startswith("+7") or len(e164) != 12:
        return e164
    d = e164[2:]
    return rng.choice(
        [
            f"+7 {d[:3]} {d[3:6]}-{d[6:8]}-{d[8:]}",
            f"8 ({d[:3]}) {d[3:6]}-{d[6:8]}-{d[8:]}",
            f"7{d}",
            f"8{d}",
            f"+7({d[:3]}){d[3:]}",
            f"{d[:3]} {d[3:6]} {d[6:8]} {d[8:]}",
            e164,
        ]
    )


def build_queries(owners: dict[str, list[str]], rng: random.Random) -> list[list[Any]]:
    """Every known phone once in a raw spelling, plus ~5% numbers nobody has; shuffled."""
    queries: list[list[Any]] = [[raw_spellings(p, rng), p, sorted(pids)] for p, pids in sorted(owners.items())]
    unknown = round(len(queries) * UNKNOWN_SHARE / (1 - UNKNOWN_SHARE))
    made: set[str] = set()
    while len(made) < unknown:
        e164 = f"+79{rng.randint(0, 99):02d}{rng.randint(0, 9_999_999):07d}"
        if e164 not in owners and e164 not in made:
            made.add(e164)
            queries.append([raw_spellings(e164, rng), e164, []])
    rng.shuffle(queries)
    return queries


def wait_ready(base: str, process: subprocess.Popen[Any], log_path: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"the API server exited at start (code {process.returncode}):\n{tail}")
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(f"{base}/healthz", timeout=1) as response,  # noqa: S310 - our loopback URL
        ):
            if response.status == 200:
                return
        time.sleep(0.05)
    raise RuntimeError(f"the API server did not answer /healthz within {timeout:g} s")


def reader_reference(redis_url: str, prefix: str, queries: list[list[Any]], rounds: int, seed: int) -> list[float]:
    """The server's store read alone, 500 normalized phones per pipelined round trip, in this process."""
    import redis.asyncio as aioredis  # noqa: PLC0415

    from identity import Identifier  # noqa: PLC0415
    from streams.reader import AsyncReader  # noqa: PLC0415
    from streams.settings import Settings  # noqa: PLC0415

    settings = Settings(redis_prefix=prefix)
    rng = random.Random(seed)
    idents = [Identifier("phone", q[1]) for q in queries]

    async def run() -> list[float]:
        client = aioredis.Redis.from_url(redis_url)
        try:
            reader = AsyncReader(client, settings.policy(), settings.graph().normalizer, prefix)
            timings = []
            for n in range(rounds + 5):
                chosen = rng.sample(idents, min(BATCH, len(idents)))
                start = time.perf_counter()
                await reader.identifiers(chosen)
                if n >= 5:
                    timings.append(time.perf_counter() - start)
            return timings
        finally:
            await client.aclose()

    return asyncio.run(run())


def fill(redis_url: str, prefix: str, persons: int, seed: int) -> tuple[dict[str, list[str]], dict[str, Any]]:
    """The generated stream through the store; the phones and their owners' profile ids."""
    import redis  # noqa: PLC0415

    from streams.generate import generate  # noqa: PLC0415
    from streams.settings import Settings  # noqa: PLC0415

    log(f"generating {persons} persons (seed {seed})")
    stream = generate(persons, seed).touches
    client = redis.Redis.from_url(redis_url)
    try:
        store = Settings(redis_prefix=prefix).redis_store(client)
        batches = [stream[i : i + BATCH] for i in range(0, len(stream), BATCH)]
        reference_key = f"{prefix}-reference"
        start = time.perf_counter()
        for batch in batches:
            pipe = client.pipeline(transaction=False)
            for touch in batch:
                pipe.hset(reference_key, touch.event_id, touch.source)
            pipe.execute()
        reference_s = time.perf_counter() - start
        client.delete(reference_key)
        log(f"filling the store with {len(stream)} touches in batches of {BATCH}")
        start = time.perf_counter()
        for batch in batches:
            store.apply_batch(batch)
        fill_s = time.perf_counter() - start
        owners: dict[str, list[str]] = {}
        for pid, idents in store.persons().items():
            for ident in idents:
                if ident.kind == "phone":
                    owners.setdefault(ident.value, []).append(pid)
    finally:
        client.close()
    return owners, {
        "events": len(stream),
        "fill_s": round(fill_s, 3),
        "fill_events_per_s": round(len(stream) / fill_s),
        "fill_reference_s": round(reference_s, 3),
    }


def script_stats(redis_url: str) -> tuple[int, int]:
    """Calls and microseconds of Redis script execution so far (EVALSHA and EVAL)."""
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(redis_url)
    try:
        stats = client.info("commandstats")
    finally:
        client.close()
    calls = usec = 0
    for name in ("cmdstat_evalsha", "cmdstat_eval"):
        calls += int(stats.get(name, {}).get("calls", 0))
        usec += int(stats.get(name, {}).get("usec", 0))
    return calls, usec


def drop_keys(redis_url: str, prefix: str) -> None:
    import redis  # noqa: PLC0415

    client = redis.Redis.from_url(redis_url)
    try:
        for pattern in (f"{{{prefix}}}:*", f"{prefix}-*"):
            keys = list(client.scan_iter(match=pattern, count=1000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i : i + 1000])
    finally:
        client.close()


@contextlib.contextmanager
def child(argv: list[str], name: str, **popen: Any) -> Iterator[subprocess.Popen[Any]]:
    process = subprocess.Popen(argv, **popen)  # noqa: S603 - our own interpreter and module
    try:
        yield process
    finally:
        _terminate(process, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--persons", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="single lookups (and /healthz) per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="measured seconds of each open-loop phase")
    parser.add_argument("--batches", type=int, default=200, help="measured batches of 500")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--redis-url", help="an existing Redis (a fresh key prefix is used and deleted)")
    parser.add_argument("--profile-server", metavar="FILE", help="run the server under cProfile, stats to FILE")
    parser.add_argument("--client", metavar="PLAN", help=argparse.SUPPRESS)  # the load generator's mode
    args = parser.parse_args()
    if args.client:
        client_main(args.client)
        return
    signal.signal(signal.SIGTERM, _stop_on_sigterm)

    from streams.embedded import free_port, start_redis  # noqa: PLC0415

    prefix = f"bench-lookup-{uuid.uuid4().hex[:8]}"
    rng = random.Random(args.seed)
    with contextlib.ExitStack() as stack:
        workdir = Path(tempfile.mkdtemp(prefix="idstream-bench-lookup-"))
        stack.callback(shutil.rmtree, workdir, ignore_errors=True)
        if args.redis_url:
            redis_url = args.redis_url
            stack.callback(drop_keys, redis_url, prefix)
        else:
            redis_url = stack.enter_context(start_redis(workdir / "redis")).url
        owners, filled = fill(redis_url, prefix, args.persons, args.seed)
        queries = build_queries(owners, rng)
        log(f"{len(owners)} phones, {len(queries) - len(owners)} unknown numbers")

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "IDSTREAM_REDIS_URL": redis_url,
            "IDSTREAM_REDIS_PREFIX": prefix,
            "IDSTREAM_API_TOKENS": json.dumps([TOKEN]),
            # `serve` finds its servers through the runtime lookup, which wants a broker address too;
            # the API never talks to it. A state file of our own keeps a running `idstream up` out of it.
            "IDSTREAM_KAFKA_BOOTSTRAP_SERVERS": os.environ.get("IDSTREAM_KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9"),
            "IDSTREAM_STATE_FILE": str(workdir / "runtime.json"),
        }
        profile = ["-m", "cProfile", "-o", str(Path(args.profile_server).resolve())] if args.profile_server else []
        server_argv = [sys.executable, *profile, "-m", "streams.cli", "serve", "--host", "127.0.0.1"]
        server_log = workdir / "server.log"
        log_handle = stack.enter_context(server_log.open("wb"))
        server = stack.enter_context(
            child(
                [*server_argv, "--port", str(port)],
                "the API server",
                env=env,
                stdout=log_handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # we stop it ourselves, gracefully, whatever the terminal does
            )
        )
        wait_ready(base, server, server_log)
        redis_before = script_stats(redis_url)
        log(f"API server up on {base} (pid {server.pid})")

        plan_path = workdir / "plan.json"
        plan = {
            "base": base,
            "server_pid": server.pid,
            "token": TOKEN,
            "rate": args.rate,
            "seconds": args.seconds,
            "batches": args.batches,
            "seed": args.seed,
            "queries": queries,
        }
        plan_path.write_text(json.dumps(plan), encoding="utf-8")
        client = stack.enter_context(
            child(
                [sys.executable, str(Path(__file__).resolve()), "--client", str(plan_path)],
                "the load generator",
                stdout=subprocess.PIPE,
            )
        )
        out, _ = client.communicate()
        if client.returncode != 0:
            raise SystemExit(f"the load generator failed (exit {client.returncode})")
        result = json.loads(out)
        if server.poll() is not None:
            raise SystemExit(f"the API server died during the run:\n{server_log.read_text(errors='replace')[-2000:]}")
        redis_after = script_stats(redis_url)
        rounds = max(20, args.batches // 8)
        log(f"store read reference: {rounds} x {BATCH} normalized phones through AsyncReader")
        reader_s = reader_reference(redis_url, prefix, queries, rounds, args.seed)
        server_errors = server_log.read_text(errors="replace").count(" ERROR ")

    health, lookup, batch = result["healthz"], result["lookup"], result["batch"]
    phases = {"healthz": "healthz", "lookup": "lookup", "batch500": "batch", "healthz_closed": "healthz_closed"}
    script_calls, script_us = (after - before for after, before in zip(redis_after, redis_before, strict=True))
    print(
        json.dumps(
            {
                "benchmark": "lookup",
                "persons": args.persons,
                "identifiers": len(owners),
                "queries": len(queries),
                "unknown_share": round((len(queries) - len(owners)) / len(queries), 3),
                **filled,
                "rate": args.rate,
                "seconds": args.seconds,
                "healthz_ms": health["latency_ms"],
                "healthz_send_ms": health["send_ms"],
                "healthz_achieved_rate": health["achieved_rate"],
                "lookup_ms": lookup["latency_ms"],
                "lookup_send_ms": lookup["send_ms"],
                "achieved_rate": lookup["achieved_rate"],
                "dispatch_lag_ms": {"healthz": health["dispatch_lag_ms"], "lookup": lookup["dispatch_lag_ms"]},
                "lookup_statuses": lookup["statuses"],
                "batches": args.batches,
                "batch500_ms": {k: batch["latency_ms"][k] for k in ("p50", "p99", "max")},
                "healthz_closed_ms": {k: result["healthz_closed"]["latency_ms"][k] for k in ("p50", "p99", "max")},
                "reader500_ms": percentiles(reader_s, ("p50", "p99", "max")),
                "redis_script_us_per_read": round(script_us / script_calls, 1) if script_calls else None,
                "redis_script_s_during_load": round(script_us / 1e6, 3),
                "server_cpu_ms_per_request": {
                    name: result[key].get("server_cpu_ms_per_request") for name, key in phases.items()
                },
                "busy_cores": {
                    name: {"server": result[key].get("server_busy"), "client": result[key].get("client_busy")}
                    for name, key in phases.items()
                },
                "errors": health["errors"] + lookup["errors"] + batch["errors"] + result["healthz_closed"]["errors"],
                "errors_by_phase": {
                    name: {"errors": result[name]["errors"], "failures": result[name]["failures"]}
                    for name in ("healthz", "lookup", "batch", "healthz_closed")
                },
                "wrong_answers": lookup["wrong"] + batch["wrong"],
                "checked_answers": lookup["checked"] + batch["checked"],
                "server_log_errors": server_errors,
                "target_ms": {"lookup_p99": 5, "batch500_p99": 50},
                "machine": {
                    "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": f"{platform.system()} {platform.machine()}",
                },
            }
        )
    )


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the children and the temp dir are already gone
        log("interrupted")
        sys.exit(130)
