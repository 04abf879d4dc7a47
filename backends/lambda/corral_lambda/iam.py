"""The function's execution role: least privilege, scoped to exactly what one job touches.

corral (Go) granted ``s3:*`` on ``*``. Here the policy allows CloudWatch Logs for this function only,
S3 reads under the input prefixes, and reads and writes under the output and working prefixes. The
role and its policy are tagged as corral's, so ``corral undeploy`` removes what corral created and
nothing else. ``--lambda-role-arn`` bypasses all of this: corral then manages no IAM.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

TRUST_POLICY = {
    "Version": "2012-10-17",
    "Statement": [
        {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}
    ],
}
POLICY_NAME = "corral-job-access"
MANAGED_TAG = {"Key": "corral:managed", "Value": "true"}
READ_ACTIONS = ["s3:GetObject"]
WRITE_ACTIONS = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]


def role_name(function_name: str) -> str:
    """The role corral creates for ``function_name`` (IAM role names are at most 64 characters)."""
    return f"corral-{function_name}"[:64]


def key_patterns(url: str) -> tuple[str, list[str]] | None:
    """``(bucket, key patterns)`` an ``s3://`` URL covers; None for other storage (no IAM needed).

    ``s3://b/in/`` -> ``in/*``; ``s3://b/in/x.txt`` -> ``in/x.txt`` and ``in/x.txt/*`` (it may be a
    folder); a glob ``s3://b/in/part-*.csv`` -> ``in/part-*`` (its fixed part, then anything).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("s3", "s3a"):
        return None
    key = parts.path.lstrip("/")
    wildcards = [key.index(ch) for ch in "*?[" if ch in key]
    if wildcards:
        return parts.netloc, [key[: min(wildcards)] + "*"]
    if key == "" or key.endswith("/"):
        return parts.netloc, [key + "*"]
    return parts.netloc, [key, key + "/*"]


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
            "Action": actions,
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
    outputs: Iterable[str],
    region: str,
    account: str,
    partition: str = "aws",
) -> dict[str, Any]:
    """The execution role's policy for a job reading ``inputs`` and writing ``outputs`` (out + work)."""
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
    statements += _statements(outputs, WRITE_ACTIONS, "Write", partition)
    return {"Version": "2012-10-17", "Statement": statements}


def ensure_role(iam: Any, function_name: str, policy: dict[str, Any]) -> tuple[str, bool]:
    """Create (or update) corral's role for ``function_name`` with ``policy``; return (ARN, created)."""
    name = role_name(function_name)
    created = False
    try:
        role = iam.get_role(RoleName=name)["Role"]
    except iam.exceptions.NoSuchEntityException:
        role = iam.create_role(
            RoleName=name,
            AssumeRolePolicyDocument=json.dumps(TRUST_POLICY),
            Description=f"execution role of the corral function {function_name}",
            Tags=[MANAGED_TAG],
        )["Role"]
        created = True
    iam.put_role_policy(RoleName=name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(policy))
    return role["Arn"], created


def delete_role(iam: Any, function_name: str) -> bool:
    """Delete corral's role for ``function_name`` if corral created it (tagged); True if deleted."""
    name = role_name(function_name)
    try:
        tags = iam.list_role_tags(RoleName=name).get("Tags", [])
    except iam.exceptions.NoSuchEntityException:
        return False
    if MANAGED_TAG not in tags:
        return False
    for policy in iam.list_role_policies(RoleName=name).get("PolicyNames", []):
        iam.delete_role_policy(RoleName=name, PolicyName=policy)
    iam.delete_role(RoleName=name)
    return True


def wait_until_assumable(create: Any, attempts: int = 20, delay: float = 1.0) -> Any:
    """Call ``create()`` until Lambda accepts a just-created role (IAM propagates in seconds)."""
    for attempt in range(attempts):
        try:
            return create()
        except Exception as exc:  # Lambda: InvalidParameterValueException "cannot be assumed"
            if "cannot be assumed" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(delay)
    return None
