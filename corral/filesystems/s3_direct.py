"""Ranged reads of S3 objects as one GET each, signed and sent by botocore's own parts, without the rest of
the client's per-request pipeline.

Why: a map task over many small objects makes one GET per object. Through s3fs every GET goes through
aiobotocore's whole request pipeline (parameter checks, endpoint rules, event hooks, the response parsed
down to its timestamps) and a hop to fsspec's event-loop thread: 2.7-3.6 ms of CPU an object here. At a
Lambda function's share of a CPU (0.29 vCPU at 512 MB) that is 9-12 ms of billed time per GET, more than
S3 takes to answer one. Here a GET is botocore's SigV4 signer for S3 (``S3SigV4Auth``) and botocore's
urllib3 session (``URLLib3Session``: its connection pools, TLS verification, proxies): ~1.2 ms.

What botocore resolved for the s3fs instance's client is what is used: the object's URL as botocore
addresses it (endpoint, ``AWS_ENDPOINT_URL_S3``, path or virtual-host style: presigned once per bucket),
the client's region, its credentials (read again every minute, so refreshed ones are picked up), its TLS,
proxy and timeout settings. Anything else is left to s3fs, which then makes the read with its retries
and raises its errors: any answer but 200 or 206 (a missing object, access denied, another region's
redirect, SlowDown, a server error) and any failed connection. A bucket that answers a redirect, a bad
request or a refusal is read through s3fs from then on. The reader stands aside for an s3fs set up in
ways it does not handle: anonymous, requester pays, customer encryption keys (any extra request
arguments), versions, a signature other than SigV4, an S3 Express bucket.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any
from urllib.parse import urlsplit

from corral._version import __version__

log = logging.getLogger("corral.s3")

_PROBE = "corral-address-probe"
#: Seconds between two reads of the client's credentials (botocore refreshes expiring ones early).
CREDENTIALS_TTL = 60.0
#: Connections kept open per host (a map task reads 16 objects at once).
POOL_CONNECTIONS = 32
#: Answers after which a bucket is read through s3fs only: its requests need what this reader does not do.
_GIVE_UP = frozenset({301, 307, 400, 403})


class DirectReader:
    """Signed ranged GETs for one s3fs instance's client; ``read`` answers None for "ask s3fs"."""

    def __init__(self, fs: Any, client: Any, http: Any) -> None:
        self.fs = fs
        self.client = client
        self.region = client.meta.region_name or "us-east-1"
        self._http = http
        self._credentials = client._request_signer._credentials
        self._auth: Any = None
        self._auth_made = 0.0
        self._buckets: dict[str, str | None] = {}  # bucket -> URL prefix of its objects, None: s3fs's
        self._lock = threading.Lock()

    @classmethod
    def create(cls, fs: Any) -> DirectReader | None:
        """A reader for ``fs`` (an s3fs S3FileSystem), or None where its set-up needs s3fs for every read."""
        if getattr(fs, "anon", False) or getattr(fs, "version_aware", False):
            return None
        if getattr(fs, "req_kw", None) or getattr(fs, "s3_additional_kwargs", None):
            return None  # requester pays, SSE-C keys...: arguments every request must carry
        try:
            from botocore.httpsession import URLLib3Session
            from fsspec.asyn import sync

            client = sync(fs.loop, fs.set_session)
            config = client.meta.config
            if config.signature_version not in (None, "s3v4", "v4") or client._request_signer._credentials is None:
                return None
            http = URLLib3Session(
                verify=getattr(client._endpoint.http_session, "_verify", True),  # what botocore resolved
                proxies=config.proxies, proxies_config=config.proxies_config, client_cert=config.client_cert,
                timeout=(config.connect_timeout, config.read_timeout), max_pool_connections=POOL_CONNECTIONS,
            )
            reader = cls(fs, client, http)
            return reader if reader._signer() is not None else None
        except Exception as exc:  # an s3fs or aiobotocore this does not know: s3fs reads everything
            log.debug("direct S3 reads are off: %s: %s", type(exc).__name__, exc)
            return None

    def read(self, bucket: str, key: str, start: int, end: int) -> bytes | None:
        """Bytes ``[start, end)`` of the object (fewer where it ends sooner), or None: s3fs must read it."""
        from botocore.awsrequest import AWSRequest
        from botocore.utils import percent_encode

        prefix = self._prefix(bucket)
        auth = self._signer()
        if prefix is None or auth is None:
            return None
        # the key in the URL as botocore's serializer writes it (S3 signs the path as sent)
        request = AWSRequest("GET", prefix + percent_encode(key, safe="/~"),
                             headers={"Range": f"bytes={start}-{end - 1}", "User-Agent": f"corral/{__version__}"})
        try:
            auth.add_auth(request)
            response = self._http.send(request.prepare())
            status, body = response.status_code, response.content
        except Exception as exc:  # a connection that failed or broke: s3fs retries
            log.debug("direct read of s3://%s/%s failed: %s: %s", bucket, key, type(exc).__name__, exc)
            return None
        if status == 206 and len(body) <= end - start:
            return body
        if status == 200:  # a store that ignores Range sends the whole object
            return body[start:end]
        if status in _GIVE_UP:
            with self._lock:
                self._buckets[bucket] = None
            log.debug("s3://%s answers %d to direct reads: reading it through s3fs", bucket, status)
        return None

    def _prefix(self, bucket: str) -> str | None:
        """The URL of the bucket's objects up to their key, as botocore addresses them; None: not here."""
        try:
            return self._buckets[bucket]
        except KeyError:
            pass
        prefix = None
        if not bucket.endswith("--x-s3"):  # S3 Express signs with sessions of its own
            try:
                from fsspec.asyn import sync

                url = sync(self.fs.loop, self.client.generate_presigned_url, "get_object",
                           {"Bucket": bucket, "Key": _PROBE})
                parts = urlsplit(url)
                if parts.scheme in ("http", "https") and parts.path in ("/" + _PROBE, f"/{bucket}/{_PROBE}"):
                    prefix = f"{parts.scheme}://{parts.netloc}{parts.path[: -len(_PROBE)]}"
            except Exception as exc:
                log.debug("direct reads of s3://%s are off: %s: %s", bucket, type(exc).__name__, exc)
        with self._lock:
            self._buckets[bucket] = prefix
        return prefix

    def _signer(self) -> Any:
        """botocore's S3 SigV4 signer with the client's current credentials (None: it has none)."""
        now = time.monotonic()
        if self._auth is None or now - self._auth_made > CREDENTIALS_TTL:
            from botocore.auth import S3SigV4Auth
            from fsspec.asyn import sync

            try:
                frozen = sync(self.fs.loop, self._credentials.get_frozen_credentials)
            except Exception as exc:
                log.debug("cannot read the S3 client's credentials: %s: %s", type(exc).__name__, exc)
                return None
            if not frozen.access_key or not frozen.secret_key:
                return None
            self._auth, self._auth_made = S3SigV4Auth(frozen, "s3", self.region), now
        return self._auth
