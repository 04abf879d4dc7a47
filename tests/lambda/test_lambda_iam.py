"""The execution role: its policy document (least privilege, asserted on the document itself), and its
life in IAM (moto in server mode, real boto3): created, left alone when unchanged, updated when the
job's locations change, deleted only when corral created it."""

from __future__ import annotations

import json

import pytest
from corral_lambda import iam

IN, OUT = "s3://a/in/", "s3://b/out/"
WORK = "s3://b/out/_corral/work"


def policy_for(inputs=(IN,), work=(WORK,)) -> dict:
    return iam.job_policy("corral-wc-WordCount", list(inputs), list(work), "us-east-1", "123456789012")


def test_the_policy_grants_nothing_outside_the_job_prefixes():
    policy = policy_for()
    statements = policy["Statement"]
    actions = [a for s in statements for a in s["Action"]]
    resources = [r for s in statements for r in s["Resource"]]
    assert all(s["Effect"] == "Allow" for s in statements)
    assert "*" not in resources and not any(a.endswith(":*") or a == "*" for a in actions)
    assert set(actions) <= {"logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "s3:GetObject",
                            "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListBucket"}
    for statement in statements:
        for arn in statement["Resource"]:
            if arn.startswith("arn:aws:s3:::"):
                path = arn[len("arn:aws:s3:::"):]
                if statement["Action"] == ["s3:ListBucket"]:
                    assert path in ("a", "b")  # a bucket, restricted by prefix below
                    prefixes = statement["Condition"]["StringLike"]["s3:prefix"]
                    assert all(p.startswith(("in/", "out/")) for p in prefixes), prefixes
                else:
                    assert path.startswith(("a/in/", "b/out/")), arn
            else:
                assert arn.startswith("arn:aws:logs:us-east-1:123456789012:log-group:/aws/lambda/corral-wc-WordCount:")
    # inputs are read-only; only the working root is written (the driver commits the output itself)
    writes = [s for s in statements if "s3:PutObject" in s["Action"]]
    assert [r for s in writes for r in s["Resource"]] == ["arn:aws:s3:::b/out/_corral/work",
                                                          "arn:aws:s3:::b/out/_corral/work/*"]
    reads = [s for s in statements if s["Action"] == ["s3:GetObject"]]
    assert [r for s in reads for r in s["Resource"]] == ["arn:aws:s3:::a/in/*"]


def test_globs_files_local_paths_and_partitions():
    assert iam.key_patterns("s3://a/logs/2024-*.gz") == ("a", ["logs/2024-*"])
    assert iam.key_patterns("s3://a/in/x.txt") == ("a", ["in/x.txt", "in/x.txt/*"])
    assert iam.key_patterns("/data/in") is None and iam.key_patterns("gs://g/in/") is None
    policy = iam.job_policy("f", ["/local/in"], [], "cn-north-1", "123456789012", "aws-cn")
    assert [s["Sid"] for s in policy["Statement"]] == ["Logs", "LogStreams"]  # logs only: nothing on S3
    assert policy["Statement"][0]["Resource"][0].startswith("arn:aws-cn:logs:cn-north-1:")


def test_role_names_are_valid_and_distinct():
    assert iam.role_name("corral-wordcount-WordCount") == "corral-wordcount-WordCount-role"
    long_a, long_b = "corral-" + "m" * 50 + "-aaaa1111", "corral-" + "m" * 50 + "-bbbb2222"
    assert len(iam.role_name(long_a)) <= 64 and iam.role_name(long_a) != iam.role_name(long_b)


@pytest.mark.moto
def test_role_created_unchanged_updated_and_deleted_in_iam(moto_server):
    import boto3

    client = boto3.client("iam")
    function = "corral-wc-WordCount"
    account, partition = iam.caller_identity(boto3.client("sts"))
    assert (account, partition) == ("123456789012", "aws")

    arn, created, changed = iam.ensure_role(client, function, policy_for())
    assert (created, changed) == (True, True) and arn.endswith(":role/corral-wc-WordCount-role")
    role = client.get_role(RoleName="corral-wc-WordCount-role")["Role"]
    assert role["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": "lambda.amazonaws.com"}
    tags = {t["Key"]: t["Value"] for t in client.list_role_tags(RoleName="corral-wc-WordCount-role")["Tags"]}
    assert tags == {"corral:managed": "true", "corral:function": function}
    stored = client.get_role_policy(RoleName="corral-wc-WordCount-role", PolicyName=iam.POLICY_NAME)
    assert stored["PolicyDocument"] == json.loads(json.dumps(policy_for()))

    assert iam.ensure_role(client, function, policy_for()) == (arn, False, False)  # nothing written
    moved = policy_for(inputs=("s3://a/other/",))
    assert iam.ensure_role(client, function, moved) == (arn, False, True)
    stored = client.get_role_policy(RoleName="corral-wc-WordCount-role", PolicyName=iam.POLICY_NAME)
    assert "arn:aws:s3:::a/other/*" in json.dumps(stored["PolicyDocument"])

    assert iam.delete_role(client, "corral-wc-WordCount-role", "another-function") is False  # not its role
    assert iam.delete_role(client, "corral-wc-WordCount-role", function) is True
    with pytest.raises(client.exceptions.NoSuchEntityException):
        client.get_role(RoleName="corral-wc-WordCount-role")
    assert iam.delete_role(client, "corral-wc-WordCount-role", function) is False  # already gone


@pytest.mark.moto
def test_a_role_corral_did_not_create_is_never_changed_or_deleted(moto_server):
    import boto3

    client = boto3.client("iam")
    client.create_role(RoleName="corral-mine-Job-role", AssumeRolePolicyDocument=json.dumps(iam.TRUST_POLICY))
    client.put_role_policy(RoleName="corral-mine-Job-role", PolicyName="hand-made", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]}))
    with pytest.raises(iam.RoleNotManaged, match=r"not created by corral.*--lambda-role-arn"):
        iam.ensure_role(client, "corral-mine-Job", policy_for())
    assert iam.delete_role(client, "corral-mine-Job-role", "corral-mine-Job") is False
    assert client.list_role_policies(RoleName="corral-mine-Job-role")["PolicyNames"] == ["hand-made"]


def test_create_function_waits_for_a_new_role_with_tenacity():
    calls = []

    def create():
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("InvalidParameterValueException: The role defined for the function cannot be "
                               "assumed by Lambda.")
        return "created"

    assert iam.while_role_propagates(create, wait=lambda state: 0) == "created" and len(calls) == 3
    with pytest.raises(RuntimeError, match="other"):
        iam.while_role_propagates(lambda: (_ for _ in ()).throw(RuntimeError("other")), wait=lambda state: 0)
