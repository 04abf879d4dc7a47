"""The AMPLab queries on an independent SQL engine (duckdb, else sqlite3), over the same CSV files.

    python -m benchmarks.sql q2 --rankings rankings.csv --uservisits uservisits.csv --out result.json

Writes the result rows as JSON (a list of [key, value] pairs shaped like corral's output), so that the
benchmark can check corral and the baselines against it. duckdb reads the CSV files itself (with every
core); sqlite3 is a slow fallback that loads them first.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from typing import Any

RANKINGS = "pageURL VARCHAR, pageRank INTEGER, avgDuration INTEGER"
USERVISITS = (
    "sourceIP VARCHAR, destURL VARCHAR, visitDate DATE, adRevenue DOUBLE, userAgent VARCHAR, "
    "countryCode VARCHAR, languageCode VARCHAR, searchWord VARCHAR, duration INTEGER"
)


def queries(threshold: int, prefix: int, start: str, end: str) -> dict[str, str]:
    return {
        "q1": f"SELECT pageURL, pageRank FROM rankings WHERE pageRank > {threshold}",
        "q2": (
            f"SELECT SUBSTR(sourceIP, 1, {prefix}), SUM(adRevenue) FROM uservisits "
            f"GROUP BY SUBSTR(sourceIP, 1, {prefix})"
        ),
        "q3": (
            "SELECT sourceIP, totalRevenue, avgPageRank FROM ("
            "SELECT sourceIP, AVG(pageRank) AS avgPageRank, SUM(adRevenue) AS totalRevenue "
            "FROM rankings AS R, uservisits AS UV WHERE R.pageURL = UV.destURL "
            f"AND UV.visitDate BETWEEN DATE '{start}' AND DATE '{end}' GROUP BY UV.sourceIP) "
            "ORDER BY totalRevenue DESC, sourceIP LIMIT 1"
        ),
    }


def _columns(schema: str) -> str:
    pairs = (column.split() for column in schema.split(", "))
    return "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in pairs) + "}"


def run_duckdb(query: str, sql: str, rankings: str | None, uservisits: str | None, threads: int) -> list[tuple]:
    import duckdb

    con = duckdb.connect(config={"threads": threads})
    for name, path, schema in (("rankings", rankings, RANKINGS), ("uservisits", uservisits, USERVISITS)):
        if path:
            con.execute(
                f"CREATE VIEW {name} AS SELECT * FROM read_csv('{path}', header=false, delim=',', "
                f"quote='', escape='', columns={_columns(schema)})"
            )
    return con.execute(sql).fetchall()


def run_sqlite(query: str, sql: str, rankings: str | None, uservisits: str | None, threads: int) -> list[tuple]:
    import sqlite3

    con = sqlite3.connect(":memory:")
    for name, path, schema in (("rankings", rankings, RANKINGS), ("uservisits", uservisits, USERVISITS)):
        if path:
            con.execute(f"CREATE TABLE {name} ({schema.replace('DATE', 'TEXT')})")
            with open(path, encoding="utf-8", newline="") as f:
                marks = ",".join("?" * schema.count(","))
                con.executemany(f"INSERT INTO {name} VALUES ({marks},?)", csv.reader(f))
    sql = sql.replace("DATE '", "'")
    return con.execute(sql).fetchall()


def shape(query: str, rows: list[tuple]) -> list[list[Any]]:
    """Rows shaped like corral's output records: q1 (url, rank), q2 (prefix, sum), q3 (ip, [sum, avg])."""
    if query == "q3":
        return [[ip, [revenue, avg]] for ip, revenue, avg in rows]
    return [[key, value] for key, value in rows]


def engine_name() -> str:
    try:
        import duckdb

        return f"duckdb {duckdb.__version__}"
    except ImportError:
        import sqlite3

        return f"sqlite3 {sqlite3.sqlite_version}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sql", description=__doc__.split("\n\n")[0])
    parser.add_argument("query", choices=["q1", "q2", "q3"])
    parser.add_argument("--rankings")
    parser.add_argument("--uservisits")
    parser.add_argument("--out", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--threshold", type=int, default=100)
    parser.add_argument("--prefix", type=int, default=8)
    parser.add_argument("--start", default="1980-01-01")
    parser.add_argument("--end", default="1983-01-01")
    args = parser.parse_args(argv)
    sql = queries(args.threshold, args.prefix, args.start, args.end)[args.query]
    run = run_duckdb if engine_name().startswith("duckdb") else run_sqlite
    rows = run(args.query, sql, args.rankings, args.uservisits, args.threads)
    with open(args.out, "w", encoding="utf-8") as out:
        json.dump(shape(args.query, rows), out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
