"""An awkward input folder for end-to-end word counts (shared by the local, GCS and remote backends' tests):
unicode, CRLF, empty files and empty lines, a 2 MB line, a .gz file, dozens of small files, and names a
folder input skips."""

from __future__ import annotations

import gzip
import random
from collections import Counter
from pathlib import Path


def write_awkward_input(folder: Path) -> Counter:
    """Fill ``folder``; return the Counter of its words as a user would compute it (``line.split()``)."""
    rng = random.Random(2024)
    vocabulary = ["the", "a", "Straße", "naïve", "日本語", "🐍", "x", "end.", "(paren)", "tab\tsep", "ünï", "ΣΩ"]
    folder.mkdir(parents=True, exist_ok=True)
    texts = []

    def add(name, text, *, compress=False):
        texts.append(text)
        data = text.encode("utf-8")
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(gzip.compress(data) if compress else data)

    def some_lines(n, ending="\n"):
        return "".join(" ".join(rng.choice(vocabulary) for _ in range(rng.randrange(0, 12))) + ending for _ in range(n))

    for i in range(40):  # dozens of small files
        add(f"small/{i:02d}.txt", some_lines(rng.randrange(0, 20), rng.choice(["\n", "\r\n"])))
    add("empty.txt", "")
    add("empty-lines.txt", "\n\n\r\n\n")
    add("crlf.txt", some_lines(3000, "\r\n"))
    add("unicode.txt", some_lines(2000) + "no newline at the end 終わり")
    add("huge-line.txt", "before\n" + " ".join(rng.choice(vocabulary) for _ in range(400_000)) + "\nafter\r\n")
    add("compressed.txt.gz", some_lines(5000, "\r\n"), compress=True)
    add("deep/er/nested.txt", some_lines(100))
    # what a folder input skips
    (folder / "_SUCCESS").write_text("skipped\n")
    (folder / ".hidden.txt").write_text("skipped\n")
    assert (folder / "huge-line.txt").stat().st_size > 2 << 20
    expected: Counter = Counter()
    for text in texts:
        for line in text.splitlines():  # what a user would compare with (str.split ignores \r and \t)
            expected.update(line.split())
    return expected
