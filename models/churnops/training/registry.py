"""MLflow tracking and model registry for churn models.

A run logs parameters, metrics, plots, the feature service, dataset lineage
and the sha256 of every model artifact. The model is logged as a pyfunc whose
``predict`` returns churn probabilities (not labels), registered, and aliased
``challenger``. ``promote`` moves the ``champion`` alias and records who was
replaced. Embedded default: SQLite + local artifacts; any tracking server URI
works the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import mlflow
import numpy as np
import pandas as pd
from mlflow.models import infer_signature
from mlflow.pyfunc.model import PythonModel
from mlflow.tracking import MlflowClient

from churnops.errors import CheckFailedError, IntegrityError, InvalidInputError, NotFoundError, UnavailableError
from churnops.training.ensemble import ChurnEnsemble
from churnops_contract import registry as contract

CHAMPION = contract.CHAMPION  # aliases are defined once, in the contract
CHALLENGER = contract.CHALLENGER
TAG_REJECTED = contract.TAG_REJECTED  # a version registered although quality gates failed, for inspection
TAG_FAILED_GATES = contract.TAG_FAILED_GATES
MODEL_FILE = "model.joblib"
MODEL_DIGEST_TAG = f"sha256.{MODEL_FILE}"  # the artifact's sha256, recorded on the version at registration
STORE_ROOT_FILE = "store.json"  # records where the embedded store's artifacts were when last opened

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegistryConfig:
    tracking_uri: str
    experiment: str = "churn-training"
    model_name: str = contract.DEFAULT_MODEL_NAME
    artifact_location: str | None = None  # only used when the experiment is created

    @staticmethod
    def embedded(data_dir: Path) -> RegistryConfig:
        """SQLite tracking and registry plus local artifacts under ``data_dir/mlflow``; follows the directory if it moved."""
        root = (data_dir / "mlflow").resolve()
        root.mkdir(parents=True, exist_ok=True)
        artifacts = (root / "artifacts").as_uri()
        relocate(root / "mlflow.db", root / STORE_ROOT_FILE, artifacts)
        return RegistryConfig(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_location=artifacts)


def config_for(tracking_uri: str, artifact_location: str | None = None) -> RegistryConfig:
    """A registry at ``tracking_uri``. A SQLite store keeps its artifacts next to its database unless told
    otherwise, so nothing is ever written to ``./mlruns`` of whatever directory a step runs in."""
    if tracking_uri.startswith("sqlite:///") and artifact_location is None:
        db = Path(tracking_uri.removeprefix("sqlite:///"))
        if db.parent.name == "mlflow":
            return RegistryConfig.embedded(db.parent.parent)
        artifact_location = (db.parent.resolve() / "artifacts").as_uri()
    return RegistryConfig(tracking_uri=tracking_uri, artifact_location=artifact_location)


def relocate(db: Path, marker: Path, artifacts: str) -> int:
    """Point a copied or moved embedded store at its own artifacts; returns the number of values rewritten.

    MLflow's SQLite store records absolute ``file://`` artifact locations, so a copied
    data directory would silently load models from the original place (or fail once it
    is deleted). The root seen last is kept in ``marker``; when it differs from where
    the store is now, every recorded location under the old root is rewritten.
    """
    old = json.loads(marker.read_text())["artifacts"] if marker.exists() else None
    rewritten = 0
    if old is not None and old != artifacts and db.exists():
        rewritten = _rewrite_prefix(db, old, artifacts)
        log.warning("data directory moved: rewrote %d MLflow artifact locations from %s to %s", rewritten, old, artifacts)
    if old != artifacts:
        marker.write_text(json.dumps({"artifacts": artifacts}) + "\n")
    return rewritten


def _rewrite_prefix(db: Path, old: str, new: str) -> int:
    """Replace the ``old`` prefix by ``new`` in every text column of every table (one transaction)."""
    count = 0
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            columns = [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")') if "CHAR" in r[2].upper() or "TEXT" in r[2].upper()]
            for col in columns:
                cur = conn.execute(
                    f'UPDATE "{table}" SET "{col}" = ? || substr("{col}", ?) WHERE instr("{col}", ?) = 1', (new, len(old) + 1, old)
                )
                count += cur.rowcount
    return count


class ChurnPyfunc(PythonModel):
    """MLflow wrapper: ``predict`` returns a DataFrame with ``churn_probability``."""

    def load_context(self, context: Any) -> None:
        self.model: ChurnEnsemble = joblib.load(context.artifacts["model"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        return pd.DataFrame({"churn_probability": self.model.predict_proba(model_input)})


def _client(cfg: RegistryConfig) -> MlflowClient:
    # the registry lives with the tracking store; never fall back to a process-wide default
    return MlflowClient(cfg.tracking_uri, registry_uri=cfg.tracking_uri)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Registered:
    run_id: str
    version: str
    model_uri: str
    sha256: dict[str, str]


def log_and_register(
    cfg: RegistryConfig,
    model: ChurnEnsemble,
    example: pd.DataFrame,
    params: dict[str, Any],
    metrics: dict[str, float],
    tags: dict[str, str],
    artifacts: dict[str, Path],
    failed_gates: tuple[str, ...] = (),
) -> Registered:
    """Log one training run and register its model as the new ``challenger``.

    With ``failed_gates`` the model is a rejected candidate: registered for inspection, tagged and
    described with the gates it failed, and given no alias, so no rollout or promotion picks it up.
    """
    mlflow.set_tracking_uri(cfg.tracking_uri)
    client = _client(cfg)
    experiment = client.get_experiment_by_name(cfg.experiment)
    experiment_id = (
        experiment.experiment_id if experiment else client.create_experiment(cfg.experiment, artifact_location=cfg.artifact_location)
    )
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(experiment_id=experiment_id) as run:
        model_path = Path(tmp) / MODEL_FILE
        joblib.dump(model, model_path)
        digests = {MODEL_FILE: sha256_file(model_path)}
        mlflow.log_params({k: (json.dumps(v) if isinstance(v, dict | list) else v) for k, v in params.items()})
        mlflow.log_metrics({k: float(v) for k, v in metrics.items() if np.isfinite(v)})
        mlflow.set_tags({**tags, **{f"sha256.{k}": v for k, v in digests.items()}})
        for name, path in artifacts.items():
            mlflow.log_artifact(str(path), artifact_path=name)
        # Integer feature columns stay integer in the signature: they are never null in the catalog,
        # and MLflow refuses to cast int64 inputs to a float64 schema.
        output = pd.DataFrame({"churn_probability": model.predict_proba(example)})
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=ChurnPyfunc(),
            artifacts={"model": str(model_path)},
            signature=infer_signature(example, output),
            input_example=example.head(3),
            pip_requirements=["churnops"],  # the serving image installs this project
        )
        version = mlflow.register_model(info.model_uri, cfg.model_name, tags={f"sha256.{k}": v for k, v in digests.items()})
    if failed_gates:
        mark_rejected(client, cfg.model_name, str(version.version), failed_gates)
    else:
        client.set_registered_model_alias(cfg.model_name, CHALLENGER, version.version)
    client.set_model_version_tag(cfg.model_name, version.version, "run_id", run.info.run_id)
    return Registered(run.info.run_id, str(version.version), f"models:/{cfg.model_name}/{version.version}", digests)


def mark_rejected(client: MlflowClient, name: str, version: str, failed_gates: tuple[str, ...]) -> None:
    gates = ", ".join(failed_gates)
    client.set_model_version_tag(name, version, TAG_REJECTED, "true")
    client.set_model_version_tag(name, version, TAG_FAILED_GATES, gates)
    client.update_model_version(
        name,
        version,
        description=f"Rejected candidate for inspection: failed quality gates {gates}. Never aliased {CHALLENGER} or {CHAMPION}; "
        "it cannot be promoted.",
    )


def rejected_gates(cfg: RegistryConfig, version: str) -> str | None:
    """The gates a rejected candidate failed, or None for a version that passed them."""
    return contract.rejected_gates(_client(cfg).get_model_version(cfg.model_name, version).tags)


def log_files(cfg: RegistryConfig, run_id: str, files: dict[str, Path]) -> None:
    """Add files to a finished run, each under the artifact folder its key names (e.g. the versioned model card)."""
    client = _client(cfg)
    for folder, path in files.items():
        client.log_artifact(run_id, str(path), artifact_path=folder)


_ABSENT = ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE")


def alias_version(cfg: RegistryConfig, alias: str) -> str | None:
    """The version holding ``alias``, or None when nothing holds it (an unreachable registry is an error)."""
    client = _client(cfg)
    try:
        return str(client.get_model_version_by_alias(cfg.model_name, alias).version)
    except mlflow.exceptions.MlflowException as e:
        if e.error_code in _ABSENT:
            return None
        raise UnavailableError(f"MLflow registry at {cfg.tracking_uri}: {e.message}") from e


class ModelIntegrityError(IntegrityError):
    """A downloaded artifact does not match the sha256 recorded at registration."""


def resolve_version(cfg: RegistryConfig, ref: str) -> str:
    """A version number from ``ref``: a version ("7"), an alias ("champion") or a URI ("models:/name/7", "models:/name@alias")."""
    if ref.startswith("models:/"):
        name, _, rest = ref[len("models:/") :].partition("@")
        if rest:
            ref = rest
        else:
            name, _, ref = name.partition("/")
        if name != cfg.model_name:
            raise InvalidInputError(f"names {name!r}, not the configured registered model {cfg.model_name!r}", field=ref)
    if ref.isdigit():
        if not version_exists(cfg, ref):
            raise NotFoundError(f"registered model {cfg.model_name!r} has no version {ref}")
        return ref
    version = alias_version(cfg, ref)
    if version is None:
        raise NotFoundError(f"registered model {cfg.model_name!r} has no alias {ref!r}")
    return version


def version_exists(cfg: RegistryConfig, version: str) -> bool:
    try:
        _client(cfg).get_model_version(cfg.model_name, version)
    except mlflow.exceptions.MlflowException as e:
        if e.error_code in _ABSENT:
            return False
        raise UnavailableError(f"MLflow registry at {cfg.tracking_uri}: {e.message}") from e
    return True


def version_info(cfg: RegistryConfig, version: str) -> dict[str, Any]:
    """Run parameters and tags of a version that serving needs (threshold, feature service, digests)."""
    client = _client(cfg)
    mv = client.get_model_version(cfg.model_name, version)
    run = client.get_run(mv.run_id) if mv.run_id else None
    params = run.data.params if run else {}
    return {
        "threshold": float(params.get("threshold", "0.5")),
        "run_id": mv.run_id,
        "tags": dict(mv.tags),
        "aliases": list(mv.aliases),
        "metrics": dict(run.data.metrics) if run else {},  # holdout figures: the reference monitoring compares with
    }


def recorded_sha256(info: Mapping[str, Any]) -> str | None:
    """The artifact digest recorded on a version (``version_info``'s tags): what names its precomputed reasons."""
    digest: str | None = info["tags"].get(MODEL_DIGEST_TAG)
    return digest


def load_model(cfg: RegistryConfig, version: str) -> ChurnEnsemble:
    """The fitted ensemble of a registered version (verifying its recorded sha256)."""
    client = _client(cfg)
    mv = client.get_model_version(cfg.model_name, version)
    with tempfile.TemporaryDirectory() as tmp:
        # resolve the version's storage location through this registry, not the process-wide default one
        source = client.get_model_version_download_uri(cfg.model_name, version)
        root = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=cfg.tracking_uri))
        local = root / "artifacts" / MODEL_FILE
        expected = mv.tags.get(MODEL_DIGEST_TAG)
        actual = sha256_file(local)
        if expected != actual:
            raise ModelIntegrityError(
                f"model {cfg.model_name} v{version}: artifact sha256 {actual} does not match the registered {expected}"
            )
        model: ChurnEnsemble = joblib.load(local)
    return model


@dataclass(frozen=True)
class Promotion:
    version: str
    previous: str | None
    time: str
    reason: str


def promote(cfg: RegistryConfig, version: str, reason: str) -> Promotion:
    """Move ``champion`` to ``version`` (staging -> production) and record the change on both versions.

    A rejected candidate (registered for inspection although gates failed) is never promoted.
    """
    failed = rejected_gates(cfg, version)
    if failed is not None:
        raise CheckFailedError(
            f"{cfg.model_name} v{version} is a rejected candidate (failed quality gates: {failed}); it cannot be promoted"
        )
    client = _client(cfg)
    previous = alias_version(cfg, CHAMPION)
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    client.set_registered_model_alias(cfg.model_name, CHAMPION, version)
    client.set_model_version_tag(cfg.model_name, version, contract.TAG_PROMOTED_AT, when)
    client.set_model_version_tag(cfg.model_name, version, contract.TAG_PROMOTION_REASON, reason)
    if previous is not None and previous != version:
        client.set_model_version_tag(cfg.model_name, previous, contract.TAG_REPLACED_AT, when)
        client.set_model_version_tag(cfg.model_name, previous, contract.TAG_REPLACED_BY, version)
    if alias_version(cfg, CHALLENGER) == version:
        client.delete_registered_model_alias(cfg.model_name, CHALLENGER)
    return Promotion(version, previous, when, reason)
