"""What the manifest of a run that went well says about its attempts, whatever the backend.

The driver starts a speculative duplicate of a straggler (one waiting out throttling too) once most of
its wave is done; the attempt that ends first is committed, the other one is cancelled, or discarded if
it ended as well. So a run with no failure has, per task, one committed attempt, and possibly one more
that the manifest marks as such; never a failed one.
"""

from __future__ import annotations

from typing import Any


def attempts(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(task, attempt)`` for every attempt of every stage, in the manifest's order."""
    return [(task, a) for stage in manifest["stages"] for task, t in stage["tasks"].items() for a in t["attempts"]]


def committed_once(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The committed attempts, after checking that each task has exactly one, that none failed, and that
    any other attempt is a speculative pair's loser (``cancelled`` or ``discarded``), counted as such."""
    committed, speculative = [], 0
    for stage in manifest["stages"]:
        for task, record in stage["tasks"].items():
            found = record["attempts"]
            mine = [a for a in found if a.get("status") == "committed"]
            assert len(mine) == 1, (task, found)
            assert record["committed_attempt"] == mine[0]["attempt"], (task, record)
            others = [a for a in found if a is not mine[0]]
            assert all(a.get("status") in ("cancelled", "discarded") for a in others), (task, found)
            if others:  # no retries here: a second attempt is a speculative duplicate (or its original)
                assert len(found) == 2 and sum(bool(a.get("speculative")) for a in found) == 1, (task, found)
                speculative += 1
            committed.append((task, mine[0]))
    assert manifest["speculative"]["attempts"] == speculative, manifest["speculative"]
    return committed
