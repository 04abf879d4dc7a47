"""A map task's payload on the wire: its splits as compact ``[url, start, end(, kind)]`` lists (20,000
small files make 20,000 splits to send and rebuild per run), read back by the worker, which still reads
the older dict form that a backend or tool may send."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from corral.split import Split
from corral.tasks import MapSpec, spec_from_json
from corral.worker import job_ref, run_task

from . import jobs


def map_spec(splits: tuple[Split, ...], out: Path) -> MapSpec:
    return MapSpec(job=job_ref(jobs.Cat), stage=0, task="map-0000", attempt=1, output=str(out),
                   output_kind="text", splits=splits, output_spec={"format": "text"})


def test_splits_go_as_compact_lists_and_come_back_as_splits(tmp_path: Path) -> None:
    splits = (Split("/in/a.gz", 0, 4865), Split("s3://b/part-0", 10, 20, "records"))
    payload = json.loads(json.dumps(map_spec(splits, tmp_path / "out").to_json()))  # JSON-able, as backends send it
    assert payload["splits"] == [["/in/a.gz", 0, 4865], ["s3://b/part-0", 10, 20, "records"]]
    assert spec_from_json(payload).splits == splits


def test_a_task_reads_compact_and_dict_splits_alike(tmp_path: Path) -> None:
    plain = tmp_path / "a.txt"
    plain.write_text("one\ntwo\n")
    packed = tmp_path / "b.gz"
    packed.write_bytes(gzip.compress(b"three\n"))
    splits = (Split(str(plain), 0, plain.stat().st_size), Split(str(packed), 0, packed.stat().st_size))
    results = []
    for form, out in (("compact", tmp_path / "compact"), ("dict", tmp_path / "dict")):
        payload = map_spec(splits, out).to_json()
        if form == "dict":
            payload["splits"] = [s.to_json() for s in splits]
        result = run_task(payload)
        assert result["ok"], result
        assert result["records_in"] == 3
        assert result["bytes_in"] == sum(s.end - s.start for s in splits)
        results.append([Path(part).read_text() for part in result["parts"]])
    assert results[0] == results[1]
    assert "".join(results[0]).split() == ["one", "two", "three"]
