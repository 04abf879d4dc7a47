"""Requests and bytes per day and country, from CloudFront standard access logs, as gzipped CSV.

    corral run examples/cloudfront.py examples/data/cloudfront/logs --out /tmp/cloudfront

CloudFront writes gzip files of tab-separated lines (33 fields) under ``#Version`` / ``#Fields`` header
lines. This job skips the header lines, drops requests for static files, from bots (by their URL-decoded
user agent) and those that failed, looks up each kept request's country by its client address in a
shipped table (a side file: ``files``), and sums requests and bytes per day and country, with a combiner.
Malformed lines (a wrong field count, a bad date, size, status or address) and each kind of skipped line
are counted. The output is ``part-*.csv.gz`` with a header row, ready for a warehouse ``COPY``.
"""

import bisect
import ipaddress
import re
from urllib.parse import unquote

import corral

#: Requests for these are static files, not what this report counts.
STATIC_SUFFIXES = (".css", ".js", ".map", ".png", ".jpg", ".jpeg", ".gif", ".svg", ".ico", ".woff", ".woff2")
BOT_MARKERS = ("bot", "spider", "crawler", "slurp")
FIELD_COUNT = 33
DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class CloudFront(corral.Job):
    files = ["data/cloudfront/ip-country.tsv"]
    output_format = "csv"
    output_compression = "gzip"
    output_header = ["day", "country", "requests", "bytes"]

    def map_init(self):
        """Load the address ranges once per task: sorted first addresses, their last ones, countries."""
        ranges = []
        with open(self.file_path("ip-country.tsv"), encoding="utf-8") as table:
            for line in table:
                if not line.startswith("#"):
                    first, last, country = line.rstrip("\n").split("\t")
                    ranges.append((int(ipaddress.IPv4Address(first)), int(ipaddress.IPv4Address(last)), country))
        ranges.sort()
        self.starts = [first for first, _, _ in ranges]
        self.ranges = ranges

    def country(self, address: int) -> str:
        at = bisect.bisect_right(self.starts, address) - 1
        if at >= 0 and address <= self.ranges[at][1]:
            return self.ranges[at][2]
        return "unknown"

    def map(self, key, line):
        if line.startswith("#"):
            self.increment_counter("cloudfront", "header lines")
            return
        fields = line.split("\t")
        if len(fields) != FIELD_COUNT or not DAY.match(fields[0]) or not fields[3].isdigit() or \
                not fields[8].isdigit():
            self.increment_counter("cloudfront", "malformed lines")
            return
        if fields[7].lower().endswith(STATIC_SUFFIXES):
            self.increment_counter("cloudfront", "skipped: static files")
            return
        agent = unquote(fields[10]).lower()
        if any(marker in agent for marker in BOT_MARKERS):
            self.increment_counter("cloudfront", "skipped: bots")
            return
        if int(fields[8]) >= 400:
            self.increment_counter("cloudfront", "skipped: errors")
            return
        try:
            address = int(ipaddress.IPv4Address(fields[4]))
        except ValueError:
            self.increment_counter("cloudfront", "malformed lines")
            return
        self.increment_counter("cloudfront", "kept")
        yield f"{fields[0]} {self.country(address)}", [1, int(fields[3])]

    def combine(self, key, totals):
        requests = size = 0
        for count, sent in totals:
            requests += count
            size += sent
        yield key, [requests, size]

    def reduce(self, key, totals):
        (_, [requests, size]), = self.combine(key, totals)
        day, country = key.split(" ")
        yield day, [country, requests, size]


if __name__ == "__main__":
    CloudFront.main()
