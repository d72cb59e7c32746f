"""Stage 5's challenger: a model only a little worse than the stable one, and what the rollout found out about it.

The challenger is trained by the platform's own training code (one LightGBM
with its default parameters, the training window the retraining policy uses
after a shift) on the same table as the champion, with the renewal date left
out of its features, as if that feed had dropped out of the feature view. How
much the renewal date is worth depends on the table: with few customers one
column is most of it, with many the model recovers much of it from the other
renewal flags, and with tens of thousands from the tenure (a contract renews
on the anniversary of the signup: tenure modulo the contract length is the
renewal date). So the demo leaves out one more renewal feature at a time,
then the whole renewal group with the tenure it can be recovered from
(``LADDER``), fitting each candidate on the training rows and comparing it
with the champion on the training code's holdout, until it trails by about
the analysis' ``minAUCDelta`` (on large tables by more: nothing between the
two steps takes the date away). The holdout is the served population, so the canary
will trail by as much. Its scores look like the stable model's (the score PSI
stays far below the analysis' limit): only delayed outcomes show the
difference, and the sequential AUC test of the canary analysis has to catch it.

``auc_case`` condenses what the rollout recorded about the canary (its checks
with their AUC figures, the delayed labels the runner joined over its
analysis window) into one timeline entry that says how the model was made
and why it went.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from churnops.errors import InvalidInputError
from churnops.layout import Layout
from churnops.rollout.outcomes import VersionOutcomes
from churnops.training import registry, runs
from churnops.training.config import SearchBudget, TrainingConfig
from churnops.training.dataset import DatasetSpec, churn_spec
from churnops.training.ensemble import ChurnEnsemble
from churnops.training.train import TrainingOutcome, fit, train_and_register
from churnops_contract.policy import RetrainingPolicy, TrainingWindow
from churnops_feast.definitions import TRAINING_SERVICE

# The renewal date and its flags one more at a time (on 3,000 customers one of these trails by enough), then with
# the tenure it follows from. On 20,000 customers (measured) the model recovers the date from any one of the other
# four: without the date, or the flags, or either tenure, its holdout AUC trails by 0.013-0.017; without all five by
# 0.059 (on 3,000 customers that last step trails by about 0.1).
RENEWAL = ("days_to_renewal", "renewal_within_30d", "renewal_within_90d")
LADDER: tuple[tuple[str, ...], ...] = (RENEWAL[:1], RENEWAL[:2], RENEWAL, (*RENEWAL, "tenure_days", "tenure_months"))
BUDGET = SearchBudget(n_trials=1, timeout_s=None, families=("lightgbm",))  # one fit with the defaults: the same model every time
FEW_LABELS = "delayed labels"  # how the analysis says the AUC waits for labels ("fewer than N delayed labels per model")
ENTRY_KIND = "outcomes"  # the demo's own timeline entry: the delayed labels behind a decision, as the runner reads them


@dataclass(frozen=True)
class Probe:
    """A candidate's holdout AUC and its difference from the champion on the same rows (None without a champion)."""

    left_out: tuple[str, ...]
    auc: float
    delta: float | None


def without(spec: DatasetSpec, left_out: Sequence[str]) -> DatasetSpec:
    """``spec`` without the features ``left_out`` (each must be one of its features)."""
    unknown = sorted(set(left_out) - set(spec.features))
    if unknown:
        raise InvalidInputError(f"{unknown} are not features of the table", field="left_out")
    drop = set(left_out)
    return replace(
        spec, numeric=tuple(c for c in spec.numeric if c not in drop), categorical=tuple(c for c in spec.categorical if c not in drop)
    )


def enough(probe: Probe, target: float) -> bool:
    """Whether a candidate trails the champion by at least ``-target`` (a candidate without a champion is taken as it is)."""
    return probe.delta is None or probe.delta <= target


def choose(candidates: Sequence[tuple[str, ...]], measure: Callable[[tuple[str, ...]], Probe], target: float) -> tuple[Probe, list[Probe]]:
    """The first candidate ``measure`` finds trailing by ``-target`` or more (else the last one), and every probe made."""
    if not candidates:
        raise InvalidInputError("no candidate feature sets to leave out", field="left_out")
    probes: list[Probe] = []
    for left_out in candidates:
        probes.append(measure(left_out))
        if enough(probes[-1], target):
            break
    return probes[-1], probes


def probe(frame: pd.DataFrame, cfg: TrainingConfig, champion: ChurnEnsemble | None, left_out: tuple[str, ...]) -> Probe:
    """Fit a candidate without ``left_out`` and compare its holdout AUC with the champion's on the same rows (nothing is registered)."""
    fitted = fit(frame, without(churn_spec(), left_out), cfg)
    holdout = fitted.split.holdout
    y = holdout[fitted.spec.target_column].to_numpy(dtype=np.int64)
    auc = float(roc_auc_score(y, fitted.model.predict_proba(holdout)))
    delta = auc - float(roc_auc_score(y, champion.predict_proba(holdout))) if champion is not None else None
    return Probe(left_out, auc, delta)


def recent_window(rule: RetrainingPolicy) -> TrainingWindow:
    """The training window of the retraining policy's first run after a shift: the challenger is trained as the champion was."""
    why = "trained as the retraining policy trains after a shift: recent outcomes weigh more and set the calibration"
    return TrainingWindow(recency_half_life_days=rule.recency_half_life_days, calibration_days=rule.calibration_days, reason=why)


def made(left_out: Sequence[str], window: TrainingWindow) -> str:
    """How the challenger was made, for the timeline."""
    weights = f", weights halving every {window.recency_half_life_days:g} days" if window.recency_half_life_days else ""
    calibrated = f", calibrated on the latest {window.calibration_days:g} days" if window.calibration_days else ""
    return (
        f"the platform's training code (one LightGBM, default parameters{weights}{calibrated}) "
        f"on the current table without {', '.join(left_out)}"
    )


def train_subtly_worse(
    layout: Layout, env: Mapping[str, str], cfg: TrainingConfig, reg: registry.RegistryConfig, target: float
) -> tuple[TrainingOutcome, list[Probe]]:
    """Choose what to leave out (``LADDER``), then train, gate and register that challenger like ``churnops train``."""
    frame = runs.training_frame(layout, "embedded", env)
    champion_version = registry.alias_version(reg, registry.CHAMPION)
    champion = registry.load_model(reg, champion_version) if champion_version else None
    chosen, probes = choose(LADDER, lambda left_out: probe(frame, cfg, champion, left_out), target)
    lineage = {
        "source": f"feast:{TRAINING_SERVICE} (embedded store)",
        "feature_service": TRAINING_SERVICE,
        "labels": str(layout.raw / "labels"),
        "rows": len(frame),
        "dataset_sha256": runs.frame_digest(frame),
        "features_left_out": ", ".join(chosen.left_out),
        "purpose": "demo: a challenger a little worse than the champion, for the canary analysis' AUC test",
    }
    spec = without(churn_spec(), chosen.left_out)
    progress = runs.ConsoleProgress()
    try:
        outcome = train_and_register(frame, spec, cfg, reg, layout.reports / "training_subtly_worse", lineage, progress)
    finally:
        progress.close()
    return outcome, probes


def holdout_figures(outcome: TrainingOutcome) -> dict[str, float | str | None]:
    """The challenger's holdout AUC and, when a champion was compared on the same rows, the champion's and the difference."""
    auc = outcome.evaluation.roc_auc
    c = outcome.comparison
    if c is None:
        return {"auc": auc, "champion": None, "championAUC": None, "delta": None}
    return {"auc": auc, "champion": c.champion_version, "championAUC": auc - c.delta_auc, "delta": c.delta_auc}


def auc_figures(check: Mapping[str, Any]) -> Mapping[str, Any]:
    """The AUC test's figures in a recorded check (empty when the check judged no metric)."""
    figures = check.get("figures")
    auc = figures.get("auc_delta") if isinstance(figures, Mapping) else None
    return auc if isinstance(auc, Mapping) else {}


def auc_outcomes(checks: Sequence[Mapping[str, Any]]) -> list[str]:
    """The AUC test's outcome at each check that judged the metrics, in order."""
    return [str(f.get("outcome")) for f in map(auc_figures, checks) if f]


def auc_case(
    version: str,
    stable: str,
    how: str,
    holdout: Mapping[str, Any],
    checks: Sequence[Mapping[str, Any]],
    labels: Mapping[str, VersionOutcomes],
    ended: Mapping[str, Any] | None,
    now: float,
) -> dict[str, Any]:
    """The timeline entry of a canary's AUC case: how it was made, its checks' AUC outcomes, and the last figures.

    ``checks`` are the canary's recorded checks, ``labels`` the delayed-label figures of both versions over its
    analysis window, ``ended`` the event that ended the rollout (None while it runs). Pure.
    """
    judged = [c for c in checks if auc_figures(c)]
    last = auc_figures(judged[-1]) if judged else {}
    canary_auc, stable_auc = last.get("canary"), last.get("stable")
    known = isinstance(canary_auc, int | float) and isinstance(stable_auc, int | float)
    c, s = labels.get(version), labels.get(stable)
    return {
        "time": now,
        "kind": ENTRY_KIND,
        "canary": version,
        "stable": stable,
        "made": how,
        "holdout": dict(holdout),
        "auc": {
            "canary": canary_auc,
            "stable": stable_auc,
            "delta": round(canary_auc - stable_auc, 5) if known else None,  # type: ignore[operator]
            "limit": last.get("limit"),
            "evidence": last.get("evidence"),
            "verdict": last.get("outcome"),
            "outcomes": auc_outcomes(checks),
            "labelledCanary": c.labelled if c is not None else None,
            "labelledStable": s.labelled if s is not None else None,
            "positiveRateCanary": c.positive_rate if c is not None else None,
            "positiveRateStable": s.positive_rate if s is not None else None,
        },
        "scorePSI": _metric(judged[-1], "score_psi") if judged else {},
        "ended": {"reason": ended.get("reason"), "message": ended.get("message")} if ended else None,
    }


def _metric(check: Mapping[str, Any], name: str) -> dict[str, Any]:
    figures = check.get("figures")
    found = figures.get(name) if isinstance(figures, Mapping) else None
    return dict(found) if isinstance(found, Mapping) else {}


def auc_state(check: Mapping[str, Any]) -> str:
    """The AUC test's state at a check: its outcome, "held" while it waits for labels, the check's own outcome without figures."""
    f = auc_figures(check)
    if not f:
        return str(check.get("outcome"))
    return "held" if FEW_LABELS in str(check.get("reason")) else str(f.get("outcome"))


def progress_line(check: Mapping[str, Any], min_labelled: int) -> str:
    """A recorded check's AUC test, said for people."""
    f = auc_figures(check)
    outcome, c, s = f.get("outcome"), f.get("canary"), f.get("stable")
    where = f"v{check.get('canary')} at {check.get('weight')}%"
    if not isinstance(c, int | float) or not isinstance(s, int | float):
        return f"AUC test of {where}: {outcome or check.get('outcome')} ({check.get('reason')})"
    figures = f"canary {c:.3f} vs stable {s:.3f} ({c - s:+.3f}, limit {f.get('limit')})"
    if FEW_LABELS in str(check.get("reason")):
        return f"AUC test of {where}: {figures}; held until each model has {min_labelled:,} delayed labels"
    state = {"undecided": "undecided", "fail": "FAILED"}.get(str(outcome), str(outcome))
    return f"AUC test of {where}: {figures}; {state}, evidence {float(f.get('evidence') or 0.0):.2f} of what failing takes"
