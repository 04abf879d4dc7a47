"""The Cloud Functions v2 API through Google's own client (google-cloud-functions, REST transport) and google-auth.

What is stood in for: Google's control plane and token endpoint (the emulator serves both, on the port of
its Lambda API); the functions run for real, in Docker containers, under functions-framework.
"""

from __future__ import annotations

import json
import time

import pytest
import requests

from tests.emulator.conftest import GCF_PARENT, create_function, make_gcf_client, upload_source, zip_files

pytestmark = pytest.mark.docker

ECHO_ENV = """
import os

def handler(request):
    return {"greeting": os.environ.get("GREETING"), "version": VERSION, "body": request.get_json(silent=True)}

VERSION = {version}
"""


def test_create_get_list_patch_delete_and_operations(gcf_client, gcf_deploy, gcf_call):
    from google.api_core import exceptions
    from google.cloud import functions_v2
    from google.longrunning import operations_pb2
    from google.protobuf import field_mask_pb2

    started = time.monotonic()
    function = gcf_deploy(ECHO_ENV.replace("{version}", "1"), memory="512M", timeout=42, max_instances=4,
                          env={"GREETING": "hello"}, labels={"corral-sha256": "abc123", "corral-managed": "true"})
    deploy_seconds = time.monotonic() - started
    name = function.name
    assert name.startswith(f"{GCF_PARENT}/functions/t-")
    assert function.state == functions_v2.Function.State.ACTIVE
    assert function.environment == functions_v2.Environment.GEN_2
    assert function.build_config.runtime == "python311" and function.build_config.entry_point == "handler"
    assert function.service_config.available_memory == "512M"
    assert function.service_config.timeout_seconds == 42
    assert function.service_config.max_instance_count == 4
    assert function.service_config.max_instance_request_concurrency == 1
    assert function.service_config.environment_variables == {"GREETING": "hello"}
    assert function.service_config.uri.endswith(f"/gcf/corral-test/us-central1/{name.rsplit('/', 1)[1]}")
    assert function.service_config.revision.startswith(name.rsplit("/", 1)[1] + "-00001-")
    assert function.service_config.service_account_email.endswith("-compute@developer.gserviceaccount.com")
    assert dict(function.labels) == {"corral-sha256": "abc123", "corral-managed": "true"}
    assert deploy_seconds < 60, f"a deploy took {deploy_seconds:.1f} s"

    got = gcf_client.get_function(name=name)
    assert got.service_config.uri == function.service_config.uri and got.update_time == function.update_time
    listed = [f.name for f in gcf_client.list_functions(parent=GCF_PARENT)]
    assert name in listed

    response = gcf_call(function, json={"n": 1})
    assert response.status_code == 200, response.text
    assert response.json() == {"greeting": "hello", "version": 1, "body": {"n": 1}}

    # PATCH with an update mask: new code and a new label; the environment stays as it was.
    storage = upload_source(gcf_client, {"main.py": ECHO_ENV.replace("{version}", "2")})
    update = functions_v2.Function(name=name, build_config={"source": {"storage_source": storage}},
                                   labels={"corral-sha256": "def456", "corral-managed": "true"})
    operation = gcf_client.update_function(function=update, update_mask=field_mask_pb2.FieldMask(
        paths=["build_config.source", "labels"]))
    updated = operation.result(timeout=300)
    assert updated.labels["corral-sha256"] == "def456"
    assert updated.service_config.environment_variables == {"GREETING": "hello"}
    assert updated.service_config.revision != function.service_config.revision
    assert updated.service_config.revision.split("-")[-2] == "00002"
    assert updated.update_time > function.update_time
    assert gcf_call(updated, json=None).json() == {"greeting": "hello", "version": 2, "body": None}

    # The operation resource itself, through the client's operations mixin.
    op = gcf_client.get_operation(operations_pb2.GetOperationRequest(name=operation.operation.name))
    assert op.done and op.name.startswith(f"{GCF_PARENT}/operations/operation-")
    ops = gcf_client.list_operations(operations_pb2.ListOperationsRequest(name=GCF_PARENT))
    assert operation.operation.name in [o.name for o in ops.operations]

    # A configuration-only update (environment variables) makes a new revision too.
    update = functions_v2.Function(name=name, service_config={"environment_variables": {"GREETING": "bye"}})
    gcf_client.update_function(function=update, update_mask=field_mask_pb2.FieldMask(
        paths=["service_config.environment_variables"])).result(timeout=300)
    assert gcf_call(updated).json()["greeting"] == "bye"

    gcf_client.delete_function(name=name).result(timeout=60)
    with pytest.raises(exceptions.NotFound) as excinfo:
        gcf_client.get_function(name=name)
    assert f"Resource '{name}' was not found" in str(excinfo.value)
    assert gcf_call(updated).status_code == 404


def test_api_errors_in_googles_shape(gcf_client, gcf_deploy, emulator):
    from google.api_core import exceptions

    function = gcf_deploy("def handler(request):\n    return 'ok'\n")
    function_id = function.name.rsplit("/", 1)[1]
    storage = upload_source(gcf_client, {"main.py": "def handler(request):\n    return 'ok'\n"})

    def create(function_id: str, **service):
        return gcf_client.create_function(request={"parent": GCF_PARENT, "function_id": function_id, "function": {
            "build_config": {"runtime": "python311", "entry_point": "handler", "source": {"storage_source": storage}},
            "service_config": service}})

    with pytest.raises(exceptions.Conflict) as excinfo:
        create(function_id)
    assert "already exists" in str(excinfo.value)
    with pytest.raises(exceptions.BadRequest) as excinfo:
        create("mem-x", available_memory="lots")
    assert "serviceConfig.availableMemory 'lots'" in str(excinfo.value)
    with pytest.raises(exceptions.BadRequest) as excinfo:
        create("mem-y", available_memory="64Mi")
    assert "between 128Mi and 32Gi" in str(excinfo.value)
    with pytest.raises(exceptions.BadRequest) as excinfo:
        create("timeout-z", timeout_seconds=3601)
    assert "serviceConfig.timeoutSeconds 3601 is out of range" in str(excinfo.value)
    with pytest.raises(exceptions.BadRequest) as excinfo:
        create("env-k", environment_variables={"K_SERVICE": "mine"})
    assert "K_SERVICE is a reserved environment variable" in str(excinfo.value)
    with pytest.raises(exceptions.BadRequest) as excinfo:
        create("Bad_Name")
    assert "Invalid function ID 'Bad_Name'" in str(excinfo.value)
    with pytest.raises(exceptions.NotFound):
        gcf_client.get_function(name=f"{GCF_PARENT}/functions/nope")
    with pytest.raises(exceptions.NotFound):
        gcf_client.delete_function(name=f"{GCF_PARENT}/functions/nope")
    # a source that was never uploaded
    missing = {"bucket": storage.bucket, "object": "never-uploaded.zip"}
    with pytest.raises(exceptions.BadRequest) as excinfo:
        gcf_client.create_function(request={"parent": GCF_PARENT, "function_id": "no-source", "function": {
            "build_config": {"runtime": "python311", "entry_point": "handler",
                             "source": {"storage_source": missing}}}})
    assert "never-uploaded.zip does not exist" in str(excinfo.value)
    # the raw JSON shape
    raw = requests.get(f"{emulator.endpoint}/v2/{GCF_PARENT}/functions/nope", timeout=10)
    assert raw.status_code == 404
    assert raw.json() == {"error": {"code": 404, "status": "NOT_FOUND",
                                    "message": f"Resource '{GCF_PARENT}/functions/nope' was not found"}}


def test_upload_url_wants_a_zip_content_type(gcf_client):
    answer = gcf_client.generate_upload_url(request={"parent": GCF_PARENT})
    assert answer.storage_source.bucket.startswith("gcf-v2-uploads-")
    assert answer.storage_source.object_.endswith(".zip")
    wrong = requests.put(answer.upload_url, data=zip_files({"main.py": ""}), timeout=10)
    assert wrong.status_code == 403 and "application/zip" in wrong.text
    unknown = requests.put(answer.upload_url.rsplit("/", 1)[0] + "/0123", data=b"x",
                           headers={"Content-Type": "application/zip"}, timeout=10)
    assert unknown.status_code == 404


def test_failed_deploys_end_the_operation_with_the_reason(gcf_client, gcf_deploy, gcf_call):
    from google.api_core import exceptions
    from google.cloud import functions_v2

    with pytest.raises(exceptions.GoogleAPICallError) as excinfo:
        gcf_deploy(files={"app.py": "def handler(request):\n    return 'ok'\n"}, name="no-main")
    assert "missing main.py at the root of the source zip" in str(excinfo.value)

    with pytest.raises(exceptions.GoogleAPICallError) as excinfo:
        gcf_deploy("import not_a_module_anywhere\n\ndef handler(request):\n    return 'ok'\n", name="bad-import")
    message = str(excinfo.value)
    assert "Container Healthcheck failed" in message
    assert "ModuleNotFoundError: No module named 'not_a_module_anywhere'" in message
    failed = gcf_client.get_function(name=f"{GCF_PARENT}/functions/bad-import")
    assert failed.state == functions_v2.Function.State.FAILED
    assert "No module named 'not_a_module_anywhere'" in failed.state_messages[0].message
    assert gcf_call(failed).status_code == 404  # nothing serves a function whose first deploy failed

    with pytest.raises(exceptions.GoogleAPICallError) as excinfo:
        gcf_deploy("def other(request):\n    return 'ok'\n", name="no-target")
    assert "handler" in str(excinfo.value) and "Container Healthcheck failed" in str(excinfo.value)

    with pytest.raises(exceptions.GoogleAPICallError) as excinfo:
        gcf_deploy("def handler(request):\n    return 'ok'\n", name="wrong-python", runtime="python312")
    assert "runtime python312 needs Python 3.12, but the emulator's base image" in str(excinfo.value)
    assert gcf_client.list_runtimes(parent=GCF_PARENT).runtimes[0].name == "python311"


def test_a_failed_update_keeps_the_previous_revision(gcf_client, gcf_deploy, gcf_call):
    from google.api_core import exceptions
    from google.cloud import functions_v2
    from google.protobuf import field_mask_pb2

    function = gcf_deploy("def handler(request):\n    return 'v1'\n")
    storage = upload_source(gcf_client, {"main.py": "raise RuntimeError('broken at import')\n"})
    update = functions_v2.Function(name=function.name, build_config={"source": {"storage_source": storage}})
    with pytest.raises(exceptions.GoogleAPICallError) as excinfo:
        gcf_client.update_function(function=update, update_mask=field_mask_pb2.FieldMask(
            paths=["build_config.source"])).result(timeout=300)
    assert "RuntimeError: broken at import" in str(excinfo.value)
    current = gcf_client.get_function(name=function.name)
    assert current.state == functions_v2.Function.State.ACTIVE
    assert current.service_config.revision == function.service_config.revision
    assert gcf_call(function).text == "v1"


def test_invoke_needs_an_id_token_for_the_function(gcf_deploy, gcf_call, service_account_key, tmp_path,
                                                    monkeypatch):
    import google.auth
    import google.auth.transport.requests
    from google.oauth2 import id_token, service_account

    function = gcf_deploy("def handler(request):\n    return {'auth': request.headers.get('Authorization')}\n")
    uri = function.service_config.uri

    missing = gcf_call(function, token=False)
    assert missing.status_code == 401
    assert "no Authorization header" in missing.text and uri in missing.text

    # The standard chain: GOOGLE_APPLICATION_CREDENTIALS names a key file; fetch_id_token mints for the URL.
    key_file = tmp_path / "key.json"
    key_file.write_text(json.dumps(service_account_key))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    token = id_token.fetch_id_token(google.auth.transport.requests.Request(), uri)
    ok = gcf_call(function, token=token)
    assert ok.status_code == 200
    passed_on = ok.json()["auth"].removeprefix("Bearer ")
    assert passed_on == token.rsplit(".", 1)[0] + ".SIGNATURE_REMOVED_BY_GOOGLE"  # as Cloud Run passes it on

    # google.auth.default() finds the same key; its access token is not an ID token.
    credentials, project = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
    assert project == "corral-test"
    credentials.refresh(google.auth.transport.requests.Request())
    assert credentials.token.startswith("ya29.")
    access = gcf_call(function, token=credentials.token)
    assert access.status_code == 401 and "needs an ID token" in access.text

    other = gcf_call(function, token=id_token.fetch_id_token(google.auth.transport.requests.Request(),
                                                             uri + "-other"))
    assert other.status_code == 401 and "audience" in other.text
    forged = gcf_call(function, token=token[:-4] + "AAAA")
    assert forged.status_code == 401 and "not issued by this emulator" in forged.text

    # A key the emulator did not issue is refused at the token endpoint, as Google refuses a bad key.
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    stranger = dict(service_account_key, private_key_id="0" * 32, private_key=rsa.generate_private_key(
        public_exponent=65537, key_size=2048).private_bytes(serialization.Encoding.PEM,
                                                            serialization.PrivateFormat.PKCS8,
                                                            serialization.NoEncryption()).decode())
    import google.auth.exceptions

    with pytest.raises(google.auth.exceptions.RefreshError, match="Invalid JWT Signature"):
        service_account.IDTokenCredentials.from_service_account_info(stranger, target_audience=uri).refresh(
            google.auth.transport.requests.Request())


def test_operations_answered_at_once_are_polled_by_the_client(docker_engine):
    """As on GCF, create answers ``done: false`` at once (``operation_wait=0``): the function is DEPLOYING,
    a second operation on it is refused with 409 ABORTED, and the client's ``result()`` polls until done."""
    from corral_emulator import Emulator

    with Emulator(operation_wait=0) as emu:
        client = make_gcf_client(emu.endpoint)
        from google.api_core import exceptions
        from google.cloud import functions_v2

        operation = create_function(client, "polled", "def handler(request):\n    return 'ok'\n")
        assert operation.operation.done is False
        assert operation.metadata.verb == "create" and operation.metadata.target.endswith("/functions/polled")
        name = f"{GCF_PARENT}/functions/polled"
        assert client.get_function(name=name).state == functions_v2.Function.State.DEPLOYING
        with pytest.raises(exceptions.Conflict, match="already in progress"):
            client.delete_function(name=name)
        function = operation.result(timeout=120)
        assert function.state == functions_v2.Function.State.ACTIVE
        assert operation.done() and client.get_function(name=name).state == functions_v2.Function.State.ACTIVE
        deleted = client.delete_function(name=name)
        deleted.result(timeout=60)
        assert deleted.metadata.verb == "delete"
