"""Where the embedded mode keeps its files: everything under one data directory.

The directory is relocatable: copy or move it and point ``--data-dir`` at the
new place (the MLflow store's recorded artifact paths are rewritten on open,
see ``churnops.training.registry.RegistryConfig.embedded``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    data_dir: Path

    @property
    def raw(self) -> Path:
        return self.data_dir / "raw"

    @property
    def features(self) -> Path:
        return self.data_dir / "features"

    @property
    def feast(self) -> Path:
        return self.data_dir / "feast"

    @property
    def mlflow(self) -> Path:
        return self.data_dir / "mlflow"

    @property
    def reports(self) -> Path:
        return self.data_dir / "reports"

    @property
    def audit(self) -> Path:
        return self.data_dir / "audit"

    @property
    def predictions(self) -> Path:
        return self.data_dir / "predictions"

    @property
    def secrets(self) -> Path:
        return self.data_dir / "secrets"
