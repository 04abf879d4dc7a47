"""corral's Docker backend: ``--backend docker`` runs the Lambda code path (package, deploy, invoke,
handler) against a local Lambda emulator (corral-emulator) with the job's local folders mounted."""

from __future__ import annotations

__version__ = "0.1.0"
