"""The AMPLab Big Data Benchmark's queries 1-3 as corral jobs, over the CSV files of datagen.py.

    corral run benchmarks/jobs/amplab.py:Q1Scan rankings.csv --out OUT --arg threshold=100
    corral run benchmarks/jobs/amplab.py:Q2Aggregate uservisits.csv --out OUT
    corral run benchmarks/jobs/amplab.py:Q3Join rankings.csv uservisits.csv --out OUT \\
        --arg start=1980-01-01 --arg end=1983-01-01

rankings: pageURL,pageRank,avgDuration. uservisits: sourceIP,destURL,visitDate,adRevenue,userAgent,
countryCode,languageCode,searchWord,duration.
"""

import corral

Q1_THRESHOLD = "100"  # Query 1B (1A: 1000, 1C: 10)
Q2_PREFIX = "8"  # Query 2A (2B: 10, 2C: 12)
Q3_START, Q3_END = "1980-01-01", "1983-01-01"  # Query 3B (3A ends 1980-04-01, 3C 2010-01-01)


class Q1Scan(corral.Job):
    """SELECT pageURL, pageRank FROM rankings WHERE pageRank > X (map-only)."""

    def map_init(self):
        self.threshold = int(self.args.get("threshold", Q1_THRESHOLD))

    def map(self, key, line):
        url, rank, _ = line.split(",")
        rank = int(rank)
        if rank > self.threshold:
            yield url, rank


class Q2Aggregate(corral.Job):
    """SELECT SUBSTR(sourceIP, 1, 8), SUM(adRevenue) FROM uservisits GROUP BY SUBSTR(sourceIP, 1, 8)."""

    def map_init(self):
        self.prefix = int(self.args.get("prefix", Q2_PREFIX))

    def map(self, key, line):
        ip, _, _, revenue, _ = line.split(",", 4)
        yield ip[: self.prefix], float(revenue)

    def combine(self, prefix, revenues):
        yield prefix, sum(revenues)

    def reduce(self, prefix, revenues):
        yield prefix, sum(revenues)


class Q2AggregateInMapper(corral.Job):
    """Query 2 with in-mapper combining: each map task sums in a dict and emits once per prefix."""

    def map_init(self):
        self.prefix = int(self.args.get("prefix", Q2_PREFIX))
        self.sums = {}

    def map(self, key, line):
        ip, _, _, revenue, _ = line.split(",", 4)
        prefix = ip[: self.prefix]
        sums = self.sums
        sums[prefix] = sums.get(prefix, 0.0) + float(revenue)
        return ()

    def map_final(self):
        return self.sums.items()

    def reduce(self, prefix, revenues):
        yield prefix, sum(revenues)


class Q3Join(corral.Job):
    """SELECT sourceIP, totalRevenue, avgPageRank FROM (SELECT sourceIP, AVG(pageRank) AS avgPageRank,
    SUM(adRevenue) AS totalRevenue FROM Rankings AS R, UserVisits AS UV WHERE R.pageURL = UV.destURL
    AND UV.visitDate BETWEEN Date(START) AND Date(END) GROUP BY UV.sourceIP)
    ORDER BY totalRevenue DESC LIMIT 1 (ties: the smallest sourceIP).

    Three stages: a reduce-side join on the URL (a line's table is told by its number of fields),
    the aggregation per sourceIP, and the top one. Output: ``sourceIP<TAB>[totalRevenue, avgPageRank]``.
    """

    def steps(self):
        self.start = self.args.get("start", Q3_START)
        self.end = self.args.get("end", Q3_END)
        return [
            corral.Step(map=self.map_tables, reduce=self.join),
            corral.Step(map=self.map_identity, combine=self.add_up, reduce=self.add_up),
            corral.Step(map=self.map_top, combine=self.best, reduce=self.output_best, reducers=1),
        ]

    # stage 1: rankings -> (pageURL, pageRank); visits in the date range -> (destURL, [sourceIP, revenue])
    def map_tables(self, key, line):
        fields = line.split(",")
        if len(fields) == 9:
            if self.start <= fields[2] <= self.end:
                yield fields[1], [fields[0], float(fields[3])]
        elif len(fields) == 3:
            yield fields[0], int(fields[1])
        else:
            self.increment_counter("q3", "malformed lines")

    def join(self, url, values):
        rank = None
        visits = []
        for value in values:
            if type(value) is int:
                rank = value
            else:
                visits.append(value)
        if rank is None:
            return
        for ip, revenue in visits:
            yield ip, [revenue, rank, 1]

    # stage 2: per sourceIP, [total revenue, sum of pageRank, visits]
    def map_identity(self, ip, value):
        yield ip, value

    def add_up(self, ip, values):
        revenue = ranks = count = 0
        for r, p, n in values:
            revenue += r
            ranks += p
            count += n
        yield ip, [revenue, ranks, count]

    # stage 3: the top sourceIP by revenue
    def map_top(self, ip, value):
        revenue, ranks, count = value
        yield "top", [revenue, ip, ranks / count]

    def best(self, key, values):
        yield key, min(values, key=lambda v: (-v[0], v[1]))

    def output_best(self, key, values):
        revenue, ip, avg_rank = min(values, key=lambda v: (-v[0], v[1]))
        yield ip, [revenue, avg_rank]
