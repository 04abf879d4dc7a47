"""moto in server mode: a real S3 HTTP endpoint on 127.0.0.1 that every process of a test can reach.

Nothing is mocked on corral's side: s3fs and boto3 talk HTTP to moto's server, found through the
standard ``AWS_ENDPOINT_URL_S3`` variable.
"""

from __future__ import annotations

import os

import pytest

from tests.requirements import need


@pytest.fixture(scope="session")
def moto_server():
    need("moto.server", "s3fs", "boto3")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    _, port = server.get_host_and_port()
    env = {
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
        "AWS_ENDPOINT_URL_IAM": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    server.stop()


@pytest.fixture
def s3(moto_server):
    import boto3

    return boto3.client("s3")


@pytest.fixture
def bucket(s3, request):
    """A fresh, empty bucket named after the test."""
    name = "t-" + "".join(c if c.isalnum() else "-" for c in request.node.name.lower())[:50].strip("-")
    s3.create_bucket(Bucket=name)
    return name
