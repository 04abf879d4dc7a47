"""The fault matrix's job: a word count with counters, into which one fault is injected per run.

Imports corral and the standard library only (it is shipped to containers and functions as it is).
``--arg markers=DIR`` holds the marker files that make a fault happen once (atomic creates, seen by
every process and container that mounts DIR); ``--arg fault=NAME``:

- ``user-error``: the first attempt of every task raises (map and reduce tasks);
- ``exit`` / ``kill``: the first map attempt to start calls ``os._exit(3)`` / SIGKILLs its own process;
- ``oom``: the first map attempt fills ``--arg mb=N`` megabytes (default 400);
- ``timeout``: the first map attempt sleeps ``--arg sleep=S`` seconds (default 30);
- ``straggle``: the first attempt of the task reading the line ``before`` hangs (60 s at most) until a
  later attempt of that task has finished.

``--arg map_slow=S`` / ``--arg reduce_slow=S`` make every map / reduce task last S seconds longer.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time

import corral


def once(folder: str, name: str) -> bool:
    """True exactly once per marker name, across processes and containers."""
    os.makedirs(folder, exist_ok=True)
    try:
        os.close(os.open(os.path.join(folder, name), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class FaultyWordCount(corral.Job):
    def map_init(self):
        self.fresh = True
        self.released = False
        time.sleep(float(self.args.get("map_slow", "0")))

    def map(self, key, line):
        if self.fresh:
            self.fresh = False
            self._inject("map", line)
        if line == "before" and self.args.get("fault") == "straggle":
            self._straggle()
        self.increment_counter("input", "lines")
        for word in line.split():
            self.increment_counter("input", "words")
            yield word, 1

    def map_final(self):
        if self.released:
            open(os.path.join(self.args["markers"], "released"), "w").close()
        return ()

    def combine(self, word, counts):
        yield word, sum(counts)

    def reduce_init(self):
        self.fresh = True
        time.sleep(float(self.args.get("reduce_slow", "0")))

    def reduce(self, word, counts):
        if self.fresh:
            self.fresh = False
            self._inject("reduce", word)
        self.increment_counter("output", "keys")
        yield word, sum(counts)

    def _inject(self, phase: str, first: str) -> None:
        fault, markers = self.args.get("fault", "none"), self.args.get("markers", "")
        if fault == "user-error":
            if once(markers, f"{phase}-{hashlib.sha1(first.encode('utf-8', 'surrogateescape')).hexdigest()}"):
                raise RuntimeError(f"a failure injected into the first attempt of this {phase} task")
        elif phase == "map" and fault in ("exit", "kill", "oom", "timeout") and once(markers, fault):
            if fault == "exit":
                os._exit(3)
            elif fault == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            elif fault == "oom":
                hoard = b"x" * (int(self.args.get("mb", "400")) << 20)  # touched: resident
                time.sleep(5)
                del hoard
            else:
                time.sleep(float(self.args.get("sleep", "30")))

    def _straggle(self) -> None:
        markers = self.args["markers"]
        if once(markers, "straggle"):
            deadline = time.time() + 60
            while time.time() < deadline and not os.path.exists(os.path.join(markers, "released")):
                time.sleep(0.05)
        else:
            self.released = True
