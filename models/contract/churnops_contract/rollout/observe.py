"""One observation builder: the answers to the contract's named queries in, the analysis's and the policy's observations out.

Prometheus clients (the operator's async one, the runner's sync one) only run
the queries of ``churnops_contract.queries`` and hand each raw JSON body to
``parse_answer``; the embedded runner, which scrapes the predictor itself,
fills the same names with ``Answer`` values. Everything after that is here,
once:

- an answer is *values* (label value -> number, ``""`` when unlabelled),
  *empty* (a successful answer without samples) or *failed* (an error, a
  timeout, or anything malformed: a string or matrix result, a sample
  without a value, a value that is not a number). Nothing raises: a
  malformed answer is a missing figure, with a note saying why;
- a count that is empty for a version the predictor serves is 0 (the series
  appears with the first request); for a version not known to be served it
  is missing. Missing, failed and non-finite figures are None, which the
  analysis reads as "no evidence", never as success;
- delayed labels keep three states (reported, not reported, unknown), which
  the AUC check needs (``analysis`` module docstring);
- the drift verdict is the predictor's own (after multiple-testing control)
  when it gives one: drifted at 1; without a verdict, the worst feature score
  above the spec's threshold.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from churnops_contract import policy
from churnops_contract.queries import ROLES
from churnops_contract.rollout.analysis import Observation, VersionSample

INF = "+Inf"


@dataclass(frozen=True)
class Answer:
    """One query's answer: ``values`` keyed by label value; None when it failed or was malformed (``note`` says why)."""

    values: Mapping[str, float] | None = field(default_factory=dict)
    note: str = ""

    @property
    def failed(self) -> bool:
        return self.values is None

    @property
    def empty(self) -> bool:
        return self.values is not None and not self.values


def failed(note: str) -> Answer:
    return Answer(None, note)


def value(x: float) -> Answer:
    return Answer({"": float(x)})


def _number(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise ValueError(f"value {raw!r} is not a number")
    return float(raw)


def parse_answer(body: Any, keys: Sequence[str] = ("le",)) -> Answer:
    """A Prometheus ``/api/v1/query`` body; samples keyed by the first of ``keys`` they carry. Never raises."""
    try:
        if not isinstance(body, Mapping) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, Mapping) else None
            return failed(f"query refused: {str(error or body)[:160]}")
        data = body.get("data")
        if not isinstance(data, Mapping):
            raise ValueError("no data object")
        kind, result = data.get("resultType"), data.get("result")
        if kind == "scalar":
            if not isinstance(result, list | tuple) or len(result) != 2:
                raise ValueError("scalar without [time, value]")
            return Answer({"": _number(result[1])})
        if kind != "vector" or not isinstance(result, list):
            raise ValueError(f"resultType {kind!r} with {type(result).__name__} result (an instant vector was asked for)")
        out: dict[str, float] = {}
        for sample in result:
            if not isinstance(sample, Mapping) or not isinstance(sample.get("value"), list | tuple) or len(sample["value"]) != 2:
                raise ValueError("a sample without [time, value]")
            labels = sample.get("metric") or {}
            if not isinstance(labels, Mapping):
                raise ValueError("a sample whose metric is not an object")
            out[str(next((labels[k] for k in keys if k in labels), ""))] = _number(sample["value"][1])
        return Answer(out)
    except (ValueError, TypeError) as e:
        return failed(f"malformed answer: {e}")


def _scalar(answer: Answer | None) -> tuple[str, float | None]:
    """("value", x) for a finite number, ("empty", None), or ("unknown", None) for failed, NaN or infinite answers."""
    if answer is None or answer.failed:
        return "unknown", None
    assert answer.values is not None
    if not answer.values:
        return "empty", None
    x = answer.values.get("", next(iter(answer.values.values())))
    return ("value", x) if math.isfinite(x) else ("unknown", None)


def _count(answer: Answer | None, served: bool | None) -> float | None:
    state, x = _scalar(answer)
    if state == "value":
        assert x is not None
        return max(x, 0.0)
    return 0.0 if state == "empty" and served else None


def bucket_counts(cumulative: Mapping[str, float]) -> tuple[float, ...] | None:
    """Per-bucket counts in ``le`` order from a histogram's cumulative buckets; None when empty, unordered or not finite."""
    try:
        ordered = sorted(cumulative.items(), key=lambda kv: math.inf if kv[0] == INF else float(kv[0]))
    except ValueError:
        return None
    values = [v for _, v in ordered]
    if not values or not all(math.isfinite(v) for v in values):
        return None
    return tuple(max(b - a, 0.0) for a, b in zip([0.0, *values[:-1]], values, strict=True))


def _buckets(answer: Answer | None, served: bool | None, size: int) -> tuple[float, ...] | None:
    if answer is None or answer.failed:
        return None
    assert answer.values is not None
    if not answer.values:
        return tuple(0.0 for _ in range(size)) if served else None
    return bucket_counts(answer.values)


def _served(answer: Answer | None) -> bool | None:
    state, x = _scalar(answer)
    return None if state == "unknown" else state == "value" and x == 1.0


def version_sample(answers: Mapping[str, Answer], role: str, buckets: int) -> VersionSample:
    """One version's figures from ``<role>.<figure>`` answers (see the module docstring for missing and zero)."""

    def get(name: str) -> Answer | None:
        return answers.get(f"{role}.{name}")

    served = _served(get("served"))
    requests = _count(get("requests"), served)
    timed, fast = _count(get("timed"), served), _count(get("fast"), served)
    errors = _count(get("errors"), served)
    if _scalar(get("errors"))[0] == "empty" and requests:
        # The query ends in ``or 0 * requests``: with requests answered, an empty answer is a partial or broken one.
        errors = None
    labels_state, labelled = _scalar(get("labelled"))
    if get("labelled") is None:  # Prometheus gives the share of labelled predictions; the runner counts them itself
        labels_state, coverage = _scalar(get("coverage"))
        labelled = None if coverage is None or requests is None else coverage * requests
        if labels_state == "value" and requests is None:
            labels_state = "unknown"
    auc_state, auc = _scalar(get("auc"))
    _, rate = _scalar(get("churn_rate"))
    _, p95 = _scalar(get("p95"))
    return VersionSample(
        requests=requests,
        errors=errors,
        timed=timed,
        slow=None if timed is None or fast is None else max(timed - fast, 0.0),
        p95_ms=p95,
        score_buckets=_buckets(get("scores"), served, buckets),
        auc=auc if auc_state == "value" else None,
        labelled=labelled if labels_state == "value" else None,
        positive_rate=rate,
        labels_unknown=labels_state == "unknown" or auc_state == "unknown",
    )


def notes(answers: Mapping[str, Answer]) -> tuple[str, ...]:
    """Why figures are missing: one note per failed answer (name and reason), in name order."""
    return tuple(f"{name}: {a.note}" for name, a in sorted(answers.items()) if a.failed)


def analysis_observation(answers: Mapping[str, Answer], look: int, buckets: int, problems: Sequence[str] = ()) -> Observation:
    """The canary analysis's observation from the answers of ``queries.analysis_queries``."""
    canary, stable = (version_sample(answers, role, buckets) for role in ROLES)
    found = [*problems, *notes(answers)]
    if _served(answers.get("canary.served")) is False:
        found.append("the canary version is not served")
    if _served(answers.get("stable.served")) is False:
        found.append("the stable version is not served")
    blind_state, blind = _scalar(answers.get("unattributed_errors"))
    if blind_state == "unknown" or (blind is not None and blind > 0):
        what = "could not be read" if blind is None else f"{blind:.0f} server errors carry no version label"
        found.append(f"errors without a version: {what}; the error rate cannot be judged")
        canary, stable = _without_errors(canary), _without_errors(stable)
    step = _count(answers.get("canary.step_requests"), _served(answers.get("canary.served")))
    return Observation(canary, stable, step, look, tuple(found))


def _without_errors(x: VersionSample) -> VersionSample:
    return replace(x, errors=None)


def drifted(verdict: float | None, worst: float | None, threshold: float) -> bool | None:
    """The predictor's verdict when it gives one (1 drifted, 0 not); else the worst feature score against the threshold."""
    if verdict is not None:
        return verdict >= 1.0
    return None if worst is None else worst > threshold


def retraining_observation(answers: Mapping[str, Answer], threshold: float, reference_auc: float | None, now: float) -> policy.Observation:
    """The retraining policy's observation from the answers of ``queries.retraining_queries`` (missing signals are None)."""

    def get(name: str) -> float | None:
        state, x = _scalar(answers.get(name))
        return x if state == "value" else None

    labelled = get("labelled")
    if answers.get("labelled") is None:
        coverage, predictions = get("coverage"), get("predictions")
        labelled = coverage * predictions if coverage is not None and predictions is not None else None
    return policy.Observation(
        time=now,
        drift_detected=drifted(get("drift_verdict"), get("drift_worst"), threshold),
        drifted_share=get("drifted_share"),
        measured_auc=get("auc_measured"),
        labelled=int(labelled) if labelled is not None and labelled >= 0 else 0,
        estimated_auc=get("auc_estimated"),
        reference_auc=reference_auc,
        calibration_ratio=get("calibration_ratio"),
        calibration_z=get("calibration_z"),
    )
