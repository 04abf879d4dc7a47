"""A map-only job whose map yields nothing: each task reads its one-line file and writes nothing, so a
run of many tasks measures what the driver spends on each (planning, specs, submitting, commits)."""

import corral


class NoOp(corral.Job):
    def map(self, key, line):
        return ()
