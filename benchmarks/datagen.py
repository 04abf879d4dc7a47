"""Deterministic (seeded) data generators for the benchmarks.

* ``generate_text``: a Zipf-distributed text corpus (bounded Zipf over a vocabulary, s ~ 1.1, lines of
  10-20 words) of any size.
* ``generate_amplab``: the AMPLab Big Data Benchmark's ``rankings`` and ``uservisits`` tables as CSV,
  following the rules of the generator that produced the original data set (Intel HiBench's
  ``HiveData``; see ``amplab_rules`` below).
* ``generate_gensort``: 100-byte sort records in gensort's ASCII ("-a") layout, with uniform or skewed
  keys.
* ``generate_cdn_logs``: many small gzip files of CloudFront access logs, made by the seeded generator
  of ``examples/cloudfront.py`` (``examples/data/cloudfront/generate.py``), in parallel.

Every generator cuts its output into chunks that are generated from ``(seed, chunk number)`` alone, so
the bytes written are the same whether the chunks are made by one process or by a pool.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

MiB = 1 << 20
CHUNK_BYTES = 4 * MiB

_globals: dict[str, Any] = {}  # read-only tables shared with forked generator processes


def _pool_map(func: Callable[[int], bytes], indexes: range, pool: Any) -> Iterator[bytes]:
    """``func(i)`` for ``i`` in ``indexes``, in order, on ``pool`` if there is one."""
    if pool is None or len(indexes) <= 1:
        return map(func, indexes)
    return pool.imap(func, indexes, chunksize=1)


def _write_chunks(path: Path, size: int, chunk: Callable[[int], bytes], workers: int, per_chunk: int) -> int:
    """Write chunks 0, 1, ... until ``size`` bytes; the last one is cut after a whole line.

    Chunks are made by a fork pool of ``workers`` processes (the tables in ``_globals`` are inherited).
    Returns the bytes written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    done = False
    tmp = path.with_name(path.name + ".tmp")
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        with open(tmp, "wb") as out:
            next_chunk = 0
            while not done and written < size:
                count = max(1, -(-(size - written) // per_chunk)) + workers
                for data in _pool_map(chunk, range(next_chunk, next_chunk + count), pool):
                    room = size - written
                    if not data:
                        done = True
                        break
                    if len(data) >= room:
                        cut = data.rfind(b"\n", 0, room + 1)
                        data = data[: cut + 1] if cut >= 0 else b""
                        done = True
                    out.write(data)
                    written += len(data)
                    if done:
                        break
                next_chunk += count
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    os.replace(tmp, path)
    return written


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, *stream])


def _random_strings(rng: np.random.Generator, lengths: np.ndarray, low: int = 97, high: int = 123) -> list[str]:
    """Random strings of the given lengths with characters in ``[low, high)`` (default a-z)."""
    ends = np.cumsum(lengths)
    letters = rng.integers(low, high, int(ends[-1]) if len(ends) else 0, dtype=np.uint8).tobytes().decode("ascii")
    starts = (ends - lengths).tolist()
    return [letters[a:b] for a, b in zip(starts, ends.tolist(), strict=True)]


# --- Zipf text corpus -------------------------------------------------------------------------------


def make_vocabulary(size: int, seed: int) -> list[str]:
    """``size`` distinct lowercase words, shortest first (rank 1 is the most frequent word)."""
    rng = _rng(seed, 0)
    # frequent words are short, as in natural languages: ~2 letters at rank 1, ~8 at rank 100,000
    ranks = np.arange(1, size + 1)
    lengths = np.clip(np.rint(2 + 1.2 * np.log10(ranks) + rng.normal(0.0, 1.2, size)), 1, 20).astype(np.int64)
    words: list[str] = []
    seen: set[str] = set()
    length_of_rank = lengths.tolist()
    pending = 0
    while len(words) < size:
        batch = length_of_rank[len(words) : len(words) + 65536]
        # bump a length that has run out of distinct strings (there are only 26**2 two-letter words)
        batch = [max(n, 1 + pending) for n in batch]
        fresh = 0
        for word in _random_strings(rng, np.array(batch)):
            if word not in seen:
                seen.add(word)
                words.append(word)
                fresh += 1
        pending = pending + 1 if fresh < len(batch) // 2 else 0
    return words[:size]


def zipf_cdf(size: int, s: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, size + 1, dtype=np.float64) ** s
    cdf = np.cumsum(weights)
    return cdf / cdf[-1]


def _text_chunk(index: int) -> bytes:
    g = _globals
    rng = _rng(g["seed"], 1, index)
    lines = g["lines_per_chunk"]
    counts = rng.integers(g["min_words"], g["max_words"] + 1, lines)
    tokens = int(counts.sum())
    ids = np.searchsorted(g["cdf"], rng.random(tokens), side="right")
    np.minimum(ids, g["vocab_size"] - 1, out=ids)
    ids[np.cumsum(counts) - 1] += g["vocab_size"]  # the last word of a line ends with "\n"
    return "".join(map(g["tokens"].__getitem__, ids.tolist())).encode("ascii")


def generate_text(
    path: str | os.PathLike,
    size: int,
    *,
    vocabulary: int = 200_000,
    s: float = 1.1,
    min_words: int = 10,
    max_words: int = 20,
    seed: int = 42,
    workers: int = 2,
) -> int:
    """Write a Zipf text corpus of ``size`` bytes (cut at a line end) to ``path``; return its size."""
    vocab = make_vocabulary(vocabulary, seed)
    cdf = zipf_cdf(vocabulary, s)
    probabilities = np.diff(cdf, prepend=0.0)
    bytes_per_word = float(np.dot(probabilities, [len(w) + 1 for w in vocab]))
    lines_per_chunk = max(1, int(CHUNK_BYTES / (bytes_per_word * (min_words + max_words) / 2)))
    _globals.clear()
    _globals.update(
        seed=seed,
        cdf=cdf,
        vocab_size=vocabulary,
        tokens=[w + " " for w in vocab] + [w + "\n" for w in vocab],
        lines_per_chunk=lines_per_chunk,
        min_words=min_words,
        max_words=max_words,
    )
    return _write_chunks(Path(path), size, _text_chunk, workers, CHUNK_BYTES)


# --- AMPLab Big Data Benchmark: rankings and uservisits -----------------------------------------------

#: How the original data was made (Intel HiBench ``HiveData``, which the AMPLab benchmark used):
#:  * pages have URLs of 10-100 random lowercase letters;
#:  * every page has ~40 outgoing links (5% of a Gaussian(800, 80) page length) whose targets follow a
#:    Zipf law with exponent 0.5 over the pages; ``pageRank`` is a page's number of incoming links, and
#:    pages nobody links to are left out of ``rankings``; ``avgDuration`` is uniform in 1..99;
#:  * a visit goes to a uniformly chosen page; ``sourceIP`` is ``[1,254].[0,254].[0,254].[1,254]``;
#:    ``visitDate`` is uniform from 1970-01-01 to 2012-05-01; ``adRevenue`` is uniform in [0, 1);
#:    ``userAgent`` is drawn from 2000 agents made from a weighted list of real agent strings (24.41% of
#:    them random ``Name/d.d``); ``countryCode,languageCode`` is a pair like ``USA,USA-EN`` (from Java's
#:    locales); ``searchWord`` is one of 1000 words; ``duration`` is uniform in 1..10.
#: One deliberate change: ``adRevenue`` is a multiple of 1/1024 (printed exactly), not a float32's
#: shortest decimal, so that every sum of revenues is exact in binary floating point whatever the
#: order of additions, and corral, the baselines and the SQL engine can be compared for exact equality.

LINKS_PER_PAGE = 40
LINK_ZIPF_EXPONENT = 0.5
FIRST_DAY = dt.date(1970, 1, 1)
LAST_DAY = dt.date(2012, 5, 1)  # exclusive
REVENUE_STEPS = 1024

_USER_AGENTS = [  # (share of the 2000 agents, agent); the remaining share is random "Name/d.d"
    (0.0800, "Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1; SV1; .NET CLR 1.1.4322)"),
    (0.0300, "Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.0)"),
    (0.1300, "Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1)"),
    (0.0900, "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 5.2)"),
    (0.0700, "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 6.0)"),
    (0.0700, "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 5.1)"),
    (0.0400, "Mozilla/4.0 (compatible; MSIE 8.0; Windows NT 6.1)"),
    (0.0150, "Mozilla/4.0 (compatible; MSIE 5.5; Windows NT 5.0)"),
    (0.0600, "Mozilla/5.0 (Windows; U; Windows NT 5.2) AppleWebKit/525.13 (KHTML like Gecko) Chrome/xxx"),
    (0.0300, "Mozilla/5.0 (Windows; U; Windows NT 5.2)AppleWebKit/525.13 (KHTML like Gecko) Version/3.1Safari/525.13"),
    (0.0400, "Mozilla/5.0 (iPhone; U; CPU like Mac OS X)AppleWebKit/420.1 (KHTML like Gecko) Version/3.0 Mobile/4A93Safari/419.3"),  # noqa: E501
    (0.0050, "Mozilla/5.0 (Macintosh; U; PPC Mac OS X; en) AppleWebKit/125.2 (KHTML like Gecko) Safari/125.8"),
    (0.0080, "Mozilla/5.0 (Windows; U; Windows NT 5.1)Gecko/20070309 Firefox/2.0.0.3"),
    (0.0070, "Mozilla/5.0 (Windows; U; Windows NT 5.2)Gecko/2008070208 Firefox/3.0.1"),
    (0.0112, "Mozilla/5.0 (Windows; U; Windows NT 5.2) AppleWebKit/525.13 (KHTML like Gecko) Chrome/0.2.149.27 Safari/525.13"),  # noqa: E501
    (0.0075, "Mozilla/4.8 (Windows NT 6.0; U)"),
    (0.0033, "Opera/9.20 (Windows NT 6.0; U; en)"),
    (0.0035, "Opera/7.51 (Windows NT 5.1; U)"),
    (0.0048, "Opera/8.0 (Macintosh; PPC Mac OS X; U; en)"),
    (0.0025, "Mozilla/5.0 (Windows; U; Win98; en-US; rv:1.4) Gecko Netscape/7.1 (ax)"),
    (0.0020, "Mozilla/2.02E (Win95; U)"),
]
_RANDOM_AGENT_SHARE = 0.2441
_AGENTS = 2000
_SEARCH_WORDS = 1000

#: (ISO 3166 alpha-3 country, ISO 639 language) pairs, as Java's locales list them.
_LOCALES = (
    "ARE AR,BHR AR,DZA AR,EGY AR,IRQ AR,JOR AR,KWT AR,LBN AR,LBY AR,MAR AR,OMN AR,QAT AR,SAU AR,SDN AR,"
    "SYR AR,TUN AR,YEM AR,BLR BE,BGR BG,ESP CA,CZE CS,DNK DA,AUT DE,CHE DE,DEU DE,LUX DE,GRC EL,CYP EL,"
    "AUS EN,CAN EN,GBR EN,IND EN,IRL EN,MLT EN,NZL EN,PHL EN,SGP EN,USA EN,ZAF EN,ARG ES,BOL ES,CHL ES,"
    "COL ES,CRI ES,DOM ES,ECU ES,ESP ES,GTM ES,HND ES,MEX ES,NIC ES,PAN ES,PER ES,PRI ES,PRY ES,SLV ES,"
    "URY ES,VEN ES,EST ET,FIN FI,BEL FR,CAN FR,CHE FR,FRA FR,LUX FR,IRL GA,HRV HR,HUN HU,IDN IN,ISL IS,"
    "CHE IT,ITA IT,ISR IW,JPN JA,KOR KO,LTU LT,LVA LV,MKD MK,MYS MS,MLT MT,BEL NL,NLD NL,NOR NO,POL PL,"
    "BRA PT,PRT PT,ROU RO,RUS RU,SVK SK,SVN SL,ALB SQ,BIH SR,MNE SR,SRB SR,SWE SV,THA TH,TUR TR,UKR UK,"
    "VNM VI,CHN ZH,HKG ZH,SGP ZH,TWN ZH"
).split(",")


def _user_agents(rng: np.random.Generator) -> list[str]:
    agents: list[str] = []
    for share, agent in _USER_AGENTS:
        agents += [agent] * round(share * _AGENTS)
    missing = _AGENTS - len(agents)
    names = _random_strings(rng, rng.integers(5, 25, missing))
    digits = rng.integers(0, 9, (missing, 2)).tolist()
    agents += [f"{n[0].upper()}{n[1:]}/{a}.{b}" for n, (a, b) in zip(names, digits, strict=True)]
    return agents


def make_pages(pages: int, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """URLs, pageRank (incoming links) and avgDuration of ``pages`` pages (some with no links)."""
    rng = _rng(seed, 2)
    urls = _random_strings(rng, rng.integers(10, 101, pages))
    # each of pages*40 links picks its target with P(rank k) ~ k**-0.5: k's count is ~Poisson
    expected = LINKS_PER_PAGE * pages * np.diff(zipf_cdf(pages, LINK_ZIPF_EXPONENT), prepend=0.0)
    in_links = np.empty(pages, dtype=np.int64)
    in_links[rng.permutation(pages)] = rng.poisson(expected)
    durations = rng.integers(1, 100, pages)
    return urls, in_links, durations


def _visit_chunk(index: int) -> bytes:
    g = _globals
    rng = _rng(g["seed"], 4, index)
    n = g["rows_per_chunk"]
    octet = g["octets"]
    url = g["urls"]
    date = g["dates"]
    revenue = g["revenues"]
    agent = g["agents"]
    locale = g["locales"]
    word = g["words"]
    columns = (
        rng.integers(1, 255, n).tolist(),
        rng.integers(0, 255, n).tolist(),
        rng.integers(0, 255, n).tolist(),
        rng.integers(1, 255, n).tolist(),
        rng.integers(0, len(url), n).tolist(),
        rng.integers(0, len(date), n).tolist(),
        rng.integers(0, REVENUE_STEPS, n).tolist(),
        rng.integers(0, len(agent), n).tolist(),
        rng.integers(0, len(locale), n).tolist(),
        rng.integers(0, len(word), n).tolist(),
        rng.integers(1, 11, n).tolist(),
    )
    lines = [
        f"{octet[a]}.{octet[b]}.{octet[c]}.{octet[d]},{url[u]},{date[t]},{revenue[r]},{agent[ua]},"
        f"{locale[lo]},{word[w]},{du}\n"
        for a, b, c, d, u, t, r, ua, lo, w, du in zip(*columns, strict=True)
    ]
    return "".join(lines).encode("ascii")


def generate_amplab(
    folder: str | os.PathLike,
    pages: int,
    uservisits_bytes: int,
    *,
    seed: int = 42,
    workers: int = 2,
) -> dict[str, Any]:
    """Write ``folder/rankings.csv`` (about ``pages`` rows) and ``folder/uservisits.csv`` (cut at
    ``uservisits_bytes``); return their paths and sizes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    urls, in_links, durations = make_pages(pages, seed)
    linked = np.flatnonzero(in_links > 0)
    ranked_urls = [urls[i] for i in linked.tolist()]
    rankings = folder / "rankings.csv"
    tmp = rankings.with_name("rankings.csv.tmp")
    with open(tmp, "w", encoding="ascii", newline="\n") as out:
        rows = zip(ranked_urls, in_links[linked].tolist(), durations[linked].tolist(), strict=True)
        out.writelines(f"{u},{r},{d}\n" for u, r, d in rows)
    os.replace(tmp, rankings)

    rng = _rng(seed, 3)
    days = (LAST_DAY - FIRST_DAY).days
    words = _random_strings(rng, rng.integers(3, 18, _SEARCH_WORDS))
    _globals.clear()
    _globals.update(
        seed=seed,
        rows_per_chunk=CHUNK_BYTES // 165,
        octets=[str(i) for i in range(256)],
        urls=ranked_urls,
        dates=[(FIRST_DAY + dt.timedelta(days=i)).isoformat() for i in range(days)],
        revenues=[repr(i / REVENUE_STEPS) for i in range(REVENUE_STEPS)],
        agents=_user_agents(rng),
        locales=[f"{c},{c}-{lang}" for c, lang in (pair.split() for pair in _LOCALES)],
        words=words,
    )
    uservisits = folder / "uservisits.csv"
    size = _write_chunks(uservisits, uservisits_bytes, _visit_chunk, workers, CHUNK_BYTES // 165 * 160)
    return {
        "rankings": str(rankings),
        "rankings_rows": len(ranked_urls),
        "rankings_bytes": rankings.stat().st_size,
        "uservisits": str(uservisits),
        "uservisits_bytes": size,
    }


# --- gensort ASCII records ----------------------------------------------------------------------------

RECORD = 100
KEY = 10
_HEX = np.frombuffer(b"0123456789ABCDEF", dtype=np.uint8)


def _gensort_chunk(index: int) -> bytes:
    """Records ``index*per_chunk ...``: gensort -a layout (key, 2 spaces, 32 hex digits of the record
    number, 2 spaces, 52 bytes of filler in runs of 4 hex digits, CR LF)."""
    g = _globals
    first = index * g["per_chunk"]
    n = min(g["per_chunk"], g["records"] - first)
    if n <= 0:
        return b""
    rng = _rng(g["seed"], 5, index)
    rec = np.empty((n, RECORD), dtype=np.uint8)
    rec[:, :KEY] = rng.integers(32, 127, (n, KEY), dtype=np.uint8)  # printable ASCII ' '..'~'
    if g["skew"]:  # the first two characters crowd toward ' ': P(code < x) = (x / 95) ** (1 / skew)
        rec[:, :2] = 32 + (95 * rng.random((n, 2)) ** g["skew"]).astype(np.uint8)
    rec[:, 10:12] = ord(" ")
    numbers = np.arange(first, first + n, dtype=np.uint64)
    shifts = np.arange(60, -4, -4, dtype=np.uint64)  # low 16 hex digits; the high 16 are zeros
    rec[:, 12:28] = ord("0")
    rec[:, 28:44] = _HEX[((numbers[:, None] >> shifts) & np.uint64(15)).astype(np.intp)]
    rec[:, 44:46] = ord(" ")
    rec[:, 46:98] = np.repeat(_HEX[rng.integers(0, 16, (n, 13))], 4, axis=1)
    rec[:, 98] = ord("\r")
    rec[:, 99] = ord("\n")
    return rec.tobytes()


def generate_gensort(
    path: str | os.PathLike, size: int, *, seed: int = 42, workers: int = 2, skew: float = 0.0
) -> int:
    """Write ``size // 100`` gensort ASCII records to ``path``; return the bytes written. With ``skew``
    (e.g. 4), the keys' first two characters follow ``95 * u ** skew`` for a uniform ``u`` instead of
    being uniform (like gensort's ``-s``): with skew 4, 71% of the keys start in the lowest quarter of
    the characters, where a partitioner that assumes uniform keys sends them all to one reducer."""
    records = size // RECORD
    per_chunk = CHUNK_BYTES // RECORD
    _globals.clear()
    _globals.update(seed=seed, records=records, per_chunk=per_chunk, skew=skew)
    return _write_chunks(Path(path), records * RECORD, _gensort_chunk, workers, per_chunk * RECORD)


# --- CDN access logs: many small gzip files -------------------------------------------------------------

CLOUDFRONT_GENERATOR = Path(__file__).resolve().parent.parent / "examples" / "data" / "cloudfront" / "generate.py"
#: Files generated from one seed (one call of the example's generator), in a folder of their own.
CDN_FILES_PER_FOLDER = 1000


def _cloudfront() -> Any:
    """The example's generator module (``examples/`` is no package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("cloudfront_generate", CLOUDFRONT_GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cdn_folder(index: int) -> bytes:
    g = _globals
    count = min(CDN_FILES_PER_FOLDER, g["files"] - index * CDN_FILES_PER_FOLDER)
    g["generator"].generate(os.path.join(g["out"], f"{index:03d}"), count, g["lines"], g["seed"] * 1000 + index)
    return b""


def generate_cdn_logs(
    out: str | os.PathLike, files: int = 20_000, *, lines: int = 32, seed: int = 2024, workers: int = 2
) -> dict[str, Any]:
    """Write ``files`` CloudFront log files (gzip, about ``lines`` lines of 33 tab-separated fields each,
    ~13 KB uncompressed with the default) into folders of 1000 under ``out``, each folder by the example's
    generator from ``(seed, folder number)``; return their count and sizes."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _globals.clear()
    _globals.update(generator=_cloudfront(), out=str(out), files=files, lines=lines, seed=seed)
    folders = range(-(-files // CDN_FILES_PER_FOLDER))
    pool = multiprocessing.get_context("fork").Pool(workers) if workers > 1 else None
    try:
        for _ in _pool_map(_cdn_folder, folders, pool):
            pass
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    paths = sorted(out.rglob("*.gz"))
    return {"files": len(paths), "bytes": sum(p.stat().st_size for p in paths)}
