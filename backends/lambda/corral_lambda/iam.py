"""The function's execution role: least privilege, scoped to exactly what one job touches.

corral (Go) granted ``s3:*`` on ``*``. Here the role's one inline policy allows:

- CloudWatch Logs for this function's log group only (``/aws/lambda/<function>``);
- ``s3:GetObject`` under the input prefixes (tasks only read their inputs);
- ``s3:GetObject``, ``s3:PutObject``, ``s3:DeleteObject``, ``s3:AbortMultipartUpload`` under the working
  root (tasks write their attempts there; the driver, on the user's machine, moves committed results
  into the output itself, so the function needs no access to the output);
- ``s3:ListBucket`` on those buckets, with an ``s3:prefix`` condition limiting it to the same prefixes.

Nothing else: no ``*`` action, no ``*`` resource. The role is tagged ``corral:managed=true`` and
``corral:function=<name>``; corral only ever changes or deletes a role carrying both, so ``corral
undeploy`` removes what corral created and nothing else. ``--lambda-role-arn`` bypasses all of this:
corral then manages no IAM.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from corral.remote import object_prefix

log = logging.getLogger("corral.lambda")
T = TypeVar("T")

TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ],
}
POLICY_NAME = "corral-job-access"
MANAGED_TAG = {"Key": "corral:managed", "Value": "true"}
FUNCTION_TAG = "corral:function"
READ_ACTIONS = ["s3:GetObject"]
WRITE_ACTIONS = ["s3:AbortMultipartUpload", "s3:DeleteObject", "s3:GetObject", "s3:PutObject"]
#: How long CreateFunction is retried while Lambda cannot assume a new role yet (IAM propagates in seconds).
ROLE_PROPAGATION_TIMEOUT = 120.0


class RoleNotManaged(Exception):
    """A role with corral's name exists but corral did not create it: corral leaves it alone."""


def role_name(function_name: str) -> str:
    """The role corral creates for ``function_name``: ``<function>-role`` (IAM role names: at most 64
    characters; a longer one keeps a hash of the whole name, so that two functions never share a role)."""
    base = function_name if function_name.startswith("corral-") else f"corral-{function_name}"
    name = f"{base}-role"
    if len(name) > 64:
        digest = hashlib.sha1(function_name.encode()).hexdigest()[:8]
        name = f"{base[:50].rstrip('-')}-{digest}-role"
    return name


def key_patterns(url: str) -> tuple[str, list[str]] | None:
    """``(bucket, key patterns)`` an ``s3://`` URL covers; None for other storage (no IAM needed).

    ``s3://b/in/`` -> ``in/*``; ``s3://b/in/x.txt`` -> ``in/x.txt`` and ``in/x.txt/*`` (it may be a
    folder); a glob ``s3://b/in/part-*.csv`` -> ``in/part-*`` (its fixed part, then anything).
    A whole bucket (``s3://b``) -> ``*``.
    """
    found = object_prefix(url, ("s3", "s3a"))
    if found is None:
        return None
    bucket, key, what = found
    return bucket, [key, key + "/*"] if what == "object" else [key + "*"]


def _statements(urls: Iterable[str], actions: list[str], sid: str, partition: str) -> list[dict[str, Any]]:
    by_bucket: dict[str, set[str]] = {}
    for url in urls:
        found = key_patterns(url)
        if found:
            by_bucket.setdefault(found[0], set()).update(found[1])
    statements = []
    for n, (bucket, patterns) in enumerate(sorted(by_bucket.items())):
        statements.append({
            "Sid": f"{sid}{n}",
            "Effect": "Allow",
            "Action": list(actions),
            "Resource": [f"arn:{partition}:s3:::{bucket}/{p}" for p in sorted(patterns)],
        })
        statements.append({
            "Sid": f"{sid}List{n}",
            "Effect": "Allow",
            "Action": ["s3:ListBucket"],
            "Resource": [f"arn:{partition}:s3:::{bucket}"],
            "Condition": {"StringLike": {"s3:prefix": sorted(patterns)}},
        })
    return statements


def job_policy(
    function_name: str,
    inputs: Iterable[str],
    work: Iterable[str],
    region: str,
    account: str,
    partition: str = "aws",
) -> dict[str, Any]:
    """The execution role's policy for a job whose tasks read ``inputs`` and read and write ``work``."""
    log_group = f"arn:{partition}:logs:{region}:{account}:log-group:/aws/lambda/{function_name}"
    statements: list[dict[str, Any]] = [
        {"Sid": "Logs", "Effect": "Allow", "Action": ["logs:CreateLogGroup"], "Resource": [log_group + ":*"]},
        {
            "Sid": "LogStreams",
            "Effect": "Allow",
            "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": [log_group + ":log-stream:*"],
        },
    ]
    statements += _statements(inputs, READ_ACTIONS, "Read", partition)
    statements += _statements(work, WRITE_ACTIONS, "Work", partition)
    return {"Version": "2012-10-17", "Statement": statements}


def caller_identity(sts: Any) -> tuple[str, str]:
    """``(account id, partition)`` of the credentials in use (STS GetCallerIdentity)."""
    identity = sts.get_caller_identity()
    arn = str(identity.get("Arn") or "arn:aws:")
    return str(identity["Account"]), arn.split(":")[1] or "aws"


def _normal(value: Any) -> Any:
    """A policy document in a form where equal policies compare equal (IAM may reorder or unwrap)."""
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [_normal(v) for v in value]
        if len(items) == 1:
            return items[0]
        try:
            return sorted(items)
        except TypeError:
            return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    return value


def _document(value: Any) -> Any:
    if isinstance(value, str):  # botocore decodes policy documents; a raw (URL-encoded) one is decoded here
        from urllib.parse import unquote

        value = json.loads(unquote(value))
    return value


def _managed_by_corral(tags: list[dict[str, str]], function_name: str) -> bool:
    values = {t.get("Key"): t.get("Value") for t in tags}
    return values.get(MANAGED_TAG["Key"]) == MANAGED_TAG["Value"] and values.get(FUNCTION_TAG) == function_name


def ensure_role(iam: Any, function_name: str, policy: dict[str, Any]) -> tuple[str, bool, bool]:
    """Create corral's role for ``function_name`` or bring it up to date with ``policy``.

    Returns ``(role ARN, created, changed)``: ``changed`` when the role's trust or inline policy was
    written (IAM then takes a few seconds to apply it everywhere). Raises ``RoleNotManaged`` when a
    role of that name exists without corral's tags: corral does not touch it.
    """
    name = role_name(function_name)
    try:
        role = iam.get_role(RoleName=name)["Role"]
    except iam.exceptions.NoSuchEntityException:
        role = None
    if role is None:
        role = iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(TRUST_POLICY),
            Description=f"execution role of the corral function {function_name}",
            Tags=[MANAGED_TAG, {"Key": FUNCTION_TAG, "Value": function_name}],
        )["Role"]
        iam.put_role_policy(RoleName=name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(policy))
        log.info("created IAM role %s with its policy %s", name, POLICY_NAME)
        return role["Arn"], True, True
    tags = iam.list_role_tags(RoleName=name).get("Tags", [])
    if not _managed_by_corral(tags, function_name):
        raise RoleNotManaged(
            f"IAM role {name} exists but was not created by corral for {function_name} (it lacks the tags "
            f"{MANAGED_TAG['Key']}=true and {FUNCTION_TAG}={function_name}); corral leaves it alone: "
            f"pass --lambda-role-arn {role['Arn']} to run as it"
        )
    changed = False
    if _normal(_document(role.get("AssumeRolePolicyDocument"))) != _normal(TRUST_POLICY):
        iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(TRUST_POLICY))
        changed = True
    try:
        current = _document(iam.get_role_policy(RoleName=name, PolicyName=POLICY_NAME)["PolicyDocument"])
    except iam.exceptions.NoSuchEntityException:
        current = None
    if current is None or _normal(current) != _normal(policy):
        iam.put_role_policy(RoleName=name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(policy))
        log.info("updated the policy %s of IAM role %s", POLICY_NAME, name)
        changed = True
    return role["Arn"], False, changed


def delete_role(iam: Any, name: str, function_name: str) -> bool:
    """Delete role ``name`` (its inline policies first) if corral created it for ``function_name``;
    True if deleted. A missing or foreign role is left as it is."""
    try:
        tags = iam.list_role_tags(RoleName=name).get("Tags", [])
    except iam.exceptions.NoSuchEntityException:
        return False
    if not _managed_by_corral(tags, function_name):
        log.info("IAM role %s was not created by corral for %s: left alone", name, function_name)
        return False
    for policy in iam.list_role_policies(RoleName=name).get("PolicyNames", []):
        iam.delete_role_policy(RoleName=name, PolicyName=policy)
    for attached in iam.list_attached_role_policies(RoleName=name).get("AttachedPolicies", []):
        iam.detach_role_policy(RoleName=name, PolicyArn=attached["PolicyArn"])  # attached by hand since
    iam.delete_role(RoleName=name)
    log.info("deleted IAM role %s and its policy", name)
    return True


def role_not_assumable_yet(exc: BaseException) -> bool:
    """Lambda's answer while a new role has not propagated: InvalidParameterValueException "The role
    defined for the function cannot be assumed by Lambda"."""
    return "cannot be assumed" in str(exc)


def while_role_propagates(call: Callable[[], T], timeout: float = ROLE_PROPAGATION_TIMEOUT,
                          wait: Any = None) -> T:
    """``call()``, retried with backoff while Lambda cannot assume a just-created role (at most ``timeout``
    seconds, then the last error is raised)."""
    retrying = Retrying(
        retry=retry_if_exception(role_not_assumable_yet),
        stop=stop_after_delay(timeout),
        wait=wait or wait_exponential(multiplier=0.5, max=8),
        reraise=True,
        before_sleep=lambda s: log.info("the new role is not assumable by Lambda yet; retrying in %.1f s",
                                        s.next_action.sleep if s.next_action else 0),
    )
    return retrying(call)
