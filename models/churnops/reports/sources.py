"""What a data directory holds, read for the reports: registry facts, run artifacts, the prediction log, labels, rollouts, audit logs.

Both reports read the same places. Each reader returns what is there, and
where something is absent it says what and why (``Missing``), because a
report names a missing piece instead of failing on it or drawing it empty:
a version registered by the KFP pipeline has no evaluation logged with its
run, labels arrive weeks after predictions, a data directory may hold no
rollout yet. Errors of the platform's own error model that mean "this piece
cannot be read" become such notes; anything else is a bug and propagates.

The model artifact is re-verified by hashing the downloaded file against the
sha256 recorded at registration, without unpickling it: an integrity check
must not execute the artifact it doubts.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from churnops.errors import ChurnOpsError, IntegrityError, InvalidInputError
from churnops.layout import Layout
from churnops.monitoring.labels import read_labels_dir
from churnops.monitoring.predlog.parquet import ParquetStore
from churnops.monitoring.profile import ReferenceProfile, load_profile
from churnops.monitoring.windows import Window
from churnops.rollout.store import DeploymentStore, deployments
from churnops.serving.audit import Verification, head_path_for, read_head, read_records, verify
from churnops.serving.audit_keys import PublicKeys
from churnops.training import registry

# Where a training run logs evaluation.json and the model card: ``train.train_and_register`` logs its output
# directory under ``evaluation/``, so the files sit one level down (``evaluation/training/evaluation.json``);
# they are looked for at either depth.
EVALUATION_DIR = "evaluation"
EVALUATION_FILE = "evaluation.json"
CARD_MARKDOWN = "model_card.md"
CARD_HTML = "model_card.html"
LABELS_DIR = "labels"
DATE_PREFIX = "date="  # the prediction log's day partitions (``monitoring.predlog.parquet``)


@dataclass(frozen=True)
class Missing:
    """A piece a report could not show, and why (with what to run to get it, where that helps)."""

    what: str
    why: str

    def __str__(self) -> str:
        return f"{self.what}: {self.why}"


# --- the registry ------------------------------------------------------------------------------------------


def registry_config(layout: Layout, tracking_uri: str | None = None) -> registry.RegistryConfig:
    """The registry the data directory's models live in: the embedded one unless a tracking URI is given."""
    return registry.config_for(tracking_uri) if tracking_uri else registry.RegistryConfig.embedded(layout.data_dir)


def _client(cfg: registry.RegistryConfig) -> Any:
    from mlflow.tracking import MlflowClient  # noqa: PLC0415 - MLflow costs seconds to import; only the registry readers need it

    return MlflowClient(cfg.tracking_uri, registry_uri=cfg.tracking_uri)


@dataclass(frozen=True)
class ModelVersion:
    """A registered version as the registry knows it: its run, tags (the version's and the run's), parameters and metrics."""

    model: str
    version: str
    run_id: str | None
    created: float | None  # registration time, seconds since the epoch
    aliases: tuple[str, ...]
    version_tags: Mapping[str, str]
    run_tags: Mapping[str, str]  # lineage: dataset_sha256, feature_service, source, ... (MLflow's own ``mlflow.*`` left out)
    params: Mapping[str, str]
    metrics: Mapping[str, float]  # holdout figures at training

    @property
    def threshold(self) -> float:
        return float(self.params.get("threshold", "0.5"))


def model_version(cfg: registry.RegistryConfig, version: str) -> ModelVersion:
    client = _client(cfg)
    mv = client.get_model_version(cfg.model_name, version)
    run = client.get_run(mv.run_id) if mv.run_id else None
    return ModelVersion(
        model=cfg.model_name,
        version=str(mv.version),
        run_id=mv.run_id or None,
        created=mv.creation_timestamp / 1000.0 if mv.creation_timestamp else None,
        aliases=tuple(sorted(mv.aliases)),
        version_tags=dict(mv.tags),
        run_tags={k: v for k, v in (run.data.tags if run else {}).items() if not k.startswith("mlflow.")},
        params=dict(run.data.params) if run else {},
        metrics=dict(run.data.metrics) if run else {},
    )


def registered_versions(cfg: registry.RegistryConfig) -> list[str]:
    """Every version of the registered model, oldest first (none when the model was never registered)."""
    client = _client(cfg)
    found = client.search_model_versions(f"name = '{cfg.model_name}'")
    return sorted((str(mv.version) for mv in found), key=int)


@contextlib.contextmanager
def _downloaded(cfg: registry.RegistryConfig, run_id: str, path: str) -> Iterator[Path | None]:
    """A run artifact in a temporary directory, or None when the run does not have it."""
    from mlflow.exceptions import MlflowException  # noqa: PLC0415 - see _client

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(_client(cfg).download_artifacts(run_id, path, tmp))
        except (MlflowException, OSError):
            local = None
        yield local if local is not None and local.is_file() else None


def find_artifact(cfg: registry.RegistryConfig, run_id: str, name: str, under: str = EVALUATION_DIR) -> str | None:
    """The path of the run's artifact ``name`` in ``under`` or one directory below it (first found, in name order)."""
    from mlflow.exceptions import MlflowException  # noqa: PLC0415 - see _client

    client = _client(cfg)
    try:
        entries = sorted(client.list_artifacts(run_id, under), key=lambda f: f.path)
        for f in entries:
            if not f.is_dir and f.path.rsplit("/", 1)[-1] == name:
                return str(f.path)
        for d in (f for f in entries if f.is_dir):
            for f in client.list_artifacts(run_id, d.path):
                if not f.is_dir and f.path.rsplit("/", 1)[-1] == name:
                    return str(f.path)
    except (MlflowException, OSError):
        return None
    return None


def run_text(cfg: registry.RegistryConfig, run_id: str | None, name: str) -> tuple[str | None, str | None]:
    """A text artifact of the run's evaluation directory and its path, or (None, None) when the run does not have it."""
    if run_id is None:
        return None, None
    path = find_artifact(cfg, run_id, name)
    if path is None:
        return None, None
    with _downloaded(cfg, run_id, path) as local:
        return (None, None) if local is None else (local.read_text(), path)


def evaluation(cfg: registry.RegistryConfig, mv: ModelVersion) -> tuple[dict[str, Any] | None, Missing | None]:
    """The run's ``evaluation.json`` (the holdout evaluation, the gates as applied, the summary), or why it is missing."""
    text, path = run_text(cfg, mv.run_id, EVALUATION_FILE)
    if text is None:
        return None, Missing(
            f"the evaluation of v{mv.version}",
            f"its training run {mv.run_id} logged no {EVALUATION_FILE} under {EVALUATION_DIR}/ "
            "(runs of the KFP pipeline keep the evaluation as a pipeline artifact)",
        )
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        return None, Missing(f"the evaluation of v{mv.version}", f"{path} of run {mv.run_id} is not JSON ({e})")
    if not isinstance(doc, dict) or not isinstance(doc.get("evaluation"), dict):
        return None, Missing(f"the evaluation of v{mv.version}", f"{path} of run {mv.run_id} has no 'evaluation' object")
    return {**doc, "artifact": path}, None


def profile(cfg: registry.RegistryConfig, version: str) -> tuple[ReferenceProfile | None, Missing | None]:
    try:
        return load_profile(cfg.tracking_uri, cfg.model_name, version), None
    except ChurnOpsError as e:
        return None, Missing(f"the reference profile of v{version}", str(e))


@dataclass(frozen=True)
class ArtifactCheck:
    """The registered model file hashed now against the sha256 recorded when it was registered."""

    file: str
    recorded: str | None  # the version's tag (written at registration)
    recorded_on_run: str | None  # the run's tag (written when the run logged it)
    actual: str | None  # None when the artifact could not be downloaded
    problem: str | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


def artifact_check(cfg: registry.RegistryConfig, mv: ModelVersion) -> ArtifactCheck:
    """Download the version's model file and hash it; it is never unpickled here (see the module docstring)."""
    from mlflow.artifacts import download_artifacts  # noqa: PLC0415 - see _client
    from mlflow.exceptions import MlflowException  # noqa: PLC0415

    tag = registry.MODEL_DIGEST_TAG
    recorded, on_run = mv.version_tags.get(tag), mv.run_tags.get(tag)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            source = _client(cfg).get_model_version_download_uri(cfg.model_name, mv.version)
            root = Path(download_artifacts(artifact_uri=source, dst_path=tmp, tracking_uri=cfg.tracking_uri))
            actual = registry.sha256_file(root / "artifacts" / registry.MODEL_FILE)
        except (MlflowException, OSError) as e:
            return ArtifactCheck(registry.MODEL_FILE, recorded, on_run, None, f"the artifact cannot be read: {e}")
    if recorded is None:
        problem: str | None = f"no sha256 was recorded for {registry.MODEL_FILE} at registration"
    elif actual != recorded:
        problem = f"the artifact's sha256 {actual} differs from the one recorded at registration {recorded}: it was altered"
    elif on_run is not None and on_run != recorded:
        problem = f"the run's recorded sha256 {on_run} differs from the version's {recorded}"
    else:
        problem = None
    return ArtifactCheck(registry.MODEL_FILE, recorded, on_run, actual, problem)


# --- the prediction log and labels --------------------------------------------------------------------------


def prediction_store(layout: Layout) -> ParquetStore:
    return ParquetStore(layout.predictions)


def log_span(layout: Layout) -> Window | None:
    """The days the prediction log covers (from its ``date=`` partitions), or None when it holds nothing."""
    root = layout.predictions
    if not root.is_dir():
        return None
    days = []
    for p in root.iterdir():
        if p.is_dir() and p.name.startswith(DATE_PREFIX):
            try:
                days.append(dt.date.fromisoformat(p.name.removeprefix(DATE_PREFIX)))
            except ValueError:
                continue
    if not days:
        return None
    start = dt.datetime.combine(min(days), dt.time(), dt.UTC)
    return Window(start, dt.datetime.combine(max(days), dt.time(), dt.UTC) + dt.timedelta(days=1))


def latest_rows(layout: Layout, model: str, version: str, wanted: int) -> pd.DataFrame:
    """At least ``wanted`` of the version's latest logged predictions (all of them if fewer), read a day at a time from the end.

    Reading backwards bounds memory by what is needed, not by the size of the log.
    """
    span = log_span(layout)
    if span is None:
        return pd.DataFrame()
    store = prediction_store(layout)
    parts: list[pd.DataFrame] = []
    rows = 0
    end = span.end
    while end > span.start and rows < wanted:
        start = end - dt.timedelta(days=1)
        part = store.read_window(start, end, model=model, version=version)
        if len(part):
            parts.append(part)
            rows += len(part)
        end = start
    return pd.concat(parts[::-1], ignore_index=True) if parts else pd.DataFrame()


def labels_dir(layout: Layout) -> Path:
    return layout.data_dir / LABELS_DIR


def labels(layout: Layout) -> tuple[pd.DataFrame | None, Missing | None]:
    """Every delayed outcome that arrived under ``<data-dir>/labels/``; None with the reason while there is none."""
    try:
        frame = read_labels_dir(labels_dir(layout))
    except ChurnOpsError as e:
        return None, Missing("delayed labels", f"the labels under {labels_dir(layout)} cannot be read: {e}")
    if frame is None or len(frame) == 0:
        return None, Missing(
            "delayed labels", f"no outcome has arrived yet under {labels_dir(layout)}: measured figures need them (estimates are shown)"
        )
    return frame, None


# --- rollouts ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Rollout:
    """One embedded ModelDeployment: its spec, the operator's status and every decision recorded."""

    name: str
    spec: dict[str, Any]
    status: dict[str, Any]
    timeline: tuple[dict[str, Any], ...]


def rollouts(layout: Layout) -> tuple[list[Rollout], list[Missing]]:
    found, problems = [], []
    for name in deployments(layout.data_dir):
        store = DeploymentStore(layout.data_dir, name)
        try:
            dep = store.load()
        except ChurnOpsError as e:
            problems.append(Missing(f"rollout {name!r}", str(e)))
            continue
        found.append(Rollout(name, dep.spec, dep.status, tuple(sorted(store.timeline(), key=lambda e: float(e.get("time") or 0.0)))))
    return found, problems


def no_rollout(layout: Layout) -> Missing:
    return Missing("rollouts", f"no rollout recorded under {layout.data_dir / 'rollout'}: run `churnops rollout start` first")


# --- audit logs ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditCheck:
    """One audit log verified now: records checked, OK or the problems, and what it holds per model version."""

    path: str
    records: int
    problems: tuple[str, ...]
    unacknowledged: int  # valid records after the stored head (a crash between append and head update)
    head_file: bool  # without it a truncated tail cannot be detected
    by_version: dict[str, int] = field(default_factory=dict)  # "model:version" -> predictions (rows, for batch records)

    @property
    def ok(self) -> bool:
        return not self.problems


def _tally(records: Iterator[dict[str, Any]], counts: dict[str, int], unreadable: list[int]) -> Iterator[dict[str, Any]]:
    """Pass records through to the verifier, counting predictions per model version on the way (one read of the file)."""
    for rec in records:
        if "unparseable_line" in rec:
            unreadable.append(int(rec["unparseable_line"]))
        if rec.get("model") is not None and rec.get("model_version") is not None:
            key = f"{rec['model']}:{rec['model_version']}"
            rows = rec.get("rows") if rec.get("kind") == "batch" else 1
            counts[key] = counts.get(key, 0) + (int(rows) if isinstance(rows, int) else 1)
        yield rec


def audit_log_paths(layout: Layout) -> list[Path]:
    return sorted(layout.audit.rglob("*.jsonl")) if layout.audit.is_dir() else []


def audit_check(path: Path, keys: PublicKeys) -> AuditCheck:
    counts: dict[str, int] = {}
    unreadable: list[int] = []
    head_path = head_path_for(path)
    try:
        head = read_head(head_path)
    except IntegrityError as e:
        return AuditCheck(str(path), 0, (f"the head file {head_path.name} cannot be read: {e}",), 0, True)
    result: Verification = verify(_tally(read_records(path), counts, unreadable), head, keys)
    problems = [f"line {n} is not JSON" for n in unreadable] + list(result.problems)
    return AuditCheck(str(path), result.records, tuple(problems), result.unacknowledged, head_path.exists(), counts)


def audit_checks(layout: Layout, keys: PublicKeys) -> list[AuditCheck]:
    """Every audit log verified with ``keys`` (the chain, each batch's signature, the signed head)."""
    return [audit_check(p, keys) for p in audit_log_paths(layout)]


def require_known_model(cfg: registry.RegistryConfig, ref: str) -> str:
    """The version ``ref`` names, with the registry's own message when it names none."""
    if not ref:
        raise InvalidInputError("name a model version, alias or models:/ URI", field="--model")
    return registry.resolve_version(cfg, ref)
