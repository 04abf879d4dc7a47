"""``examples/cloudfront.py`` on the shipped sample of CloudFront logs: its gzipped CSV and its counters,
checked exactly against a computation written here without corral; and the sample is what its seeded
generator makes."""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from collections import Counter, defaultdict
from datetime import date
from pathlib import Path

from .util import EXAMPLES, run_command

SAMPLE = EXAMPLES / "data" / "cloudfront"


def _address(text: str) -> int | None:
    parts = text.split(".")
    if len(parts) != 4 or not all(p.isdigit() and int(p) < 256 and str(int(p)) == p for p in parts):
        return None
    return int.from_bytes(bytes(int(p) for p in parts), "big")


def independent_report() -> tuple[list[list[str]], Counter]:
    """Rows (day, country, requests, bytes) sorted, and the counts of each kind of line, from the raw files."""
    ranges = []
    for row in csv.reader((SAMPLE / "ip-country.tsv").read_text().splitlines()[1:], delimiter="\t"):
        ranges.append((_address(row[0]), _address(row[1]), row[2]))
    totals: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    kinds: Counter = Counter()
    for path in sorted((SAMPLE / "logs").glob("*.gz")):
        for line in gzip.decompress(path.read_bytes()).decode("utf-8").splitlines():
            if line[:1] == "#":
                kinds["header lines"] += 1
                continue
            f = line.split("\t")
            try:
                assert len(f) == 33
                date.fromisoformat(f[0])
                sent, status = int(f[3]), int(f[8])
                assert f[3].isdigit() and f[8].isdigit()
            except (AssertionError, ValueError):
                kinds["malformed lines"] += 1
                continue
            path_only = f[7].lower()
            agent = f[10].replace("%20", " ").replace("%3B", ";").lower()
            if path_only.rsplit(".", 1)[-1] in {"css", "js", "map", "png", "jpg", "jpeg", "gif", "svg", "ico",
                                                 "woff", "woff2"} and "." in path_only.rsplit("/", 1)[-1]:
                kinds["skipped: static files"] += 1
            elif "bot" in agent or "spider" in agent or "crawler" in agent or "slurp" in agent:
                kinds["skipped: bots"] += 1
            elif status >= 400:
                kinds["skipped: errors"] += 1
            elif _address(f[4]) is None:
                kinds["malformed lines"] += 1
            else:
                address = _address(f[4])
                country = next((c for low, high, c in ranges if low <= address <= high), "unknown")
                kinds["kept"] += 1
                totals[(f[0], country)][0] += 1
                totals[(f[0], country)][1] += sent
    rows = sorted([day, country, str(n), str(b)] for (day, country), (n, b) in totals.items())
    return rows, kinds


def test_the_cloudfront_example_on_the_shipped_sample_is_exact(tmp_path):
    done = run_command("corral", "run", EXAMPLES / "cloudfront.py", SAMPLE / "logs", "--out", tmp_path / "out",
                       "--backend", "processes", "--map-bin-size", "256KB")
    assert done.returncode == 0, done.stderr
    parts = sorted((tmp_path / "out").glob("part-*"))
    assert parts and all(p.name.endswith(".csv.gz") for p in parts)
    rows = []
    for part in parts:
        text = gzip.decompress(part.read_bytes()).decode("utf-8")
        found = list(csv.reader(io.StringIO(text)))
        assert found[0] == ["day", "country", "requests", "bytes"]  # a header in every part
        assert found[1:] == sorted(found[1:], key=lambda r: f"{r[0]} {r[1]}")  # a reducer's keys, sorted
        rows += found[1:]
    expected_rows, kinds = independent_report()
    assert sorted(rows) == expected_rows
    counters = json.loads((tmp_path / "out" / "_corral" / "manifest.json").read_text())["counters"]
    assert counters == {"cloudfront": dict(sorted(kinds.items()))}
    lines = sum(kinds.values()) - kinds["header lines"]
    assert kinds["header lines"] == 2 * 300 and kinds["kept"] < lines / 5  # most lines are discarded
    assert kinds["malformed lines"] > 0 and all(kinds[k] > 0 for k in ("skipped: static files", "skipped: bots",
                                                                          "skipped: errors"))
    assert "    kept: " + str(kinds["kept"]) in done.stderr  # the counters in the summary


def test_the_shipped_sample_is_what_the_generator_makes(tmp_path):
    sys.path.insert(0, str(SAMPLE))
    try:
        import generate
    finally:
        sys.path.remove(str(SAMPLE))
    made = generate.generate(str(tmp_path / "logs"))
    shipped = sorted((SAMPLE / "logs").glob("*.gz"))
    assert sorted(Path(p).name for p in made) == [p.name for p in shipped]
    for path in shipped:
        assert gzip.decompress((tmp_path / "logs" / path.name).read_bytes()) == gzip.decompress(path.read_bytes())
    assert all(p.stat().st_size < 16_000 for p in shipped) and sum(p.stat().st_size for p in shipped) < 2_000_000
    generate.write_lookup(str(tmp_path / "lookup.tsv"))
    assert (tmp_path / "lookup.tsv").read_bytes() == (SAMPLE / "ip-country.tsv").read_bytes()
