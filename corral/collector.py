"""Holding back the garbage collector's full collections while a process builds many long-lived objects.

A full (oldest generation) collection walks every object alive. While a map task fills its buffers,
or the driver lists 20,000 input files and plans their splits, each such pass walks all of them again
(map loops lost 10-15% to it; the driver's planning grew faster than its input). Young collections go
on, so cycles made and dropped meanwhile are still freed; what reaches the oldest generation waits.

The ``corral`` command's process ends with its run: there the collector does not run at all while the
driver sets up (imports, lists, plans: little garbage, all of it alive until the tasks start), and what
it made by then is frozen (``gc.freeze``) when its first tasks start, never to be walked again.
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_holders = 0  # code holding full collections back in this process (tasks on threads, the driver)
_thresholds = gc.get_threshold()  # what full collections were set to before the first holder


@contextmanager
def full_collections_held(collect: bool = True) -> Iterator[None]:
    """No full collection while the block runs (nor while another holder's does). When the last holder
    ends, the full collection held back, if one is due, runs (``collect``): a process that holds again
    and again (a warm worker running task after task) would else never free the reference cycles left
    behind. Without ``collect`` the collector just goes on as before (the driver's listing and planning:
    what they made is still alive, so a collection then would walk it all for nothing)."""
    global _holders, _thresholds
    with _lock:
        if _holders == 0:
            _thresholds = gc.get_threshold()
            gc.set_threshold(_thresholds[0], _thresholds[1], 1 << 30)
        _holders += 1
    try:
        yield
    finally:
        with _lock:
            _holders -= 1
            due = collect and _holders == 0 and gc.get_count()[2] >= _thresholds[2] > 0
            if _holders == 0:
                gc.set_threshold(*_thresholds)
        if due:
            gc.collect()


_setting_up = False  # no collection in this process until its driver's first tasks start


def setting_up() -> None:
    """This process is a driver that ends with its run (the ``corral`` command), about to start: what
    it imported is frozen, and the collector waits until ``tasks_starting`` (the young collections of
    the listing and planning of 20,000 files cost ~25 ms, and found nothing to free)."""
    global _setting_up
    gc.freeze()
    gc.disable()
    _setting_up = True


def tasks_starting() -> None:
    """The driver's first tasks start: after ``setting_up``, what it made is frozen and the collector
    runs again (tasks on threads make garbage of their own; a forked worker does this as it starts)."""
    global _setting_up
    if _setting_up:
        _setting_up = False
        gc.freeze()
        gc.enable()


def holding() -> bool:
    """Whether full collections are held back in this process now."""
    return _holders > 0


def _forgotten_in_child() -> None:
    """A process forked while holding (the driver starts its worker processes so) holds nothing: its own
    tasks hold and let go from the thresholds the driver had before it held."""
    global _holders, _lock
    _lock = threading.Lock()
    tasks_starting()  # the driver's objects, copied, stay frozen: no collection here touches their pages
    if _holders:
        _holders = 0
        gc.set_threshold(*_thresholds)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forgotten_in_child)
