"""Baseline for bench_serving: the plainest KServe model serving the same registered model.

No feature store, no explanations, no audit, no authentication: V1 instances
carry the feature records and ``predict`` returns probabilities from the
ensemble's own ``predict_proba`` (pandas + scikit-learn), as a first KServe
deployment of this model would. ``--workers N`` runs KServe's own
multi-process server (each worker is spawned and receives the loaded model).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import pandas as pd

_ARGV, sys.argv = sys.argv, sys.argv[:1]  # KServe parses argv on import
from kserve import Model, ModelServer  # noqa: E402

from churnops.training import registry  # noqa: E402

sys.argv = _ARGV


class Bare(Model):  # type: ignore[misc]
    """Module level: KServe's workers are spawned processes, and the model reaches them pickled."""

    def __init__(self, name: str, tracking_uri: str, version: str) -> None:
        super().__init__(name)
        self.tracking_uri, self.version = tracking_uri, version
        self.ensemble: Any = None

    def load(self) -> bool:
        self.ensemble = registry.load_model(registry.RegistryConfig(tracking_uri=self.tracking_uri), self.version)
        self.ready = True
        return True

    def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        return {"predictions": self.ensemble.predict_proba(pd.DataFrame(payload["instances"])).tolist()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--version", required=True)
    parser.add_argument("--workers", type=int, default=1, help="KServe's uvicorn worker processes")
    args = parser.parse_args()
    sys.argv = sys.argv[:1]
    model = Bare("bare", args.tracking_uri, args.version)
    model.load()
    ModelServer(http_port=args.port, enable_grpc=False, workers=args.workers).start([model])


if __name__ == "__main__":
    main()
