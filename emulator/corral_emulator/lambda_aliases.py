"""Aliases of a Lambda function: a name pointing at a version (and, with weights, at a second one)."""

from __future__ import annotations

import random
import re
import uuid
from dataclasses import dataclass, field
from typing import Any

from corral_emulator.errors import invalid

ALIAS_RE = re.compile(r"^(?!^[0-9]+$)[a-zA-Z0-9_-]{1,128}$")
VERSION_RE = re.compile(r"^(\$LATEST|[0-9]+)$")


@dataclass
class Alias:
    name: str
    arn: str
    function_version: str
    description: str = ""
    #: The routing configuration: another published version and the fraction of invocations it gets.
    weights: dict[str, float] = field(default_factory=dict)
    revision_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def configuration(self) -> dict:
        """The AliasConfiguration shape."""
        data: dict[str, Any] = {"AliasArn": self.arn, "Name": self.name, "FunctionVersion": self.function_version,
                                "Description": self.description, "RevisionId": self.revision_id}
        if self.weights:
            data["RoutingConfig"] = {"AdditionalVersionWeights": dict(self.weights)}
        return data

    def pick_version(self, draw: float | None = None) -> str:
        """The version one invocation runs: the additional version for its weight's share, else the main one."""
        draw = random.random() if draw is None else draw
        for version, weight in self.weights.items():
            if draw < weight:
                return version
            draw -= weight
        return self.function_version

    def points_at(self, version: str) -> bool:
        return version == self.function_version or version in self.weights


def check_alias_name(name: Any) -> str:
    if not isinstance(name, str) or not ALIAS_RE.match(name):
        raise invalid(f"1 validation error detected: Value '{name}' at 'name' failed to satisfy constraint: "
                      "Member must satisfy regular expression pattern: (?!^[0-9]+$)([a-zA-Z0-9-_]+)")
    return name


def parse_weights(routing: Any, main_version: str, published: set[str]) -> dict[str, float]:
    """``RoutingConfig.AdditionalVersionWeights``, checked as Lambda does: one published version other than
    the main one, a weight between 0 and 1, and a main version that is published too."""
    if routing is None:
        return {}
    if not isinstance(routing, dict):
        raise invalid("RoutingConfig must be an object with AdditionalVersionWeights")
    weights = routing.get("AdditionalVersionWeights") or {}
    if not isinstance(weights, dict):
        raise invalid("AdditionalVersionWeights must be a map of version to weight")
    if not weights:
        return {}
    if len(weights) > 1:
        raise invalid("Number of items in AdditionalVersionWeights cannot be greater than 1")
    (version, weight), = weights.items()
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0.0 <= weight <= 1.0:
        raise invalid(f"1 validation error detected: Value '{weight}' at 'routingConfig.additionalVersionWeights' "
                      "failed to satisfy constraint: Member must have value between 0.0 and 1.0")
    if main_version == "$LATEST":
        raise invalid("$LATEST is not supported for an alias pointing to more than 1 version")
    if version == main_version:
        raise invalid(f"Invalid function version {version}. Function version {version} is already included "
                      "in routing configuration.")
    if version not in published:
        raise invalid(f"Function version {version} does not exist")
    return {str(version): float(weight)}
