"""Baseline for bench_serving: the plainest KServe model serving the same registered model.

No feature store, no explanations, no audit, no authentication: V1 instances
carry the feature records and ``predict`` returns probabilities from the
ensemble's own ``predict_proba`` (pandas + scikit-learn), as a first KServe
deployment of this model would.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--version", required=True)
    args = parser.parse_args()
    sys.argv = sys.argv[:1]  # KServe parses argv on import
    from kserve import Model, ModelServer  # noqa: PLC0415

    from churnops.training import registry  # noqa: PLC0415

    ensemble = registry.load_model(registry.RegistryConfig(tracking_uri=args.tracking_uri), args.version)

    class Bare(Model):  # type: ignore[misc]
        def load(self) -> bool:
            self.ready = True
            return True

        def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
            return {"predictions": ensemble.predict_proba(pd.DataFrame(payload["instances"])).tolist()}

    model = Bare("bare")
    model.load()
    ModelServer(http_port=args.port, enable_grpc=False, workers=1).start([model])


if __name__ == "__main__":
    main()
