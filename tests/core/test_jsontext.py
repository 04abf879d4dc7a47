"""``corral.jsontext``: the text in pieces is ``json.dumps``'s, however the items of a list are batched."""

from __future__ import annotations

import json

import pytest

from corral.jsontext import BATCH, chunks


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)


@pytest.mark.parametrize("value", [
    [],
    [1],
    (1, "two", None),
    list(range(5_000)),
    [[f"/in/{i:06d}.gz", 13_000 + i, str(1.7e9 + i / 7)] for i in range(20_000)],  # a run's fingerprint
    [["x" * 50_000], *[[i] for i in range(100)], "y" * 3 * BATCH, 1.5, {"k": [1, {"z": ()}]}],
    {"t": "run", "fingerprint": [["a", 1, "v"]] * 1_000, "inputs": ["in"]},
    [{1, 2}],  # not JSON: its str
])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_the_text_is_json_dumps_text(value, depth):
    assert "".join(chunks(value, depth)) == _dumps(value)


def test_small_items_are_encoded_many_at_a_time_and_big_ones_alone():
    small = list(chunks([[f"/in/{i:06d}.gz", i, "1.5"] for i in range(20_000)], 1))
    assert len(small) < 200  # not 20,000 texts
    big = list(chunks([["x" * BATCH]] * 20, 1))
    assert max(len(text) for text in big) < 3 * BATCH  # a big item at a time

