"""``corral report OUT``: one self-contained HTML file from a run's manifest.

Everything the page needs is inside it: the style, Chart.js (vendored from npm, with its license), the
page's script and the run's data. It loads nothing (its Content-Security-Policy forbids it), and its
text holds no ``http://`` or ``https://`` at all: slashes in the embedded scripts' URL-like strings and
in the data are escaped (``\\/``, the same character to JavaScript and JSON).
"""

from __future__ import annotations

import json
import re
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

from corral import __version__
from corral.errors import UsageError
from corral.fs import display, get_filesystem, join

UI = Path(str(files("corral.ui")))
#: A failure's traceback is kept in the report up to this many characters (its end: where it was raised).
TRACEBACK_CHARS = 4000


def manifest_url(out: str) -> str:
    return join(out.rstrip("/") if len(out) > 1 else out, "_corral", "manifest.json")


def read_manifest(out: str) -> dict[str, Any]:
    """The manifest of the run in ``out``; a UsageError naming the path when there is none."""
    url = manifest_url(out)
    fs = get_filesystem(url)
    try:
        data = fs.read_bytes(url)
    except FileNotFoundError:
        raise UsageError(f"no corral run in {display(out)}: {display(url)} not found") from None
    except OSError as exc:
        raise UsageError(f"cannot read {display(url)}: {exc}") from None
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{display(url)} is not a corral manifest: {exc}") from None
    if not isinstance(manifest, dict) or "stages" not in manifest:
        raise UsageError(f"{display(url)} is not a corral manifest (it has no stages)")
    return manifest


def report_data(manifest: dict[str, Any]) -> dict[str, Any]:
    """What the report shows: the manifest without what only the driver needs (the plan's splits, the
    attempts' file names), tracebacks cut to their end, and its advice (computed for an older
    manifest that has none)."""
    stages = []
    for stage in manifest.get("stages", ()):
        tasks = {}
        for name, record in stage.get("tasks", {}).items():
            attempts = []
            for entry in record.get("attempts", ()):
                entry = {k: v for k, v in entry.items() if k != "output"}
                failure = entry.get("failure")
                if failure and failure.get("traceback"):
                    entry["failure"] = {**failure, "traceback": failure["traceback"][-TRACEBACK_CHARS:]}
                attempts.append(entry)
            tasks[name] = {**record, "attempts": attempts}
        stages.append({k: v for k, v in stage.items() if k not in ("plan", "tasks")} | {"tasks": tasks})
    advice = manifest.get("advice")
    if advice is None:
        from corral.advice import advise

        advice = advise(manifest)
    return {**{k: v for k, v in manifest.items() if k != "stages"}, "stages": stages, "advice": advice,
            "report_generated": time.time(), "report_version": __version__}


_URL_SLASHES = re.compile(r"(https?:)//", re.IGNORECASE)
_END_SCRIPT = re.compile(r"</(script)", re.IGNORECASE)


def _inline_script(text: str) -> str:
    """A script's text made safe inside <script>…</script> and free of URL-like strings."""
    return _END_SCRIPT.sub(r"<\\/\1", _URL_SLASHES.sub(r"\1\\/\\/", text))


def _inline_json(data: Any) -> str:
    """JSON that cannot end its <script> element and holds no ``//`` (``\\/`` and ``\\u003c`` are JSON)."""
    return json.dumps(data, default=str, separators=(",", ":")).replace("<", "\\u003c").replace("/", "\\/")


def build_report(manifest: dict[str, Any]) -> str:
    """The report of ``manifest`` as one HTML document."""
    template = (UI / "static" / "report.html").read_text(encoding="utf-8")
    license_text = (UI / "vendor" / "LICENSE-chart.js.md").read_text(encoding="utf-8")
    parts = {
        "STYLE": (UI / "static" / "corral.css").read_text(encoding="utf-8"),
        "CHARTJS_LICENSE": _inline_script("/*! Chart.js, vendored from npm (corral/ui/vendor/chart.js.json):\n"
                                          + license_text.replace("*/", "* /") + "*/"),
        "CHARTJS": _inline_script((UI / "vendor" / "chart.umd.min.js").read_text(encoding="utf-8")),
        "COMMON": _inline_script((UI / "static" / "common.js").read_text(encoding="utf-8")),
        "REPORT": _inline_script((UI / "static" / "report.js").read_text(encoding="utf-8")),
        "DATA": _inline_json(report_data(manifest)),
        "TITLE": _escape(f"corral report: {manifest.get('job', '')} ({manifest.get('status', '')})"),
    }
    return re.sub(r"/\*@(\w+)@\*/", lambda m: parts[m.group(1)], template)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def write_report(out: str, output: str | None = None, manifest: dict[str, Any] | None = None) -> str:
    """Write the report of the run in ``out`` to ``output`` (default ``OUT/_corral/report.html``); return
    where it went, as the user would write it."""
    if manifest is None:
        manifest = read_manifest(out)
    target = output or join(out.rstrip("/") if len(out) > 1 else out, "_corral", "report.html")
    html = build_report(manifest).encode("utf-8")
    fs = get_filesystem(target)
    try:
        fs.write_bytes(target, html)
    except OSError as exc:
        hint = "" if output else " (--output FILE writes it elsewhere)"
        raise UsageError(f"cannot write the report to {display(target)}: {exc.strerror or exc}{hint}") from None
    return display(target)
