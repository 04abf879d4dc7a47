"""The function's service account: least privilege, scoped to exactly what one job touches.

corral creates one service account per function (``corral-<name>-<hash>@PROJECT.iam.gserviceaccount.com``),
marked as corral's in its description, and grants it, in the IAM policy of each bucket the job uses,
only this (conditions on the object name, so the bucket needs uniform bucket-level access):

- ``roles/storage.objectViewer`` on the objects under the input prefixes (tasks only read their inputs);
- ``roles/storage.objectUser`` (read, write, delete) on the objects under the working root (tasks write
  their attempts there); nothing on the output: the driver, with your credentials, moves committed
  results into it;
- listing (``storage.objects.list``, in both roles) only with a prefix under those same prefixes
  (``storage.googleapis.com/objectListPrefix``).

Nothing else: no project-level role. Each of corral's bindings carries a condition titled ``corral
…`` for this member; deploying again rewrites exactly those (other bindings of the bucket are kept),
and ``corral undeploy`` removes them and deletes the account, if its description says corral created
it. ``--gcf-service-account EMAIL`` bypasses all of this: corral then manages no IAM.

Google's IAM cannot run here: the tests check the bindings computed below exactly, and the calls
against a stand-in of the two REST APIs (``IamApi``: IAM's serviceAccounts, Cloud Storage's bucket
``iam``), each a request of google-auth's ``AuthorizedSession``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import quote

from corral.remote import object_prefix

log = logging.getLogger("corral.gcf")

IAM_URL = "https://iam.googleapis.com/v1"
STORAGE_URL = "https://storage.googleapis.com/storage/v1"
MARKER = "corral-managed"
READ_ROLE = "roles/storage.objectViewer"
WORK_ROLE = "roles/storage.objectUser"
TITLE = "corral"  # every condition corral writes has a title starting with this
_ACCOUNT_CHARS = re.compile(r"[^a-z0-9-]+")


class AccountNotManaged(Exception):
    """A service account with corral's name exists but corral did not create it: corral leaves it alone."""


class IamError(Exception):
    """An IAM or Cloud Storage API call failed (the message holds Google's answer)."""


def account_id(function_name: str) -> str:
    """The service account id corral uses for ``function_name``: 6-30 of a-z 0-9 -, starting with a
    letter; a hash of the whole name keeps two functions apart when it is cut short."""
    digest = hashlib.sha1(function_name.encode()).hexdigest()[:6]
    base = _ACCOUNT_CHARS.sub("-", function_name.lower().removeprefix("corral-")).strip("-")
    return f"corral-{base[:16].rstrip('-')}-{digest}".replace("--", "-")


def email_of(account: str, project: str) -> str:
    if ":" in project:  # a domain-scoped project (example.com:proj): proj.example.com
        domain, name = project.split(":", 1)
        return f"{account}@{name}.{domain}.iam.gserviceaccount.com"
    return f"{account}@{project}.iam.gserviceaccount.com"


def gcs_prefix(url: str) -> tuple[str, str, bool] | None:
    """``(bucket, prefix, exact)`` a ``gs://`` URL covers; None for other storage (no IAM needed).

    ``gs://b/in/`` -> ``in/`` and below; ``gs://b/in/x.txt`` -> the object ``in/x.txt`` and anything below
    ``in/x.txt/`` (it may be a folder: ``exact``); a glob ``gs://b/in/part-*.csv`` -> ``in/part-`` and
    below (its fixed part); a whole bucket (``gs://b``) -> everything.
    """
    found = object_prefix(url, ("gs", "gcs"))
    if found is None:
        return None
    bucket, key, what = found
    return bucket, key, what == "object"


def _cel(text: str) -> str:
    return json.dumps(text)  # a CEL string literal (JSON's escapes are CEL's)


def _condition(bucket: str, prefixes: Iterable[tuple[str, bool]]) -> str:
    """A CEL expression true for the objects under ``prefixes`` and for listings with a prefix there."""
    objects = f"projects/_/buckets/{bucket}/objects/"
    terms = []
    for prefix, exact in sorted(set(prefixes)):
        if exact:
            terms.append(f"resource.name == {_cel(objects + prefix)}")
            terms.append(f"resource.name.startsWith({_cel(objects + prefix + '/')})")
            terms.append(f"api.getAttribute('storage.googleapis.com/objectListPrefix', '')"
                         f".startsWith({_cel(prefix)})")
        else:
            terms.append(f"resource.name.startsWith({_cel(objects + prefix)})")
            terms.append(f"api.getAttribute('storage.googleapis.com/objectListPrefix', '')"
                         f".startsWith({_cel(prefix)})")
    return " || ".join(terms)


def job_bindings(member: str, function_name: str, inputs: Iterable[str], work: Iterable[str]
                 ) -> dict[str, list[dict[str, Any]]]:
    """The bucket policy bindings the job needs, by bucket: read on ``inputs``, read/write on ``work``."""
    by_bucket: dict[str, dict[str, set[tuple[str, bool]]]] = {}
    for role, urls in ((READ_ROLE, inputs), (WORK_ROLE, work)):
        for url in urls:
            found = gcs_prefix(url)
            if found:
                bucket, prefix, exact = found
                by_bucket.setdefault(bucket, {}).setdefault(role, set()).add((prefix, exact))
    bindings: dict[str, list[dict[str, Any]]] = {}
    for bucket, roles in sorted(by_bucket.items()):
        bindings[bucket] = [
            {"role": role, "members": [member], "condition": {
                "title": f"{TITLE} {'read' if role == READ_ROLE else 'work'} {function_name}"[:100],
                "description": f"corral: what the Cloud Function {function_name} may "
                               f"{'read' if role == READ_ROLE else 'read and write'} in gs://{bucket}",
                "expression": _condition(bucket, prefixes),
            }}
            for role, prefixes in sorted(roles.items())
        ]
    return bindings


def _corral_binding(binding: Mapping[str, Any], member: str) -> bool:
    title = str((binding.get("condition") or {}).get("title") or "")
    return member in binding.get("members", []) and title.startswith(f"{TITLE} ")


def with_bindings(policy: Mapping[str, Any], member: str, wanted: list[dict[str, Any]]) -> tuple[dict[str, Any], bool]:
    """``policy`` with ``member``'s corral bindings replaced by ``wanted``; and whether that changed it.
    Every other binding (other members, or this member's own unconditioned ones) is kept as it is."""
    current = list(policy.get("bindings") or [])
    kept = [b for b in current if not _corral_binding(b, member)]
    mine = [b for b in current if _corral_binding(b, member)]

    def key(binding: Mapping[str, Any]) -> str:
        return json.dumps(binding, sort_keys=True)

    changed = sorted(map(key, mine)) != sorted(map(key, wanted))
    updated = {**policy, "version": 3, "bindings": kept + list(wanted)}
    return updated, changed


class IamApi:
    """The IAM and Cloud Storage REST calls corral makes, through an ``AuthorizedSession``."""

    def __init__(self, session: Any, iam_url: str = IAM_URL, storage_url: str = STORAGE_URL) -> None:
        self.session = session
        self.iam_url = iam_url.rstrip("/")
        self.storage_url = storage_url.rstrip("/")

    def _call(self, method: str, url: str, missing_ok: bool = False, **kwargs: Any) -> dict[str, Any] | None:
        response = self.session.request(method, url, timeout=60, **kwargs)
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code >= 400:
            try:
                error = response.json().get("error") or {}
                detail = f"{error.get('status') or response.status_code}: {error.get('message') or response.text}"
            except ValueError:
                detail = f"{response.status_code}: {response.text[:500]}"
            raise IamError(f"{method} {url.split('?')[0]}: {detail}")
        return response.json() if response.content else {}

    def get_account(self, project: str, email: str) -> dict[str, Any] | None:
        return self._call("GET", f"{self.iam_url}/projects/{project}/serviceAccounts/{email}", missing_ok=True)

    def create_account(self, project: str, account: str, display_name: str, description: str) -> dict[str, Any]:
        body = {"accountId": account, "serviceAccount": {"displayName": display_name, "description": description}}
        created = self._call("POST", f"{self.iam_url}/projects/{project}/serviceAccounts", json=body)
        return created or {}

    def set_description(self, project: str, email: str, description: str) -> None:
        body = {"serviceAccount": {"description": description}, "updateMask": "description"}
        self._call("PATCH", f"{self.iam_url}/projects/{project}/serviceAccounts/{email}", json=body)

    def delete_account(self, project: str, email: str) -> bool:
        url = f"{self.iam_url}/projects/{project}/serviceAccounts/{email}"
        return self._call("DELETE", url, missing_ok=True) is not None

    def get_policy(self, bucket: str) -> dict[str, Any]:
        url = f"{self.storage_url}/b/{quote(bucket, safe='')}/iam?optionsRequestedPolicyVersion=3"
        return self._call("GET", url) or {}

    def set_policy(self, bucket: str, policy: Mapping[str, Any]) -> None:
        self._call("PUT", f"{self.storage_url}/b/{quote(bucket, safe='')}/iam", json=dict(policy))


def _description(function_name: str, buckets: Iterable[str]) -> str:
    text = f"{MARKER}: runs the Cloud Function {function_name}; granted on buckets: {','.join(sorted(buckets))}"
    return text[:256]


def _buckets(description: str) -> list[str]:
    _, _, listed = description.partition("granted on buckets: ")
    return [b for b in listed.split(",") if b]


def ensure_account(api: IamApi, project: str, function_name: str, bindings: Mapping[str, list[dict[str, Any]]]
                   ) -> tuple[str, list[str]]:
    """Create corral's service account for ``function_name`` (or check that corral made it) and set its
    bindings on every bucket it needs, removing them from the buckets it no longer needs.
    Returns ``(email, actions)``: "create-service-account", "update-access"."""
    account = account_id(function_name)
    email = email_of(account, project)
    member = f"serviceAccount:{email}"
    actions: list[str] = []
    found = api.get_account(project, email)
    previous: list[str] = []
    if found is None:
        api.create_account(project, account, f"corral {function_name}"[:100], _description(function_name, bindings))
        log.info("created the service account %s", email)
        actions.append("create-service-account")
    else:
        description = str(found.get("description") or "")
        if not description.startswith(f"{MARKER}: runs the Cloud Function {function_name};"):
            raise AccountNotManaged(
                f"the service account {email} exists but was not created by corral for {function_name} (its "
                f"description does not say {MARKER}); corral leaves it alone: pass --gcf-service-account {email} "
                "to run as it")
        previous = _buckets(description)
        if sorted(previous) != sorted(bindings):
            api.set_description(project, email, _description(function_name, bindings))
    changed = False
    for bucket in sorted(set(previous) | set(bindings)):
        policy, differs = with_bindings(api.get_policy(bucket), member, list(bindings.get(bucket, [])))
        if differs:
            api.set_policy(bucket, policy)
            log.info("set the access of %s in gs://%s", email, bucket)
            changed = True
    if changed and "create-service-account" not in actions:
        actions.append("update-access")
    return email, actions


def remove_account(api: IamApi, project: str, function_name: str) -> list[str]:
    """Remove corral's bindings of the function's service account and delete the account, if corral
    created it; nothing else. Returns what was done ("delete-service-account")."""
    email = email_of(account_id(function_name), project)
    found = api.get_account(project, email)
    if found is None:
        return []
    description = str(found.get("description") or "")
    if not description.startswith(f"{MARKER}: runs the Cloud Function {function_name};"):
        log.info("the service account %s was not created by corral for %s: left alone", email, function_name)
        return []
    member = f"serviceAccount:{email}"
    for bucket in _buckets(description):
        policy, differs = with_bindings(api.get_policy(bucket), member, [])
        if differs:
            api.set_policy(bucket, policy)
    api.delete_account(project, email)
    log.info("deleted the service account %s and its access", email)
    return ["delete-service-account"]
