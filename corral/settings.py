"""The resolved settings of a run, typed: ``corral.Settings``, and corral's own options.

Each field of ``Settings`` that is a core option is declared with its ``Option`` in one line, so the
flag, the ``[tool.corral]`` key, the ``CORRAL_*`` variable, the default and the typed field cannot
drift apart. To add a core option (say ``--resume``), add one field::

    resume: bool = setting(Option("resume", parse_bool, False, "continue an interrupted run", switch=True))

The field's name must be the option's ``dest`` (dashes become underscores) and its type the Option's
``T`` (mypy checks it against ``setting``'s signature). It then is a flag of ``corral run``, a config
key and a variable; ``corral.config.load_settings`` resolves it and ``settings.resume`` reads it.

A plugin's options are not fields: the plugin returns its ``Option`` objects from ``corral_options``
and reads them with ``settings.value(OPTION)``, typed like the Option (``Option[int]`` -> ``int``),
whose default applies when no source set it (also in a ``Settings()`` built by a test).

Tests build settings with ``Settings()`` (every default), ``Settings(backend="threads", reducers=2)``
(already parsed values) or ``load_settings({"reducers": "2"})`` (parsed and validated, like flags).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, TypeVar, cast

from corral.options import Option, int_in_range, parse_bool, parse_size

T = TypeVar("T")
MiB = 1 << 20
DEFAULT_SOURCE = "default"
#: How long throttled tasks are retried, from the job's start (``--deadline``): 6 hours.
DEFAULT_DEADLINE = 6 * 3600


def setting(option: Option[T]) -> T:
    """A ``Settings`` field for a core option: its default is the option's, and it remembers the option."""
    return field(default=option.default, metadata={"option": option})


def _text(value: Any) -> str:
    return str(value)


def _log_level(value: Any) -> int:
    if isinstance(value, bool):
        return int(value)
    return int_in_range(0, 3)(value)


def _host(value: Any) -> str:
    text = str(value).strip()
    if not text or any(c.isspace() or c in "/[]" for c in text):
        raise ValueError(f"{value!r} is not a host name or IP address")
    return text


def _one_of(*choices: str) -> Any:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"{value!r} is not one of {', '.join(choices)}")
        return str(value)

    return parse


def _items(value: Any) -> tuple[str, ...]:
    """A repeatable option (``KEY=VALUE``, a path): a list from flags or TOML, one item from a variable."""
    return tuple(str(v) for v in value) if isinstance(value, list | tuple) else (str(value),)


@dataclass(frozen=True)
class Settings:
    """The settings of one run, resolved from defaults, config files, ``CORRAL_*`` variables and flags.

    ``explicit`` holds the dests the user set in any source (not defaulted); ``sources`` says where
    each of them came from (see ``source``); ``plugin_values`` holds plugins' options by dest, read
    with ``value(OPTION)``.
    """

    backend: str = setting(Option("backend", _text, "processes",
                                  "where tasks run: an executor from `corral backends`", "NAME"))
    split_size: int = setting(Option("split-size", parse_size, 64 * MiB, "bytes of input per split (default 64MB)",
                                     "SIZE"))
    map_bin_size: int = setting(Option("map-bin-size", parse_size, 64 * MiB,
                                       "bytes of splits packed into one map task", "SIZE"))
    reduce_bin_size: int = setting(Option("reduce-bin-size", parse_size, 256 * MiB,
                                          "input bytes per reducer, when --reducers is not set", "SIZE"))
    reducers: int | None = setting(Option("reducers", int_in_range(1), None, "number of reduce tasks", "N"))
    max_concurrency: int | None = setting(Option("max-concurrency", int_in_range(1), None,
                                                 "tasks running at once (default: the backend's)", "N"))
    retries: int = setting(Option("retries", int_in_range(0), 3, "retries of a failed task before the job fails",
                                  "N"))
    deadline: int = setting(Option(
        "deadline", int_in_range(1), DEFAULT_DEADLINE,
        "seconds from the job's start during which throttled tasks are retried; a task still throttled "
        "then fails the job (default 21600 = 6 h)", "SECONDS"))
    requirements: str | None = setting(Option(
        "requirements", _text, None,
        "requirements file: third-party packages shipped to remote backends, on top of the job's "
        "`requirements`", "FILE"))
    memory_budget: int = setting(Option("memory-budget", parse_size, 256 * MiB,
                                        "memory a task buffers before spilling to disk", "SIZE"))
    arg: tuple[str, ...] = setting(Option("arg", _items, (), "KEY=VALUE for the job, in self.args (repeatable)",
                                          "KEY=VALUE", repeat=True))
    output_format: str | None = setting(Option(
        "output-format", _one_of("text", "csv", "jsonl", "value"), None,
        "format of the part files: text (key<TAB>value), csv, jsonl or value (default: the job's output_format, "
        "else text)", "FORMAT"))
    output_compression: str | None = setting(Option(
        "output-compression", _one_of("none", "gzip", "zstd"), None,
        "compress the part files: gzip (.gz) or zstd (.zst) (default: the job's output_compression, else none)",
        "NAME"))
    max_records_per_file: int | None = setting(Option(
        "max-records-per-file", int_in_range(1), None,
        "split each task's output into part files of at most N records (part-00000-00000…)", "N"))
    file: tuple[str, ...] = setting(Option(
        "file", _items, (), "a read-only side file for every task, found with self.file_path(NAME) (repeatable; "
        "adds to the job's files)", "PATH", repeat=True))
    work_dir: str | None = setting(Option("work-dir", _text, None,
                                          "where intermediate data goes (default OUT/_corral/work)", "URL"))
    keep_intermediate: bool = setting(Option("keep-intermediate", parse_bool, False,
                                             "keep intermediate data after success", switch=True))
    overwrite: bool = setting(Option(
        "overwrite", parse_bool, False,
        "replace an existing output folder (when the new run commits), or start an unfinished run again",
        switch=True))
    resume: bool = setting(Option(
        "resume", parse_bool, False,
        "continue the unfinished run in OUT (after a crash, kill or Ctrl-C), reusing its committed tasks",
        switch=True))
    speculative: bool = setting(Option(
        "speculative", parse_bool, True,
        "start a duplicate attempt of a straggling task once most of its wave is done (default on; "
        "--no-speculative turns it off)", switch=True))
    lease_timeout: int = setting(Option(
        "lease-timeout", int_in_range(1), 60,
        "seconds without a heartbeat after which another run may take over OUT's lease (default 60)", "SECONDS"))
    quiet: bool = setting(Option("quiet", parse_bool, False, "no progress bars and no summary", switch=True,
                                 short="-q"))
    verbose: int = setting(Option("verbose", _log_level, 0, "log retries (-vv: debug, -vvv: libraries too)",
                                  switch=True, short="-v"))
    ui: bool = setting(Option("ui", parse_bool, False,
                              "serve a live view of the run on 127.0.0.1 (the URL is printed)", switch=True))
    ui_port: int = setting(Option("ui-port", int_in_range(0, 65535), 0, "port of the live view (default: a free one)",
                                  "N"))
    ui_host: str = setting(Option("ui-host", _host, "127.0.0.1",
                                  "interface the live view listens on (default 127.0.0.1: this machine only)", "HOST"))
    ui_linger: int = setting(Option("ui-linger", int_in_range(0), 0,
                                    "seconds the live view stays up after the job ends", "SECONDS"))
    report: bool = setting(Option("report", parse_bool, False,
                                  "write the run's HTML report, OUT/_corral/report.html, at the end", switch=True))

    # derived and bookkeeping fields (no options)
    progress: bool = False  # progress bars: not --quiet and stderr is a terminal
    explicit: frozenset[str] = frozenset()
    sources: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    plugin_values: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def value(self, option: Option[T]) -> T:
        """The value of ``option`` (a core option or a plugin's), its default when no source set it."""
        if option.dest in _CORE_DESTS:
            return cast(T, getattr(self, option.dest))
        return cast(T, self.plugin_values.get(option.dest, option.default))

    def source(self, option: Option[Any] | str) -> str:
        """Where a setting came from: ``--backend``, ``CORRAL_BACKEND``, ``backend in /path/corral.toml``,
        or ``default``. ``option`` is an Option, its name (``split-size``) or its dest (``split_size``)."""
        name = option.dest if isinstance(option, Option) else option.replace("-", "_")
        return self.sources.get(name, DEFAULT_SOURCE)

    def to_json(self) -> dict[str, Any]:
        """Every setting's value by dest (for the manifest): core options, plugins' options, ``progress``."""
        core = {option.dest: getattr(self, option.dest) for option in CORE_OPTIONS}
        return {**core, **self.plugin_values, "progress": self.progress}


#: corral's own options, in the order ``corral run --help`` lists them.
CORE_OPTIONS: tuple[Option[Any], ...] = tuple(f.metadata["option"] for f in fields(Settings) if "option" in f.metadata)

_CORE_DESTS = frozenset(option.dest for option in CORE_OPTIONS)
