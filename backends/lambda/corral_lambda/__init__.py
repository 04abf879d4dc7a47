"""corral's AWS Lambda backend: ``--backend lambda``.

``corral_lambda.handler`` runs inside the function; ``corral_lambda.executor`` deploys and invokes it
from the driver (boto3). This module imports neither, so that the handler's package stays light.
"""

from __future__ import annotations

__version__ = "0.1.0"
