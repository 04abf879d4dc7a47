"""Filter and count CDN access logs: successful downloads of model files, per day and model.

    corral run benchmarks/jobs/cdnlogs.py LOGS/ --out OUT

The input is CloudFront standard logs (gzip files of 33 tab-separated fields under ``#`` header
lines, as ``benchmarks/datagen.py`` generates them); about 1 line in 20 is kept.
"""

import corral

FIELDS = 33


class ModelDownloads(corral.Job):
    def map(self, key, line):
        if line.startswith("#"):
            return
        fields = line.split("\t")
        if len(fields) == FIELDS and fields[7].startswith("/models/") and fields[8] in ("200", "206"):
            yield f"{fields[0]} {fields[7]}", 1

    def combine(self, key, counts):
        yield key, sum(counts)

    def reduce(self, key, counts):
        yield key, sum(counts)
