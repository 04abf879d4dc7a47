"""Fixtures for the emulator tests: a real Docker engine, a real emulator, a real boto3 client.

Without a Docker engine the tests are skipped, except in CI (``CI=true``) where that is an error.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import boto3
import pytest
from botocore.config import Config


def _unavailable(reason: str) -> None:
    """Skip on a user's machine; fail in CI (``CI=true``), where a skipped test would prove nothing."""
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must run the emulator tests, but {reason}", pytrace=False)
    pytest.skip(reason)


def zip_files(files: dict[str, str | bytes], modes: dict[str, int] | None = None) -> bytes:
    """A deployment package holding ``files`` (name -> content); ``modes`` sets Unix permissions."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = ((modes or {}).get(name, 0o644) | 0o100000) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, content)
    return buffer.getvalue()


def zip_folder(folder: Path, extra: dict[str, str | bytes], modes: dict[str, int]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                archive.write(path, path.relative_to(folder).as_posix())
        for name, content in extra.items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (modes.get(name, 0o644) | 0o100000) << 16
            archive.writestr(info, content)
    return buffer.getvalue()


def make_client(endpoint: str, read_timeout: int = 120):
    return boto3.client(
        "lambda",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        # No retries: the tests look at throttling and errors as they come.
        config=Config(retries={"total_max_attempts": 1}, read_timeout=read_timeout, connect_timeout=10),
    )


def invoke(client, name: str, event=None, **kwargs):
    """Invoke ``name`` with ``event`` as JSON; return (decoded payload, boto3 response)."""
    response = client.invoke(FunctionName=name, Payload=json.dumps({} if event is None else event), **kwargs)
    raw = response["Payload"].read()
    return (json.loads(raw) if raw else None), response


def corral_headers(response) -> dict[str, str]:
    return {k: v for k, v in response["ResponseMetadata"]["HTTPHeaders"].items() if k.startswith("x-")}


@pytest.fixture(scope="session")
def call(lambda_client):
    """``call(name, event, **invoke_kwargs)`` -> (decoded payload, boto3 response)."""
    return lambda name, event=None, **kwargs: invoke(lambda_client, name, event, **kwargs)




@pytest.fixture(scope="session")
def shared_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("mounted")
    folder.chmod(0o777)
    return folder


@pytest.fixture(scope="session")
def emulator(docker_engine, shared_folder):
    from corral_emulator import Emulator

    # without Lambda's CPU share (the default, tested in test_aws_cli.py): 128 MB functions get a whole CPU, so
    # that these tests do not wait on 7 % of one
    emu = Emulator(max_concurrency=8, mounts=[str(shared_folder)], idle_timeout=120, cloud_cpu=False)
    emu.start()
    yield emu
    emu.stop()


@pytest.fixture(scope="session")
def lambda_client(emulator):
    return make_client(emulator.endpoint)


@pytest.fixture
def make_function(lambda_client):
    """Create a function from handler source (``app.handler``); deleted after the test."""
    created: list[str] = []

    def create(source: str | None = None, *, files: dict | None = None, zip_bytes: bytes | None = None,
               memory: int = 128, timeout: int = 10, env: dict | None = None, runtime: str = "python3.11",
               handler: str = "app.handler", name: str | None = None) -> str:
        name = name or f"t-{uuid.uuid4().hex[:10]}"
        if zip_bytes is None:
            zip_bytes = zip_files(files or {"app.py": source or ""})
        kwargs = {"Environment": {"Variables": env}} if env else {}
        lambda_client.create_function(
            FunctionName=name, Runtime=runtime, Role="arn:aws:iam::000000000000:role/corral-test",
            Handler=handler, Code={"ZipFile": zip_bytes}, MemorySize=memory, Timeout=timeout, **kwargs)
        created.append(name)
        return name

    yield create
    for name in created:
        try:
            lambda_client.delete_function(FunctionName=name)
        except lambda_client.exceptions.ResourceNotFoundException:
            pass


@pytest.fixture(scope="session")
def awslambdaric_dir(tmp_path_factory) -> Path:
    """AWS's runtime interface client, installed for the container's Python (3.11, manylinux x86_64)."""
    target = tmp_path_factory.mktemp("awslambdaric")
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "--target", str(target), "--only-binary=:all:", "--platform", "manylinux2014_x86_64",
               "--python-version", "3.11", "--implementation", "cp", "awslambdaric"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        _unavailable(f"cannot pip install awslambdaric: {result.stderr[-2000:]}")
    return target


@pytest.fixture(scope="session")
def package():
    """``package({"app.py": source, ...}, modes)`` -> zip bytes."""
    return zip_files


@pytest.fixture(scope="session")
def package_folder():
    """``package_folder(folder, extra_files, modes)`` -> zip bytes of a folder plus extra files."""
    return zip_folder


def report_line(log_result: str) -> str:
    import base64

    text = base64.b64decode(log_result).decode()
    return next(line for line in text.splitlines() if line.startswith("REPORT "))


@pytest.fixture(scope="session")
def report_of():
    """``report_of(response)`` -> the REPORT line of an invoke made with LogType="Tail"."""
    return lambda response: report_line(response["LogResult"])


@pytest.fixture(scope="session")
def headers_of():
    """``headers_of(response)`` -> the x-* response headers (lower-case names)."""
    return corral_headers


@pytest.fixture(scope="session")
def client_for():
    """``client_for(endpoint)`` -> a boto3 Lambda client without retries."""
    return make_client


# ---------------------------------------------------------------- Cloud Functions (the same emulator)
GCF_PARENT = "projects/corral-test/locations/us-central1"


def make_gcf_client(endpoint: str):
    """Google's own ``FunctionServiceClient`` (REST transport, anonymous credentials) on an emulator."""
    from tests.requirements import need

    need("google.cloud.functions_v2", "google.auth", "requests")
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import functions_v2

    return functions_v2.FunctionServiceClient(
        transport="rest", client_options=ClientOptions(api_endpoint=endpoint), credentials=AnonymousCredentials())


def create_function(client, function_id: str, source: str, **service):
    """Upload ``source`` as main.py and create ``function_id`` (entry point ``handler``); the Operation."""
    storage = upload_source(client, {"main.py": source})
    return client.create_function(request={"parent": GCF_PARENT, "function_id": function_id, "function": {
        "build_config": {"runtime": "python311", "entry_point": "handler", "source": {"storage_source": storage}},
        "service_config": service}})


@pytest.fixture(scope="session")
def gcf_client(emulator):
    return make_gcf_client(emulator.endpoint)


@pytest.fixture(scope="session")
def service_account_key(emulator):
    """A key file's data whose token_uri is the emulator's (for google-auth)."""
    return emulator.service_account_key(project="corral-test")


@pytest.fixture(scope="session")
def id_token_for(service_account_key):
    """``id_token_for(url)`` -> an ID token for that audience, minted by google-auth at the emulator's /token."""
    import google.auth.transport.requests
    from google.oauth2 import service_account

    def mint(audience: str) -> str:
        credentials = service_account.IDTokenCredentials.from_service_account_info(
            service_account_key, target_audience=audience)
        credentials.refresh(google.auth.transport.requests.Request())
        return credentials.token

    return mint


def upload_source(client, files: dict[str, str | bytes]):
    """generateUploadUrl, then PUT the zip of ``files`` to it; the storage source to deploy."""
    import requests

    answer = client.generate_upload_url(request={"parent": GCF_PARENT})
    response = requests.put(answer.upload_url, data=zip_files(files), headers={"Content-Type": "application/zip"},
                            timeout=60)
    assert response.status_code == 200, response.text
    return answer.storage_source


@pytest.fixture
def gcf_deploy(gcf_client):
    """``gcf_deploy(source, memory=, timeout=, max_instances=, env=, entry_point=, name=)`` -> the deployed
    Function (through create_function and its operation); deleted after the test."""
    created: list[str] = []

    def deploy(source: str | None = None, *, files: dict | None = None, memory: str = "256Mi", timeout: int = 30,
               max_instances: int = 3, env: dict | None = None, entry_point: str = "handler",
               name: str | None = None, labels: dict | None = None, runtime: str = "python311"):
        function_id = name or f"t-{uuid.uuid4().hex[:10]}"
        storage = upload_source(gcf_client, files or {"main.py": source or ""})
        function = {
            "build_config": {"runtime": runtime, "entry_point": entry_point, "source": {"storage_source": storage}},
            "service_config": {"available_memory": memory, "timeout_seconds": timeout,
                               "max_instance_count": max_instances, "max_instance_request_concurrency": 1,
                               "environment_variables": env or {}},
            "labels": labels or {},
        }
        created.append(f"{GCF_PARENT}/functions/{function_id}")
        operation = gcf_client.create_function(request={"parent": GCF_PARENT, "function_id": function_id,
                                                        "function": function})
        return operation.result(timeout=300)

    yield deploy
    from google.api_core import exceptions

    for name in created:
        try:
            gcf_client.delete_function(request={"name": name}).result(timeout=60)
        except exceptions.NotFound:
            pass


@pytest.fixture
def gcf_call(id_token_for):
    """``gcf_call(function, json=..., data=..., headers=..., token=True)`` -> the requests Response."""
    import requests

    def call(function, path: str = "", token: bool | str = True, **kwargs):
        uri = function.service_config.uri
        headers = dict(kwargs.pop("headers", {}) or {})
        if token is True:
            headers["Authorization"] = f"Bearer {id_token_for(uri)}"
        elif token:
            headers["Authorization"] = f"Bearer {token}"
        return requests.post(uri + path, headers=headers, timeout=kwargs.pop("timeout", 120), **kwargs)

    return call


@pytest.fixture
def gcf_log(emulator):
    """``gcf_log(function)`` -> the text of that function's log (the emulator's log folder)."""

    def read(function) -> str:
        project, location, function_id = (function.name.split("/")[i] for i in (1, 3, 5))
        path = emulator.engine.log_dir / f"gcf-{project}-{location}-{function_id}.log"
        return path.read_text() if path.exists() else ""

    return read
