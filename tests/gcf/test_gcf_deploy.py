"""``corral deploy`` / ``run`` / ``undeploy --backend gcf``: Google's own client (google-cloud-functions,
REST transport) and google-auth (a service-account key, ID tokens) against the emulator's Functions API.

Stood in for: Google's control plane and token endpoint (corral-emulator), Cloud Storage
(gcp-storage-emulator). Create, an unchanged deploy (no second upload), a code change (one update of
the code), a setting change (one update of the configuration), a function corral did not create, and
undeploy, as a user runs them.
"""

from __future__ import annotations

import textwrap

import pytest

from tests.gcf.conftest import ACCOUNT, PROJECT, corral, environment, function_path, gcf_flags

pytestmark = [pytest.mark.docker, pytest.mark.gcs]

JOB = '''
import corral


class Lifecycle(corral.Job):
    def map(self, key, line):
        for word in line.split():
            yield word, 1

    def reduce(self, word, counts):
        yield word, sum(counts)
'''


def test_deploy_uploads_once_updates_only_what_changed_and_undeploy_removes_it(
        gcf_emulator, key_file, functions_client, gcs, gcs_bucket, tmp_path):
    from google.api_core import exceptions

    job = tmp_path / "lifecycle.py"
    job.write_text(textwrap.dedent(JOB))
    gcs.pipe_file(f"{gcs_bucket}/in/a.txt", b"a b a\n")
    where = [f"gs://{gcs_bucket}/in/", "--out", f"gs://{gcs_bucket}/out"]
    flags = [*gcf_flags(gcf_emulator), "--reducers", "1", "-v"]
    env = environment(key_file)
    name = "corral-lifecycle-lifecycle"

    first = corral("run", job, *where, *flags, cwd=tmp_path, env=env)
    assert first.returncode == 0, first.stderr
    assert first.stderr.count("uploading the ") == 1 and "; create in " in first.stderr
    assert gcs.cat_file(f"{gcs_bucket}/out/part-00000") == b"a\t2\nb\t1\n"
    created = functions_client.get_function(name=function_path(name))
    assert dict(created.labels) == {"corral-managed": "true", "corral-sha256": created.labels["corral-sha256"]}
    assert len(created.labels["corral-sha256"]) == 63
    assert (created.build_config.runtime, created.build_config.entry_point) == ("python311", "corral_task")
    service = created.service_config
    assert (service.available_memory, service.available_cpu, service.timeout_seconds) == ("512Mi", "0.333", 60)
    assert (service.max_instance_count, service.max_instance_request_concurrency) == (100, 1)
    assert service.service_account_email == ACCOUNT
    assert dict(service.environment_variables) == {"CORRAL_MEMORY_MB": "512"}

    second = corral("run", job, *where, *flags, "--overwrite", cwd=tmp_path, env=env)
    assert second.returncode == 0, second.stderr
    assert "function up to date" in second.stderr and "uploading" not in second.stderr
    unchanged = functions_client.get_function(name=function_path(name))
    assert (unchanged.update_time, unchanged.service_config.revision) == (created.update_time, service.revision)

    job.write_text(textwrap.dedent(JOB).replace("yield word, 1", "yield word.upper(), 1"))
    code = corral("deploy", job, *where, *flags, cwd=tmp_path, env=env)
    assert code.returncode == 0, code.stderr
    assert code.stderr.count("uploading the ") == 1 and "; update-code in " in code.stderr
    assert "update-config" not in code.stderr
    updated = functions_client.get_function(name=function_path(name))
    assert updated.labels["corral-sha256"] != created.labels["corral-sha256"]
    assert updated.service_config.revision != service.revision and updated.service_config.available_memory == "512Mi"

    memory = corral("deploy", job, *where, *flags, "--memory", "1024", "--timeout", "90", cwd=tmp_path, env=env)
    assert memory.returncode == 0, memory.stderr
    assert "; update-config in " in memory.stderr and "update-code" not in memory.stderr
    assert "uploading" not in memory.stderr
    resized = functions_client.get_function(name=function_path(name))
    assert (resized.service_config.available_memory, resized.service_config.available_cpu) == ("1Gi", "0.583")
    assert resized.service_config.timeout_seconds == 90
    assert resized.service_config.environment_variables["CORRAL_MEMORY_MB"] == "1024"
    assert resized.labels["corral-sha256"] == updated.labels["corral-sha256"]

    gone = corral("undeploy", job, *gcf_flags(gcf_emulator), cwd=tmp_path, env=env)
    assert gone.returncode == 0, gone.stderr
    assert "deleted the function corral-lifecycle-lifecycle" in gone.stderr
    with pytest.raises(exceptions.NotFound):
        functions_client.get_function(name=function_path(name))
    assert gcs.exists(f"{gcs_bucket}/out/part-00000")  # the data is left alone
    again = corral("undeploy", job, *gcf_flags(gcf_emulator), cwd=tmp_path, env=env)
    assert again.returncode == 0 and "does not exist" in again.stderr


def test_a_function_corral_did_not_create_is_left_alone(gcf_emulator, key_file, functions_client, tmp_path):
    from google.cloud import functions_v2

    from tests.emulator.conftest import upload_source

    source = upload_source(functions_client, {"main.py": "def handler(request):\n    return 'theirs'\n"})
    name = "corral-theirs-theirs"
    functions_client.create_function(parent=f"projects/{PROJECT}/locations/us-central1", function_id=name,
                                      function=functions_v2.Function(build_config={
                                          "runtime": "python311", "entry_point": "handler",
                                          "source": {"storage_source": source}})).result(timeout=120)
    job = tmp_path / "theirs.py"
    job.write_text(textwrap.dedent(JOB).replace("Lifecycle", "Theirs"))
    env = environment(key_file)
    done = corral("deploy", job, *gcf_flags(gcf_emulator), cwd=tmp_path, env=env)
    assert done.returncode == 2
    assert "the function corral-theirs-theirs exists but was not created by corral" in done.stderr
    gone = corral("undeploy", job, *gcf_flags(gcf_emulator), cwd=tmp_path, env=env)
    assert gone.returncode == 2 and "was not created by corral: left alone" in gone.stderr
    assert functions_client.get_function(name=function_path(name)).labels == {}


def test_two_deploys_at_once_share_one_function(gcf_emulator, key_file, functions_client, tmp_path):
    """Two runs of one job starting together both find no function: one creates it; Cloud Functions
    refuses the other's create (409 "already exists"), which then waits for that deploy and uses it."""
    import shutil
    import subprocess

    job = tmp_path / "together.py"
    job.write_text(textwrap.dedent(JOB).replace("Lifecycle", "Together"))
    started = [subprocess.Popen([shutil.which("corral"), "deploy", str(job), *gcf_flags(gcf_emulator), "-v"],
                                cwd=tmp_path, env=environment(key_file), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    done = [(p.wait(timeout=300), p.stderr.read()) for p in started]
    assert [code for code, _ in done] == [0, 0], done
    logs = [err for _, err in done]
    assert sum("; create in " in err for err in logs) == 1, logs
    (other,) = [err for err in logs if "; create in " not in err]
    assert "function up to date" in other, other  # after waiting for the first deploy, or refused its create
    found = functions_client.get_function(name=function_path("corral-together-together"))
    assert found.state.name == "ACTIVE" and "-00001-" in found.service_config.revision  # deployed once
