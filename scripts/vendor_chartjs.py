#!/usr/bin/env python3
"""Vendor Chart.js from the npm registry into corral/ui/vendor/ (the live page and the report embed it).

    python scripts/vendor_chartjs.py [VERSION]

Runs ``npm pack chart.js@VERSION`` (npm checks the tarball against the registry's sha512 integrity),
takes ``dist/chart.umd.min.js`` and the license, drops the source-map comment (the map is not shipped),
and records the version and SHA-256 in corral/ui/vendor/chart.js.json, which a test checks the file
against. No CDN at run time: the page and the report carry the library themselves.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

VENDOR = Path(__file__).resolve().parents[1] / "corral" / "ui" / "vendor"
DEFAULT_VERSION = "4.6.1"


def main() -> int:
    version = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_VERSION
    with tempfile.TemporaryDirectory() as tmp:
        packed = subprocess.run(["npm", "pack", f"chart.js@{version}", "--json"], cwd=tmp, check=True,
                                capture_output=True, text=True)
        info = json.loads(packed.stdout)[0]
        with tarfile.open(Path(tmp) / info["filename"]) as tar:
            script = tar.extractfile("package/dist/chart.umd.min.js").read().decode("utf-8")  # type: ignore[union-attr]
            license_text = tar.extractfile("package/LICENSE.md").read().decode("utf-8")  # type: ignore[union-attr]
    lines = [line for line in script.splitlines() if not line.startswith("//# sourceMappingURL=")]
    script = "\n".join(lines) + "\n"
    (VENDOR / "chart.umd.min.js").write_text(script, encoding="utf-8")
    (VENDOR / "LICENSE-chart.js.md").write_text(license_text, encoding="utf-8")
    record = {"package": "chart.js", "version": info["version"], "file": "dist/chart.umd.min.js",
              "npm_integrity": info["integrity"], "license": "MIT",
              "sha256": hashlib.sha256(script.encode("utf-8")).hexdigest()}
    (VENDOR / "chart.js.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"vendored chart.js {info['version']}: {len(script)} bytes, sha256 {record['sha256']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
