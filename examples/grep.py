"""A map-only filter: keep the lines matching a regular expression (no shuffle, no reduce).

    corral run examples/grep.py examples/data/sample.txt --out /tmp/grep --arg pattern=corral
"""

import re

import corral


class Grep(corral.Job):
    def map_init(self):
        self.pattern = re.compile(self.args.get("pattern", "."))

    def map(self, key, line):
        if self.pattern.search(line):
            self.increment_counter("grep", "matched")
            yield None, line


if __name__ == "__main__":
    Grep.main()
