"""A reverse proxy in front of moto that answers ``503 SlowDown`` to every Nth request (a test fixture).

Real S3 answers ``503 SlowDown`` when a prefix gets more requests than it can take; the client must back
off and retry. Every request through the proxy is recorded (method, path, query, Range header), so a test
can also check *how* corral talks to S3: ranged GETs for splits, multipart uploads for large writes.
``delay`` adds a round trip's latency to every request, and ``in_flight`` records how many requests were
under way at once when each one started, so a test can tell parallel requests from sequential ones.
``deny`` answers ``403 AccessDenied`` to the requests it picks, as a bucket policy would. It proxies any
HTTP API (the GCS emulator's too). It records who sent each request (``User-Agent``) and its
``Authorization`` header (tests use fake keys).
"""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from yarl import URL

SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message><RequestId>corral-fault</RequestId></Error>"
)
ACCESS_DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message><RequestId>corral-fault</RequestId></Error>"
)
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: str
    range: str | None
    faulted: bool
    copy_source: str | None = None  #: S3 CopyObject's x-amz-copy-source header
    in_flight: int = field(default=1, compare=False)  #: requests under way when this one started, itself included
    agent: str | None = field(default=None, compare=False)  #: the User-Agent header: who sent it
    authorization: str | None = field(default=None, compare=False)  #: the Authorization header (a test's fake keys)


class FaultyProxy:
    """``with FaultyProxy(moto_url, every=3) as proxy:`` then point ``AWS_ENDPOINT_URL_S3`` at ``proxy.url``."""

    def __init__(self, target: str, every: int = 3, delay: float = 0.0,
                 deny: Callable[[str, str], bool] | None = None) -> None:
        self.target = target.rstrip("/")
        self.every = every
        self.deny = deny  #: (method, path) -> whether to answer 403 AccessDenied, as a bucket policy would
        self.delay = delay
        self._in_flight = 0
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._count = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.url = ""

    @property
    def faults(self) -> int:
        return sum(1 for s in self.seen if s.faulted)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self._in_flight += 1
            in_flight = self._in_flight
        try:
            return await self._forward(request, in_flight)
        finally:
            with self._lock:
                self._in_flight -= 1

    async def _forward(self, request: web.Request, in_flight: int) -> web.StreamResponse:
        body = await request.read()
        with self._lock:
            self._count += 1
            faulted = self.every > 0 and self._count % self.every == 0
            self.seen.append(Seen(request.method, request.path, request.query_string,
                                  request.headers.get("Range"), faulted, request.headers.get("x-amz-copy-source"),
                                  in_flight, request.headers.get("User-Agent"),
                                  request.headers.get("Authorization")))
        if self.delay:
            await asyncio.sleep(self.delay)
        if faulted:
            return web.Response(status=503, body=SLOW_DOWN, content_type="application/xml")
        if self.deny is not None and self.deny(request.method, request.path):
            return web.Response(status=403, body=b"" if request.method == "HEAD" else ACCESS_DENIED,
                                content_type="application/xml")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        url = self.target + request.raw_path  # as sent: path and query, encoding untouched
        assert self._session is not None
        async with self._session.request(request.method, URL(url, encoded=True), headers=headers, data=body,
                                         allow_redirects=False) as upstream:
            data = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_BY_HOP}
            if request.method == "HEAD":  # no body: the object's length travels in the header alone
                response = web.StreamResponse(status=upstream.status, headers=out)
                response.content_length = int(upstream.headers.get("Content-Length", 0))
                await response.prepare(request)
                await response.write_eof()
                return response
            return web.Response(status=upstream.status, body=data, headers=out)

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self._session = aiohttp.ClientSession(auto_decompress=False, timeout=aiohttp.ClientTimeout(total=300))
        app = web.Application(client_max_size=1 << 30)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(runner, sock)
        await site.start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self._session.close()
            await runner.cleanup()

    def __enter__(self) -> FaultyProxy:
        def serve() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self._main())
            self._loop.close()

        self._session = None
        self._thread = threading.Thread(target=serve, name="faulty-s3-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
