"""Settings and sub-commands that plugins add to corral (the values of two hooks)."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int) -> int:
    """Parse a byte size: ``1048576``, ``512KB``, ``64MB``, ``64MiB``, ``1.5G``.

    Units are binary (1 KB = 1 KiB = 1024 bytes), as in Docker's ``--memory`` and most tools.
    """
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a size like 64MB")
    if isinstance(text, int):
        value = text
    else:
        match = _SIZE.match(str(text))
        if not match:
            raise ValueError(f"{text!r} is not a size like 64MB")
        number, unit = match.group(1), match.group(2).lower()
        if not unit and "." in number:
            raise ValueError(f"{text!r} is not a whole number of bytes (write 1.5KB, 1.5MB…)")
        value = round(float(number) * _UNITS[unit])
    if value <= 0:
        raise ValueError(f"{text!r} must be larger than 0 bytes")
    return value


def int_in_range(low: int, high: int | None = None) -> Callable[[Any], int]:
    """A parser for whole numbers in ``[low, high]``, whose error says the range.

    Only whole numbers are accepted: ``2.7`` (a TOML float, or the text) is refused rather than
    truncated, and so is ``3.0``, as the text ``"3.0"`` always was.
    """

    def parse(text: Any) -> int:
        try:
            if isinstance(text, bool | float):
                raise ValueError
            value = int(text)
        except (TypeError, ValueError):
            raise ValueError(f"{text!r} is not a whole number") from None
        if value < low or (high is not None and value > high):
            bound = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise ValueError(f"{value} is out of range (must be {bound})")
        return value

    return parse


def parse_bool(text: str | bool) -> bool:
    """Parse ``true/false/1/0/yes/no/on/off``."""
    if isinstance(text, bool):
        return text
    lowered = str(text).strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"{text!r} is not true or false")


@dataclass(frozen=True, eq=False)
class Option(Generic[T]):
    """A setting: a ``corral run`` flag, a ``[tool.corral]`` key and a ``CORRAL_*`` variable at once.

    ``name`` uses dashes (``split-size``): the flag is ``--split-size``, the TOML key ``split-size``
    (``split_size`` also accepted), the variable ``CORRAL_SPLIT_SIZE``. ``parse`` turns a string (or a
    TOML value) into the value, raising ``ValueError`` with the reason when it is invalid. ``default``
    is the value when no source sets it; an option without one is an ``Option[X | None]``.

    A plugin keeps its Option objects and reads their values with ``settings.value(OPTION)``, typed
    ``T``. An Option is its identity (``eq=False``): the same object returned by several plugins is
    one setting; two objects with one name are a conflict (see ``corral.config.all_options``).
    """

    name: str
    parse: Callable[[Any], T]
    default: T
    help: str
    metavar: str | None = None
    switch: bool = False  # a flag that takes no value (--quiet); with a True default, also --no-NAME
    short: str | None = None  # e.g. "-v"
    repeat: bool = False  # may be given several times; the value is a list
    secret: bool = False  # its values are redacted in the manifest (names of KEY=VALUE items kept)

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return "CORRAL_" + self.dest.upper()


@dataclass(frozen=True)
class Command:
    """A ``corral`` sub-command contributed by a plugin (e.g. ``corral emulator serve``).

    ``configure`` adds arguments to the sub-command's parser; ``run`` gets the parsed arguments and
    returns the exit code.
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
