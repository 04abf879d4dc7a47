"""Settings: defaults < ``[tool.corral]`` in pyproject.toml < corral.toml < ``CORRAL_*`` variables < flags.

Both files are looked up in the current folder. Every value is validated by its Option's parser, and
an invalid one is rejected with a message naming the setting and where it came from.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from corral.errors import UsageError
from corral.options import Option, int_in_range, parse_bool, parse_size

MiB = 1 << 20


def _text(value: Any) -> str:
    return str(value)


def _one_of(*choices: str) -> Any:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return str(value)

    return parse


def _listed(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _log_level(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    return int_in_range(0, 3)(value)


CORE_OPTIONS: list[Option] = [
    Option("backend", _text, "processes", "where tasks run: an executor from `corral backends`", "NAME"),
    Option("split-size", parse_size, 64 * MiB, "bytes of input per split (default 64MB)", "SIZE"),
    Option("map-bin-size", parse_size, 64 * MiB, "bytes of splits packed into one map task", "SIZE"),
    Option("reduce-bin-size", parse_size, 256 * MiB, "input bytes per reducer, when --reducers is not set", "SIZE"),
    Option("reducers", int_in_range(1), None, "number of reduce tasks", "N"),
    Option("max-concurrency", int_in_range(1), None, "tasks running at once (default: the backend's)", "N"),
    Option("retries", int_in_range(0), 3, "retries of a failed task before the job fails", "N"),
    Option("deadline", int_in_range(1), 6 * 3600,
           "seconds from the job's start during which throttled tasks are retried; a task still throttled "
           "then fails the job (default 21600 = 6 h)", "SECONDS"),
    Option("requirements", _text, None,
           "requirements file: third-party packages shipped to remote backends, on top of the job's "
           "`requirements`", "FILE"),
    Option("memory-budget", parse_size, 256 * MiB, "memory a task buffers before spilling to disk", "SIZE"),
    Option("arg", lambda v: list(v) if isinstance(v, list) else [v], None,
           "KEY=VALUE for the job, in self.args (repeatable)", "KEY=VALUE", repeat=True),
    Option("output-format", _one_of("text", "csv", "jsonl", "value"), None,
           "format of the part files: text (key<TAB>value), csv, jsonl or value (default: the job's "
           "output_format, else text)", "FORMAT"),
    Option("output-compression", _one_of("none", "gzip", "zstd"), None,
           "compress the part files: gzip (.gz) or zstd (.zst) (default: the job's output_compression, else none)",
           "NAME"),
    Option("max-records-per-file", int_in_range(1), None,
           "split each task's output into part files of at most N records (part-00000-00000…)", "N"),
    Option("file", _listed, None,
           "a read-only side file for every task, in self.file_path(NAME) (repeatable; adds to the job's files)",
           "PATH", repeat=True),
    Option("work-dir", _text, None, "where intermediate data goes (default OUT/_corral/work)", "URL"),
    Option("keep-intermediate", parse_bool, False, "keep intermediate data after success", switch=True),
    Option("overwrite", parse_bool, False, "replace an existing output folder", switch=True),
    Option("quiet", parse_bool, False, "no progress bars and no summary", switch=True, short="-q"),
    Option("verbose", _log_level, 0, "log retries (-vv: debug, -vvv: libraries too)", switch=True, short="-v"),
]


class Settings:
    """The resolved settings of a run: attributes named like the options (``split_size``)."""

    def __init__(self, values: dict[str, Any], explicit: set[str]) -> None:
        self.__dict__.update(values)
        self.explicit = explicit  # settings given by the user (any source), not defaulted

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "explicit"}

    def __repr__(self) -> str:
        return f"Settings({self.to_json()})"


def all_options() -> list[Option]:
    """corral's own options, then those plugins add through ``corral_options``."""
    from corral.plugins import get_plugin_manager

    options = list(CORE_OPTIONS)
    for extra in get_plugin_manager().hook.corral_options():
        options.extend(extra)
    return options


def _file_settings(folder: Path) -> list[tuple[str, dict[str, Any]]]:
    """``(source name, table)`` from pyproject.toml's [tool.corral], then corral.toml (later wins)."""
    found = []
    for name in ("pyproject.toml", "corral.toml"):
        path = folder / name
        if not path.is_file():
            continue
        import tomllib

        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise UsageError(f"cannot read {path}: {exc}") from None
        table = data.get("tool", {}).get("corral", {}) if name == "pyproject.toml" else data
        if not isinstance(table, dict):
            raise UsageError(f"{path}: [tool.corral] must be a table")
        found.append((str(path), table))
    return found


def load_settings(
    flags: Mapping[str, Any] | None = None,
    folder: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Resolve every option from its sources; ``flags`` maps option dests to values (None = not given)."""
    options = all_options()
    by_key = {o.name: o for o in options} | {o.dest: o for o in options}
    environ = os.environ if environ is None else environ
    values = {o.dest: o.default for o in options}
    explicit: set[str] = set()

    def apply(option: Option, raw: Any, source: str) -> None:
        try:
            values[option.dest] = option.parse(raw)
        except ValueError as exc:
            raise UsageError(f"invalid value for {source}: {exc}") from None
        explicit.add(option.dest)

    for path, table in _file_settings(Path(folder or os.getcwd())):
        for key, raw in table.items():
            option = by_key.get(key)
            if option is None:
                raise UsageError(f"unknown setting {key!r} in {path}")
            apply(option, raw, f"{option.name} in {path}")
    for option in options:
        if option.env in environ:
            apply(option, environ[option.env], option.env)
    for dest, raw in (flags or {}).items():
        option = by_key.get(dest)
        if option is None:
            raise UsageError(f"unknown setting {dest!r}")
        if raw is not None:
            apply(option, raw, "--" + option.name)
    values["progress"] = not values["quiet"] and sys.stderr.isatty()
    return Settings(values, explicit)
