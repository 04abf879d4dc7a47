#!/usr/bin/env bash
# Build a wheel and an sdist of every in-tree distribution (python -m build, without isolation: setuptools comes from requirements-dev.txt), install the wheels (not
# editable) into a fresh virtualenv and run the README's word count from there: this catches a module or
# package data missing from a distribution, which editable installs hide. An sdist must build the same
# wheel (same files) as the tree it came from.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO="$PWD"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export PIP_DISABLE_PIP_VERSION_CHECK=1

DISTS=(. emulator)
for dir in backends/*/; do
    if [ -f "$dir/pyproject.toml" ]; then DISTS+=("${dir%/}"); fi
done

for dist in "${DISTS[@]}"; do
    python -m build -q --no-isolation --outdir "$WORK/dist" "$dist" >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
done
ls "$WORK/dist"

# an sdist builds the same wheel as its tree
mkdir -p "$WORK/from-sdist"
for sdist in "$WORK"/dist/*.tar.gz; do
    python -m pip wheel -q --no-deps --no-build-isolation -w "$WORK/from-sdist" "$sdist"
done
for wheel in "$WORK"/dist/*.whl; do
    name="$(basename "$wheel")"
    if ! diff <(python -m zipfile -l "$wheel" | awk 'NR>1 {print $1}' | sort) \
              <(python -m zipfile -l "$WORK/from-sdist/$name" | awk 'NR>1 {print $1}' | sort); then
        echo "dists.sh: the sdist of $name builds a wheel with other files (see above)" >&2
        exit 1
    fi
done

# the wheels, not editable, with the test tools' pins as constraints (a fast, repeatable resolution)
python -m venv "$WORK/venv"
grep -v "^-e " requirements-dev.txt | sed "s/\[[^]]*\]//" >"$WORK/constraints.txt"
# by file, so that no distribution of the same name on an index can stand in for ours
"$WORK/venv/bin/python" -m pip install -q -c "$WORK/constraints.txt" "$WORK"/dist/*.whl
"$WORK/venv/bin/python" -m pip check

cd "$WORK"  # nothing of the source tree on sys.path
where="$("$WORK/venv/bin/python" -c 'import corral, corral_lambda; print(corral.__file__, corral_lambda.__file__)')"
case "$where" in "$WORK/venv/"*) ;; *) echo "dists.sh: corral imported from $where, not the wheel" >&2; exit 1;; esac
"$WORK/venv/bin/corral" backends
# the README's first command's word count, from the installed wheels
"$WORK/venv/bin/corral" run "$REPO/examples/wordcount.py" "$REPO/examples/data/sample.txt" --out "$WORK/wordcount"
"$WORK/venv/bin/python" - "$REPO/examples/data/sample.txt" "$WORK/wordcount" <<'PY'
import collections, pathlib, sys
sample, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
expected = collections.Counter(w for line in sample.read_text(encoding="utf-8").splitlines() for w in line.split())
got = collections.Counter()
for part in sorted(out.glob("part-*")):
    for line in part.read_text(encoding="utf-8").splitlines():
        word, _, count = line.rpartition("\t")
        got[word] += int(count)
assert (out / "_SUCCESS").exists(), "no _SUCCESS"
assert got == expected, f"word count from the wheels differs: {got} != {expected}"
print(f"dists.sh: word count from the installed wheels is exact ({len(got)} words)")
PY
