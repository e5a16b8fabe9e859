"""Helpers shared by the streaming benchmarks (ingest, latency): private servers, a worker process, profiles.

Not a test helper: the benchmarks are scripts (``python benchmarks/bench_*.py``) that print one JSON line.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def log(name: str, message: str) -> None:
    sys.stderr.write(f"[{name} {time.strftime('%H:%M:%S')}] {message}\n")
    sys.stderr.flush()


def percentiles(values: Sequence[float], points: Sequence[str] = ("p50", "p95", "p99", "max")) -> dict[str, float]:
    """Nearest-rank percentiles of seconds, in milliseconds."""
    ordered = sorted(values)
    out: dict[str, float] = {}
    for name in points:
        if not ordered:
            out[name] = math.nan
            continue
        rank = len(ordered) if name == "max" else max(1, math.ceil(float(name[1:]) / 100 * len(ordered)))
        out[name] = round(ordered[rank - 1] * 1000, 3)
    return out


def machine() -> dict[str, str]:
    return {"python": platform.python_version(), "machine": f"{platform.machine()} {os.cpu_count()} cpu"}


def wait_for(condition: Callable[[], Any], timeout: float, what: str, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


@dataclass
class Deployment:
    """A private broker and Redis, and the idstream settings (topics, group, key prefix) of one run."""

    kafka: str
    redis_url: str
    tmp: Path
    partitions: int
    overrides: dict[str, str] = field(default_factory=dict)
    broker_pid: int = 0
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "IDSTREAM_KAFKA_BOOTSTRAP_SERVERS": self.kafka,
            "IDSTREAM_REDIS_URL": self.redis_url,
            "IDSTREAM_APP_ID": f"bench-{self.tag}",
            "IDSTREAM_TOUCH_TOPICS": json.dumps([self.touch_topic]),
            "IDSTREAM_REDIS_PREFIX": f"bench-{self.tag}",
            "IDSTREAM_TOPIC_PARTITIONS": str(self.partitions),
            "IDSTREAM_STATE_FILE": str(self.tmp / "runtime.json"),
            **self.overrides,
        }

    @property
    def touch_topic(self) -> str:
        return "touches.bench"

    def settings(self) -> Any:
        """The run's settings, read the way a worker reads them (this process's environment is the run's)."""
        from streams.settings import Settings  # noqa: PLC0415

        os.environ.update({k: v for k, v in self.env.items() if k.startswith("IDSTREAM_")})
        return Settings()

    def start_worker(self) -> subprocess.Popen[bytes]:
        out = (self.tmp / f"worker-{len(self.workers)}.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"], env=self.env, cwd=ROOT, stdout=out, stderr=out
        )
        self.workers.append(worker)
        return worker

    def start_faust_noop(self, count_file: Path) -> subprocess.Popen[bytes]:
        """The Faust reference (``benchmarks/faust_noop.py``): a do-nothing agent on the touch topic."""
        out = (self.tmp / "faust-noop.log").open("wb")
        script = Path(__file__).with_name("faust_noop.py")
        noop = subprocess.Popen(  # noqa: S603 - our own argv
            [sys.executable, str(script), str(count_file)], env=self.env, cwd=ROOT, stdout=out, stderr=out
        )
        self.workers.append(noop)
        return noop

    def worker_log(self, i: int = 0) -> str:
        return (self.tmp / f"worker-{i}.log").read_text(errors="replace")

    def stop(self) -> None:
        for worker in self.workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in self.workers:
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()


@contextmanager
def deployment(partitions: int, overrides: dict[str, str], *, redis_url: str | None = None) -> Iterator[Deployment]:
    """A broker and a Redis of our own (or the given Redis, under a fresh key prefix) for one run."""
    from streams.app import ensure_topics  # noqa: PLC0415
    from streams.embedded import start_broker, start_redis  # noqa: PLC0415

    tmp = Path(tempfile.mkdtemp(prefix="idstream-bench-"))
    broker = start_broker()
    server = None if redis_url else start_redis()
    try:
        url = redis_url or (server.url if server else "")
        d = Deployment(broker.url, url, tmp, partitions, overrides, broker.process.pid)
        ensure_topics(d.settings(), d.kafka)
        try:
            yield d
        finally:
            d.stop()
    finally:
        broker.stop()
        if server is not None:
            server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


#: The hashes of the identity graph and its index; the golden-profile state is ``uagg`` and ``prof``.
GRAPH_KEYS = ("idx", "unit", "uver", "redirect")
PROFILE_KEYS = ("uagg", "prof")


def redis_memory(client: Any, prefix: str) -> dict[str, Any]:
    """Redis bytes of one store (``MEMORY USAGE`` per key, exact): per identifier of the graph, per profile."""
    from streams.redis_store import KEY_NAMES  # noqa: PLC0415

    key = {name: f"{{{prefix}}}:{name}" for name in KEY_NAMES}
    for day in client.scan_iter(match=f"{{{prefix}}}:seen:*", count=1000):
        name = day.decode() if isinstance(day, bytes) else day
        key["seen:" + name.rsplit(":", 1)[-1]] = name
    usage = {name: int(client.memory_usage(k, samples=0) or 0) for name, k in key.items()}
    identifiers = int(client.hlen(key["idx"]))
    persons = int(client.hlen(key["prof"]))
    graph = sum(usage[k] for k in GRAPH_KEYS)
    profiles = sum(usage[k] for k in PROFILE_KEYS)
    return {
        "identifiers": identifiers,
        "persons": persons,
        "graph_bytes_per_identifier": round(graph / max(identifiers, 1)),
        "profile_bytes_per_person": round(profiles / max(persons, 1)),
        "applied_id_bytes": sum(v for k, v in usage.items() if k.startswith("seen:")),
        "other_bytes": sum(usage.values()) - graph - profiles,
        "bytes_by_key": usage,
    }


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def py_spy(pid: int, out: Path | None) -> Iterator[None]:
    """Sample a process with py-spy while the block runs (nothing when ``out`` is None or py-spy is missing)."""
    exe = shutil.which("py-spy")
    if out is None or exe is None:
        if out is not None:
            log("py-spy", "py-spy is not installed (pip install py-spy): no profile")
        yield
        return
    raw = out.with_suffix(".txt")
    spy = subprocess.Popen(  # noqa: S603 - our own argv
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--format",
            "raw",
            "--output",
            str(raw),
            "--rate",
            "200",
            "--nonblocking",
            "--idle",
            "--threads",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
        try:
            spy.wait(30)
        except subprocess.TimeoutExpired:
            spy.kill()


def summarize_profile(raw: Path, top: int = 25) -> dict[str, float]:
    """Share of samples per function, inclusive (a function counted once per stack), from py-spy's raw output."""
    inclusive: Counter[str] = Counter()
    total = 0
    if not raw.exists():
        return {}
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = {f.split(" (")[0] + " (" + f.split(" (")[1].split(":")[0] + ")" if " (" in f else f
                  for f in stack.split(";")}  # fmt: skip
        for frame in frames:
            inclusive[frame] += n
    return {name: round(n / total, 3) for name, n in inclusive.most_common(top)} if total else {}
