"""Output formats on gs:// (gcp-storage-emulator): several gzipped CSV part files per reducer through the
object-store commit (server-side copies), read back from GCS by a later corral job (see
tests/object_store_formats.py)."""

from __future__ import annotations

import pytest

from tests.gcs.test_gcs import corral
from tests.object_store_formats import (
    PER_FILE,
    REDUCERS,
    csv_rows,
    expected_parts,
    input_text,
    jsonl_records,
    write_job,
)

pytestmark = pytest.mark.gcs


def parts(gcs, prefix: str) -> dict[str, bytes]:
    found = sorted(gcs.find(prefix))
    return {p.rsplit("/", 1)[-1]: gcs.cat_file(p) for p in found if p.rsplit("/", 1)[-1].startswith("part-")}


def test_csv_gz_parts_per_reducer_commit_on_gcs_and_read_back(gcs_emulator, gcs, gcs_bucket, tmp_path):
    job = write_job(tmp_path / "job")
    text = input_text()
    gcs.pipe_file(f"{gcs_bucket}/in/words.txt", text.encode())
    done = corral("run", f"{job}:Totals", f"gs://{gcs_bucket}/in/", "--out", f"gs://{gcs_bucket}/out", "--backend",
                  "processes", "--reducers", str(REDUCERS), "--max-records-per-file", str(PER_FILE), "-q",
                  endpoint=gcs_emulator.url)
    assert (done.returncode, done.stderr) == (0, "")
    expected = expected_parts(text)
    found = parts(gcs, f"{gcs_bucket}/out/")
    assert list(found) == list(expected)
    assert {name: csv_rows(data) for name, data in found.items()} == expected
    assert gcs.exists(f"{gcs_bucket}/out/_SUCCESS") and not gcs.exists(f"{gcs_bucket}/out/_corral/work")

    back = corral("run", f"{job}:Back", f"gs://{gcs_bucket}/out/", "--out", f"gs://{gcs_bucket}/back", "--backend",
                  "processes", "--reducers", "1", "-q", endpoint=gcs_emulator.url)
    assert (back.returncode, back.stderr) == (0, "")
    (name, data), = parts(gcs, f"{gcs_bucket}/back/").items()
    assert name == "part-00000.jsonl.zst"
    rows = sorted(row for rows in expected.values() for row in rows)
    assert jsonl_records(data) == [{"key": w, "value": {"word": w, "count": n, "note": note}} for w, n, note in rows]
