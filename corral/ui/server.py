"""The live page's web server: aiohttp on its own thread and event loop, in the driver's process.

``GET /`` is the page, ``GET /api/state`` the run's state as JSON, ``GET /api/events`` the same state
pushed as server-sent events (aiohttp-sse) whenever it changes, ``/static/`` the page's script, style
and Chart.js. It listens on 127.0.0.1 unless ``--ui-host`` says otherwise; on a loopback address it
answers only requests addressed to this machine by name (a web page elsewhere cannot rebind a domain
to it and read the state).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import socket
import threading
from importlib.resources import files
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp_sse import sse_response

from corral.errors import UsageError
from corral.ui.state import LiveState

STATIC = Path(str(files("corral.ui"))) / "static"
VENDOR = Path(str(files("corral.ui"))) / "vendor"
_CONTENT_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
#: How often the server checks the state for changes, and how often at most it pushes a new one.
POLL = 0.25
PUSH = 1.0


def url_for(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class LiveServer:
    """Serves ``state`` on ``host``:``port`` (0: a free port) from a thread of its own."""

    def __init__(self, state: LiveState, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = state
        self.host, self.port = host, port
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="corral-live-view", daemon=True)
        self._runner: web.AppRunner | None = None
        self._closing: asyncio.Event | None = None
        self._streams = 0  # event streams open
        self._ticker: asyncio.Task[None] | None = None
        self._stopping = threading.Lock()
        # the page's files, read now: served from memory, they need no thread pool, which the
        # interpreter refuses to use once it is exiting (the page must load while --ui-linger waits)
        self._files = {(folder.name, path.name): (path.read_bytes(), _CONTENT_TYPES[path.suffix])
                       for folder in (STATIC, VENDOR) for path in folder.iterdir() if path.suffix in _CONTENT_TYPES}

    def start(self) -> str:
        """Bind and serve; return the page's URL. A port that cannot be had is a UsageError."""
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        except OSError as exc:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)
            # a host name that does not resolve says so (its errno is the resolver's, not the OS's)
            if isinstance(exc, socket.gaierror) or not exc.errno:
                reason = exc.strerror or str(exc)
            else:
                reason = os.strerror(exc.errno)
            raise UsageError(f"cannot serve the live view on {self.host}:{self.port} (--ui-host, --ui-port): "
                             f"{reason[:1].lower()}{reason[1:]}") from None
        return self.url

    def stop(self) -> None:
        """Send the last state to every open page, then stop serving (once; from any thread)."""
        with self._stopping:
            if not self._thread.is_alive() or self._loop.is_closed():
                return
            self._stop_now()

    def _stop_now(self) -> None:
        try:
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    # --- on the server's loop -------------------------------------------------------------------
    async def _start(self) -> None:
        self._closing = asyncio.Event()
        app = web.Application(middlewares=[self._only_this_host] if _is_loopback(self.host) else [])
        app.router.add_get("/", self._page)
        app.router.add_get("/api/state", self._api_state)
        app.router.add_get("/api/events", self._events)
        app.router.add_get("/{folder:static|vendor}/{name}", self._file)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        try:
            await site.start()
        except OSError:
            await self._runner.cleanup()
            raise
        self.port = int(self._runner.addresses[0][1])
        self.url = url_for(self.host, self.port)
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    async def _stop(self) -> None:
        assert self._closing is not None and self._runner is not None
        self._closing.set()
        for _ in range(40):  # the open event streams send the final state and end (within a second)
            if not self._streams:
                break
            await asyncio.sleep(0.025)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        await self._runner.cleanup()

    async def _tick(self) -> None:
        assert self._closing is not None
        while not self._closing.is_set():
            self.state.tick()
            await asyncio.sleep(1.0)

    @web.middleware
    async def _only_this_host(self, request: web.Request, handler: Any) -> web.StreamResponse:
        host = (request.host or "").rsplit(":", 1)[0].strip("[]")
        if host not in ("127.0.0.1", "localhost", "::1", self.host):
            raise web.HTTPMisdirectedRequest(text=f"this live view answers requests for 127.0.0.1, not {host}\n")
        return await handler(request)

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return self._file_response("static", "live.html")

    async def _file(self, request: web.Request) -> web.StreamResponse:
        return self._file_response(request.match_info["folder"], request.match_info["name"])

    def _file_response(self, folder: str, name: str) -> web.Response:
        found = self._files.get((folder, name))
        if found is None:
            raise web.HTTPNotFound()
        body, content_type = found
        return web.Response(body=body, content_type=content_type, charset="utf-8",
                            headers={"Cache-Control": "no-store"})

    async def _api_state(self, request: web.Request) -> web.Response:
        return web.json_response(self.state.snapshot(), dumps=_dumps, headers={"Cache-Control": "no-store"})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        assert self._closing is not None
        self._streams += 1
        try:
            return await self._stream(request)
        except ConnectionError:  # the page went away (closed, reloaded): nothing to tell anyone
            return web.Response(status=204)
        finally:
            self._streams -= 1

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        assert self._closing is not None
        async with sse_response(request) as stream:
            sent, sent_at = -1, 0.0
            loop = asyncio.get_running_loop()
            while True:
                closing = self._closing.is_set()
                # a new state at most every PUSH seconds (a long run's state is a few hundred KB), the last at once
                if self.state.version != sent and (closing or loop.time() - sent_at >= PUSH):
                    sent, sent_at = self.state.version, loop.time()
                    await stream.send(_dumps(self.state.snapshot()), event="state")
                if closing or not stream.is_connected():
                    break
                try:
                    await asyncio.wait_for(self._closing.wait(), POLL)
                except TimeoutError:
                    pass
        return stream


def _dumps(data: Any) -> str:
    return json.dumps(data, default=str, separators=(",", ":"))
