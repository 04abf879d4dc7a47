"""The function's service account and its access: least privilege, computed exactly.

Google's IAM control plane cannot run here. What is stood in for: the IAM API (serviceAccounts) and
Cloud Storage's bucket IAM policies, by ``tests/gcf/iam_standin.py`` (an HTTP server keeping them in
memory); corral's calls go to it through google-auth's real AuthorizedSession. The policy corral
computes is checked exactly, down to the CEL expressions of its conditions.
"""

from __future__ import annotations

import pytest

import corral
from tests.gcf.iam_standin import IamStandIn

FUNCTION = "corral-wordcount-wordcount"
EMAIL = "corral-wordcount-wordco-d3353b@my-project.iam.gserviceaccount.com"
MEMBER = f"serviceAccount:{EMAIL}"
LIST = "api.getAttribute('storage.googleapis.com/objectListPrefix', '')"


def test_account_ids_fit_googles_rules():
    from corral_gcf.iam import account_id, email_of

    assert account_id(FUNCTION) == EMAIL.split("@")[0]
    assert 6 <= len(account_id(FUNCTION)) <= 30
    long = account_id("corral-" + "x" * 60)
    assert len(long) <= 30 and long != account_id("corral-" + "x" * 61)
    assert email_of("corral-a-123456", "example.com:proj") == "corral-a-123456@proj.example.com.iam.gserviceaccount.com"


def test_the_bindings_grant_read_on_inputs_and_read_write_on_the_working_prefix_only():
    from corral_gcf.iam import job_bindings

    bindings = job_bindings(MEMBER, FUNCTION, ["gs://data/in/", "gs://data/more/x.txt", "gs://other/logs-*.txt"],
                            ["gs://data/out/_corral/work"])
    objects = "projects/_/buckets/data/objects/"
    assert bindings == {
        "data": [
            {"role": "roles/storage.objectUser", "members": [MEMBER], "condition": {
                "title": f"corral work {FUNCTION}",
                "description": f"corral: what the Cloud Function {FUNCTION} may read and write in gs://data",
                "expression": (f'resource.name == "{objects}out/_corral/work" || '
                               f'resource.name.startsWith("{objects}out/_corral/work/") || '
                               f'{LIST}.startsWith("out/_corral/work")')}},
            {"role": "roles/storage.objectViewer", "members": [MEMBER], "condition": {
                "title": f"corral read {FUNCTION}",
                "description": f"corral: what the Cloud Function {FUNCTION} may read in gs://data",
                "expression": (f'resource.name.startsWith("{objects}in/") || {LIST}.startsWith("in/") || '
                               f'resource.name == "{objects}more/x.txt" || '
                               f'resource.name.startsWith("{objects}more/x.txt/") || '
                               f'{LIST}.startsWith("more/x.txt")')}},
        ],
        "other": [
            {"role": "roles/storage.objectViewer", "members": [MEMBER], "condition": {
                "title": f"corral read {FUNCTION}",
                "description": f"corral: what the Cloud Function {FUNCTION} may read in gs://other",
                "expression": f'resource.name.startsWith("projects/_/buckets/other/objects/logs-") || '
                              f'{LIST}.startsWith("logs-")'}},
        ],
    }
    # nothing on the output folder itself, no bucket-wide or project role, no local or s3:// location
    text = repr(bindings)
    assert 'objects/out/"' not in text and "objects/out/part" not in text and "roles/storage.admin" not in text
    assert job_bindings(MEMBER, FUNCTION, ["/local/in", "s3://b/in/"], []) == {}


def test_other_bindings_of_the_bucket_are_kept():
    from corral_gcf.iam import job_bindings, with_bindings

    wanted = job_bindings(MEMBER, FUNCTION, ["gs://data/in/"], [])["data"]
    theirs = {"role": "roles/storage.objectViewer", "members": ["user:ann@example.com"]}
    own_unconditioned = {"role": "roles/storage.legacyBucketReader", "members": [MEMBER]}
    old = {"role": "roles/storage.objectViewer", "members": [MEMBER],
           "condition": {"title": f"corral read {FUNCTION}", "expression": "true"}}
    policy, changed = with_bindings({"etag": "E", "bindings": [theirs, own_unconditioned, old]}, MEMBER, wanted)
    assert changed and policy == {"etag": "E", "version": 3, "bindings": [theirs, own_unconditioned, *wanted]}
    again, changed = with_bindings(policy, MEMBER, wanted)
    assert not changed and again["bindings"] == policy["bindings"]


def test_the_account_is_created_marked_granted_updated_and_removed():
    from corral_gcf.iam import AccountNotManaged, ensure_account, job_bindings, remove_account

    with IamStandIn() as google:
        api = google.api()
        google.policies["data"] = {"etag": "X", "version": 1,
                                   "bindings": [{"role": "roles/storage.admin", "members": ["user:ann@example.com"]}]}
        first = job_bindings(MEMBER, FUNCTION, ["gs://data/in/"], ["gs://data/out/_corral/work"])
        email, actions = ensure_account(api, "my-project", FUNCTION, first)
        assert (email, actions) == (EMAIL, ["create-service-account"])
        account = google.accounts[EMAIL]
        assert account["displayName"] == f"corral {FUNCTION}"
        assert account["description"] == f"corral-managed: runs the Cloud Function {FUNCTION}; granted on buckets: data"
        bindings = google.policies["data"]["bindings"]
        assert bindings[0] == {"role": "roles/storage.admin", "members": ["user:ann@example.com"]}
        assert bindings[1:] == first["data"] and google.policies["data"]["version"] == 3

        calls = len(google.requests)
        assert ensure_account(api, "my-project", FUNCTION, first) == (EMAIL, [])  # nothing changed: no write
        assert [m for m, _ in google.requests[calls:]] == ["GET", "GET"]

        moved = job_bindings(MEMBER, FUNCTION, ["gs://elsewhere/in/"], ["gs://data/out/_corral/work"])
        assert ensure_account(api, "my-project", FUNCTION, moved) == (EMAIL, ["update-access"])
        assert google.policies["elsewhere"]["bindings"] == moved["elsewhere"]
        assert google.policies["data"]["bindings"][1:] == moved["data"]  # the read on data/in/ is gone
        assert google.accounts[EMAIL]["description"].endswith("granted on buckets: data,elsewhere")

        assert remove_account(api, "my-project", FUNCTION) == ["delete-service-account"]
        assert EMAIL not in google.accounts
        assert google.policies["data"]["bindings"] == [{"role": "roles/storage.admin",
                                                         "members": ["user:ann@example.com"]}]
        assert google.policies["elsewhere"]["bindings"] == []
        assert remove_account(api, "my-project", FUNCTION) == []  # gone already: nothing to do

        google.accounts[EMAIL] = {"email": EMAIL, "description": "the team's"}
        with pytest.raises(AccountNotManaged, match=r"not created by corral .* pass --gcf-service-account"):
            ensure_account(api, "my-project", FUNCTION, first)
        assert remove_account(api, "my-project", FUNCTION) == [] and EMAIL in google.accounts


def test_the_executor_runs_the_function_as_corrals_account_unless_given_one(monkeypatch):
    from corral_gcf.executor import GcfConfig, GcfExecutor

    monkeypatch.setenv("CORRAL_GCF_IAM_SETTLE", "0")
    job = corral.JobSource({"module": "wordcount", "class": "WordCount", "path": None}, (),
                           ("gs://data/in/",), inputs=("gs://data/in/",), output="gs://data/out",
                           work="gs://data/out/_corral/work")
    with IamStandIn() as google:
        executor = GcfExecutor(1, GcfConfig(project="my-project"), iam_api=google.api())
        executor.function_name = FUNCTION
        assert executor.ensure_identity(job) == EMAIL and executor.deploy_actions == ["create-service-account"]
        desired = executor.desired_configuration(job, EMAIL)
        assert desired["service_account"] == EMAIL and desired["concurrency"] == 1
        assert executor.remove_identity(FUNCTION, None) == ["delete-service-account"]
        team = "team@my-project.iam.gserviceaccount.com"
        yours = GcfExecutor(1, GcfConfig(project="my-project", service_account=team), iam_api=google.api())
        yours.function_name = FUNCTION
        calls = len(google.requests)
        assert yours.ensure_identity(job) == team
        assert yours.remove_identity(FUNCTION, None) == [] and len(google.requests) == calls  # no IAM call at all


def test_no_rights_to_manage_iam_says_how_to_do_without():
    from corral_gcf.executor import GcfConfig, GcfExecutor
    from corral_gcf.iam import IamError

    executor = GcfExecutor(1, GcfConfig(project="my-project"))
    error = executor.translate_error(IamError("POST https://iam.googleapis.com/v1/…: PERMISSION_DENIED: no"),
                                     "cannot deploy the function f")
    assert str(error).startswith("cannot deploy the function f: IamError: POST")
    assert "--gcf-service-account" in str(error)
