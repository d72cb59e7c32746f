"""A ModelDeployment's spec as frozen dataclasses, parsed once per pass by the operator and the embedded runner.

The CRD's schema (``manifests/crds/``) defaults and bounds every field, so a
resource that reached the API server parses; the checks here repeat the rules
that matter to the decisions (steps ascending and ending at 100, a version or
an alias but not both) so that a resource written by an older CRD, or a test
that skips the API server, fails with a field path instead of a wrong rollout.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from churnops_contract import metric_names as m
from churnops_contract import registry as r

GROUP = "churnops.io"
VERSION = "v1alpha1"
PLURAL = "modeldeployments"
KIND = "ModelDeployment"
API_VERSION = f"{GROUP}/{VERSION}"
FINALIZER = f"{GROUP}/finalizer"

ServingMode = Literal["Serverless", "Standard"]
_DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?$")


class SpecError(ValueError):
    """A spec the operator cannot act on; the message starts with the field path."""


def parse_duration(text: str, path: str) -> float:
    """Seconds in a Go-style duration without days: ``90s``, ``5m``, ``1h30m``, ``0.5s``."""
    match = _DURATION.match(text.strip()) if isinstance(text, str) else None
    if not match or not any(match.groups()):
        raise SpecError(f"{path}: {text!r} is not a duration such as 30s, 5m or 1h30m")
    hours, minutes, seconds = match.groups()
    return int(hours or 0) * 3600.0 + int(minutes or 0) * 60.0 + float(seconds or 0.0)


@dataclass(frozen=True)
class ModelRef:
    registered_model: str
    version: str | None  # exactly one of version and alias
    alias: str | None


@dataclass(frozen=True)
class Gateway:
    name: str
    namespace: str | None
    section_name: str | None


@dataclass(frozen=True)
class Serving:
    mode: ServingMode = "Serverless"
    runtime: str = "churnops"
    min_replicas: int = 2  # two replicas and a PodDisruptionBudget: a node loss or drain leaves one serving
    max_replicas: int = 4
    explain: bool = True
    gateway: Gateway | None = None  # Standard mode: the Gateway the HTTPRoute attaches to
    hostnames: tuple[str, ...] = ()


@dataclass(frozen=True)
class Analysis:
    max_error_rate: float = 0.01  # canary error rate may exceed the stable's by at most this
    max_latency_p95_ms: float = 100.0  # at most 5 % of canary requests slower than this
    max_score_psi: float = 0.2  # PSI between the canary's and the stable's score histograms
    min_auc_delta: float = -0.03  # the AUC drop (canary minus stable) the sequential test must catch, once labels exist
    min_labelled: int = 200  # labelled predictions per model before AUC is judged
    false_rollback_rate: float = 0.01  # the sequential tests' total type-I error over all looks
    require_auc: bool = False  # promote only once the AUC test has decided (labels for both versions required)


@dataclass(frozen=True)
class Rollout:
    steps: tuple[int, ...] = (5, 25, 50, 100)
    interval_s: float = 300.0
    min_samples: int = 200
    failure_threshold: int = 2
    progress_deadline_s: float = 3600.0  # a hard bound on every step: no decision by then ends the canary (never promotes it)
    inconclusive_limit: int = 4  # consecutive checks without evidence (metrics missing) before the canary is withdrawn
    auto_promote: bool = True
    analysis: Analysis = field(default_factory=Analysis)


@dataclass(frozen=True)
class Drift:
    methods: tuple[str, ...] = ("psi", "ks", "js")
    threshold: float = 0.2
    consecutive: int = 3


@dataclass(frozen=True)
class Retraining:
    enabled: bool = True
    pipeline: str = "churn-training"
    experiment: str = "churnops"
    cooldown_s: float = 24 * 3600.0
    parameters: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Monitoring:
    evaluation_interval_s: float = 300.0
    drift: Drift = field(default_factory=Drift)
    retraining: Retraining = field(default_factory=Retraining)


@dataclass(frozen=True)
class DeploymentSpec:
    model: ModelRef
    feature_service: str
    serving: Serving
    rollout: Rollout
    monitoring: Monitoring

    def analysis_key(self) -> str:
        """Digest of what an analysis depends on: a change restarts the analysis."""
        rollout = self.rollout
        doc = {"steps": rollout.steps, "interval": rollout.interval_s, "min": rollout.min_samples, "analysis": rollout.analysis.__dict__}
        doc["mode"] = self.serving.mode
        return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _section(raw: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    value = raw.get(key) or {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{path}.{key}: must be an object")
    return value


def _number(raw: Mapping[str, Any], key: str, default: float, path: str, lo: float | None = None, hi: float | None = None) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise SpecError(f"{path}.{key}: must be a number, got {value!r}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise SpecError(f"{path}.{key}: {value!r} is outside [{lo}, {hi}]")
    return float(value)


def _integer(raw: Mapping[str, Any], key: str, default: int, path: str, lo: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise SpecError(f"{path}.{key}: must be an integer >= {lo}, got {value!r}")
    return value


def _flag(raw: Mapping[str, Any], key: str, default: bool, path: str) -> bool:
    value = raw.get(key, default)
    if not isinstance(value, bool):
        raise SpecError(f"{path}.{key}: must be true or false, got {value!r}")
    return value


def _text(raw: Mapping[str, Any], key: str, default: str | None, path: str) -> str | None:
    value = raw.get(key, default)
    if value is not None and (not isinstance(value, str) or not value):
        raise SpecError(f"{path}.{key}: must be a non-empty string, got {value!r}")
    return value


def _model(raw: Mapping[str, Any]) -> ModelRef:
    version = raw.get("version")
    version = str(version) if isinstance(version, int) and not isinstance(version, bool) else version
    alias = _text(raw, "alias", None, "spec.model")
    if version is not None and (not isinstance(version, str) or not version.isdigit()):
        raise SpecError(f"spec.model.version: must be a registered version number such as '7', got {version!r}")
    if (version is None) == (alias is None):
        raise SpecError("spec.model: set exactly one of version and alias")
    name = _text(raw, "registeredModel", r.DEFAULT_MODEL_NAME, "spec.model")
    assert name is not None
    return ModelRef(name, version, alias)


def _serving(raw: Mapping[str, Any]) -> Serving:
    path = "spec.serving"
    mode = raw.get("mode", "Serverless")
    if mode not in ("Serverless", "Standard"):
        raise SpecError(f"{path}.mode: must be Serverless or Standard, got {mode!r}")
    low = _integer(raw, "minReplicas", 2, path, 0)
    high = _integer(raw, "maxReplicas", 4, path, 1)
    if low > high:
        raise SpecError(f"{path}: minReplicas {low} exceeds maxReplicas {high}")
    gateway = None
    if raw.get("gateway"):
        g = _section(raw, "gateway", path)
        name = _text(g, "name", None, f"{path}.gateway")
        if name is None:
            raise SpecError(f"{path}.gateway.name: required")
        gateway = Gateway(name, _text(g, "namespace", None, f"{path}.gateway"), _text(g, "sectionName", None, f"{path}.gateway"))
    if mode == "Standard" and gateway is None:
        raise SpecError(f"{path}.gateway: required in Standard mode (the HTTPRoute attaches to it)")
    hostnames = raw.get("hostnames") or []
    runtime = _text(raw, "runtime", "churnops", path)
    assert runtime is not None
    return Serving(mode, runtime, low, high, bool(raw.get("explain", True)), gateway, tuple(str(h) for h in hostnames))


def _steps(raw: Any) -> tuple[int, ...]:
    path = "spec.rollout.steps"
    if raw is None:
        return Rollout.steps
    if not isinstance(raw, list) or not raw:
        raise SpecError(f"{path}: must be a non-empty list of percentages")
    for i, step in enumerate(raw):
        if isinstance(step, bool) or not isinstance(step, int) or not 1 <= step <= 100:
            raise SpecError(f"{path}[{i}]: must be an integer percentage in [1, 100], got {step!r}")
        if i and step <= raw[i - 1]:
            raise SpecError(f"{path}[{i}]: steps must ascend strictly ({raw[i - 1]} then {step})")
    if raw[-1] != 100:
        raise SpecError(f"{path}: the last step must be 100, got {raw[-1]}")
    return tuple(raw)


def _rollout(raw: Mapping[str, Any]) -> Rollout:
    path = "spec.rollout"
    a = _section(raw, "analysis", path)
    ap = f"{path}.analysis"
    analysis = Analysis(
        max_error_rate=_number(a, "maxErrorRate", 0.01, ap, 0.0, 1.0),
        max_latency_p95_ms=_number(a, "maxLatencyP95Ms", 100.0, ap, 0.001, None),
        max_score_psi=_number(a, "maxScorePSI", 0.2, ap, 0.0, None),
        min_auc_delta=_number(a, "minAUCDelta", -0.03, ap, -1.0, -0.001),
        min_labelled=_integer(a, "minLabelled", 200, ap, 1),
        false_rollback_rate=_number(a, "falseRollbackRate", 0.01, ap, 1e-6, 0.5),
        require_auc=_flag(a, "requireAUC", False, ap),
    )
    rollout = Rollout(
        steps=_steps(raw.get("steps")),
        interval_s=parse_duration(raw.get("interval", "5m"), f"{path}.interval"),
        min_samples=_integer(raw, "minSamples", 200, path, 1),
        failure_threshold=_integer(raw, "failureThreshold", 2, path, 1),
        progress_deadline_s=parse_duration(raw.get("progressDeadline", "1h"), f"{path}.progressDeadline"),
        inconclusive_limit=_integer(raw, "inconclusiveLimit", 4, path, 1),
        auto_promote=bool(raw.get("autoPromote", True)),
        analysis=analysis,
    )
    if rollout.progress_deadline_s < rollout.interval_s:  # no check could come before it: every canary would be withdrawn
        raise SpecError(
            f"{path}.progressDeadline: {raw.get('progressDeadline')!r} is shorter than the interval {raw.get('interval', '5m')!r}"
        )
    return rollout


def _monitoring(raw: Mapping[str, Any]) -> Monitoring:
    path = "spec.monitoring"
    d = _section(raw, "drift", path)
    methods = tuple(d.get("methods") or Drift.methods)
    for i, method in enumerate(methods):
        if method not in m.DRIFT_METHODS:
            raise SpecError(f"{path}.drift.methods[{i}]: {method!r} is not one of {', '.join(m.DRIFT_METHODS)}")
    drift = Drift(methods, _number(d, "threshold", 0.2, f"{path}.drift", 0.0, None), _integer(d, "consecutive", 3, f"{path}.drift", 1))
    t = _section(raw, "retraining", path)
    tp = f"{path}.retraining"
    params = t.get("parameters") or {}
    if not isinstance(params, Mapping):
        raise SpecError(f"{tp}.parameters: must be a map of strings")
    retraining = Retraining(
        enabled=bool(t.get("enabled", True)),
        pipeline=_text(t, "pipeline", "churn-training", tp) or "churn-training",
        experiment=_text(t, "experiment", "churnops", tp) or "churnops",
        cooldown_s=parse_duration(t.get("cooldown", "24h"), f"{tp}.cooldown"),
        parameters=tuple(sorted((str(k), str(v)) for k, v in params.items())),
    )
    interval = parse_duration(raw.get("evaluationInterval", "5m"), f"{path}.evaluationInterval")
    return Monitoring(interval, drift, retraining)


def parse(spec: Mapping[str, Any]) -> DeploymentSpec:
    """The spec of a ModelDeployment; ``SpecError`` names the first bad field."""
    feature_service = _text(spec, "featureService", None, "spec")
    if feature_service is None:
        raise SpecError("spec.featureService: required")
    return DeploymentSpec(
        model=_model(_section(spec, "model", "spec")),
        feature_service=feature_service,
        serving=_serving(_section(spec, "serving", "spec")),
        rollout=_rollout(_section(spec, "rollout", "spec")),
        monitoring=_monitoring(_section(spec, "monitoring", "spec")),
    )
