"""moto in server mode: real HTTP endpoints for S3, IAM and STS on 127.0.0.1 that every process of a test
(and every container, through host networking) can reach.

Nothing is mocked on corral's side: s3fs and boto3 talk HTTP to moto's server, found through the standard
``AWS_ENDPOINT_URL_S3`` / ``_IAM`` / ``_STS`` variables. A conftest imports these fixtures to use them;
the server lives as long as the test package that uses it.
"""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.requirements import need

#: The credentials of the tests: moto accepts any; this secret must never show in logs or manifests.
SECRET_KEY = "corral-test-secret-9f3b1c7e2d4a"


@pytest.fixture(scope="package")
def moto_server():
    need("moto.server", "s3fs", "boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL_S3": url,
        "AWS_ENDPOINT_URL_IAM": url,
        "AWS_ENDPOINT_URL_STS": url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _forget_s3_clients()
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()
    _forget_s3_clients()


def _forget_s3_clients() -> None:
    """fsspec caches s3fs instances (and their endpoint) per process: one made for another server must
    not be reused once that server is gone."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3(moto_server):
    import boto3

    return boto3.client("s3")


def bucket_name(test: str) -> str:
    """A valid bucket name (at most 63 characters) of its own for each test, parameters included: a long
    name is cut, and a hash of the whole keeps the cut names of two parametrised tests apart."""
    name = "t-" + "".join(c if c.isalnum() else "-" for c in test.lower())
    if len(name) > 52:
        name = name[:43].strip("-") + "-" + hashlib.sha1(test.encode()).hexdigest()[:8]
    return name.strip("-")


@pytest.fixture
def bucket(s3, request):
    """A fresh, empty bucket named after the test."""
    name = bucket_name(request.node.name)
    s3.create_bucket(Bucket=name)
    return name
