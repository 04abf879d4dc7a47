"""A stand-in for Google's IAM API (serviceAccounts) and Cloud Storage's bucket IAM policies, neither of
which can run here: an HTTP server on 127.0.0.1 keeping them in dicts, answering the requests corral
makes (through google-auth's AuthorizedSession) as Google documents them, errors in Google's JSON shape.
It checks what it can check offline: a policy with conditions must be version 3, an etag must match."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from typing import Any

from aiohttp import web


class IamStandIn:
    def __init__(self) -> None:
        self.accounts: dict[str, dict[str, Any]] = {}  # email -> account
        self.policies: dict[str, dict[str, Any]] = {}  # bucket -> policy
        self.requests: list[tuple[str, str]] = []  # (method, path) in order
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None

    # --- the two APIs --------------------------------------------------------------------------------
    @staticmethod
    def error(code: int, status: str, message: str) -> web.Response:
        return web.json_response({"error": {"code": code, "status": status, "message": message}}, status=code)

    async def get_account(self, request: web.Request) -> web.Response:
        account = self.accounts.get(request.match_info["email"])
        if account is None:
            return self.error(404, "NOT_FOUND", f"Unknown service account {request.match_info['email']}")
        return web.json_response(account)

    async def create_account(self, request: web.Request) -> web.Response:
        body = await request.json()
        project = request.match_info["project"]
        email = f"{body['accountId']}@{project}.iam.gserviceaccount.com"
        if email in self.accounts:
            return self.error(409, "ALREADY_EXISTS", f"Service account {body['accountId']} already exists")
        account = {"name": f"projects/{project}/serviceAccounts/{email}", "email": email,
                   "projectId": project, **body.get("serviceAccount", {})}
        self.accounts[email] = account
        return web.json_response(account)

    async def patch_account(self, request: web.Request) -> web.Response:
        account = self.accounts.get(request.match_info["email"])
        if account is None:
            return self.error(404, "NOT_FOUND", "Unknown service account")
        body = await request.json()
        for field in body.get("updateMask", "").split(","):
            account[field] = body["serviceAccount"][field]
        return web.json_response(account)

    async def delete_account(self, request: web.Request) -> web.Response:
        if self.accounts.pop(request.match_info["email"], None) is None:
            return self.error(404, "NOT_FOUND", "Unknown service account")
        return web.json_response({})

    async def get_policy(self, request: web.Request) -> web.Response:
        bucket = request.match_info["bucket"]
        policy = self.policies.setdefault(bucket, {"bindings": [], "etag": "CAE=", "version": 1})
        return web.json_response({"kind": "storage#policy", "resourceId": f"projects/_/buckets/{bucket}", **policy})

    async def set_policy(self, request: web.Request) -> web.Response:
        bucket = request.match_info["bucket"]
        body = await request.json()
        current = self.policies.get(bucket, {"etag": "CAE="})
        if body.get("etag") and body["etag"] != current["etag"]:
            return self.error(412, "FAILED_PRECONDITION", "etag mismatch")
        if any(b.get("condition") for b in body.get("bindings", [])) and body.get("version") != 3:
            return self.error(400, "INVALID_ARGUMENT", "conditions need policy version 3")
        etag = f"CA{len(self.requests)}="
        self.policies[bucket] = {"bindings": body.get("bindings", []), "etag": etag, "version": body.get("version")}
        return web.json_response(self.policies[bucket])

    @web.middleware
    async def record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        return await handler(request)

    # --- life ------------------------------------------------------------------------------------------
    def __enter__(self) -> IamStandIn:
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)
        self._thread.start()
        self._ready.wait(10)
        return self

    async def _serve(self) -> None:
        app = web.Application(middlewares=[self.record])
        iam = "/iam/v1/projects/{project}/serviceAccounts"
        app.router.add_get(iam + "/{email}", self.get_account)
        app.router.add_post(iam, self.create_account)
        app.router.add_patch(iam + "/{email}", self.patch_account)
        app.router.add_delete(iam + "/{email}", self.delete_account)
        app.router.add_get("/storage/v1/b/{bucket}/iam", self.get_policy)
        app.router.add_put("/storage/v1/b/{bucket}/iam", self.set_policy)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        site = web.SockSite(runner, sock)
        await site.start()
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._ready.set()
        await self._stop.wait()
        await runner.cleanup()

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def api(self) -> Any:
        """corral's IamApi, through google-auth's AuthorizedSession (anonymous: the stand-in checks no token)."""
        from corral_gcf.iam import IamApi
        from google.auth.credentials import AnonymousCredentials
        from google.auth.transport.requests import AuthorizedSession

        return IamApi(AuthorizedSession(AnonymousCredentials()), iam_url=f"{self.url}/iam/v1",
                      storage_url=f"{self.url}/storage/v1")


def dumps(value: Any) -> str:
    return json.dumps(value, indent=1, sort_keys=True)
