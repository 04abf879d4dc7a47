"""The shipped examples, run as the README shows, on the shipped sample data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .util import cli, lines, manifest

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DATA = EXAMPLES / "data"


def test_wordcount_on_the_sample_equals_counter(tmp_path, capsys):
    code, _, err = cli(capsys, "run", EXAMPLES / "wordcount.py", DATA / "sample.txt", "--out", tmp_path / "wc", "-q")
    assert (code, err) == (0, "")
    expected = Counter(DATA.joinpath("sample.txt").read_text().split())
    assert sorted(lines(tmp_path / "wc")) == sorted(f"{w}\t{n}" for w, n in expected.items())


def test_grep_keeps_the_matching_lines_in_order(tmp_path, capsys):
    code, _, err = cli(capsys, "run", EXAMPLES / "grep.py", DATA / "sample.txt", "--out", tmp_path / "grep",
                       "--arg", "pattern=^[A-Z]", "--backend", "threads")
    assert code == 0, err
    expected = [line for line in DATA.joinpath("sample.txt").read_text().splitlines() if line[:1].isupper()]
    assert lines(tmp_path / "grep") == expected
    assert manifest(tmp_path / "grep")["counters"] == {"grep": {"matched": len(expected)}}


def test_join_totals_order_amounts_per_country_in_two_stages(tmp_path, capsys):
    code, _, err = cli(capsys, "run", EXAMPLES / "join.py", DATA / "users.csv", DATA / "orders.csv",
                       "--out", tmp_path / "join")
    assert code == 0, err
    # cents per country: UK 12.50 + 5.01 + 0.99, US 3.99 + 20.00 + 100.00, FI 7.25 + 2.75, NL 42.00
    assert sorted(lines(tmp_path / "join")) == ["FI\t1000", "NL\t4200", "UK\t1850", "US\t12399"]
    result = manifest(tmp_path / "join")
    assert len(result["stages"]) == 2
    assert result["counters"] == {"join": {"orders without a user": 1}}  # o009 names the unknown u09
