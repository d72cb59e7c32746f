"""Quality gates: pure decisions on an evaluation, each with a readable reason."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from churnops.errors import CheckFailedError
from churnops.training.config import GateConfig
from churnops.training.evaluation import Comparison, Evaluation


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    observed: float
    limit: float
    reason: str


class QualityGateError(CheckFailedError):
    """A model failed one or more quality gates; the message lists them."""

    def __init__(self, results: list[GateResult]) -> None:
        self.results = results
        failed = [r for r in results if not r.passed]
        super().__init__("quality gates failed:\n" + "\n".join(f"  - {r.name}: {r.reason}" for r in failed))


def check_gates(ev: Evaluation, cfg: GateConfig, comparison: Comparison | None = None) -> list[GateResult]:
    """Missing or NaN metrics fail their gate: an unmeasured model is not a good model."""
    results = [
        _at_least("auc", ev.roc_auc, cfg.min_auc, "holdout ROC-AUC"),
        _at_most("brier", ev.brier, cfg.max_brier, "holdout Brier score"),
        *_calibration_gates(ev, cfg),
    ]
    if ev.fairness and cfg.gate_fairness:  # a business segment's gaps are reported in the card, not gated
        results.append(fairness_gate(ev.fairness, cfg))
    if comparison is not None:
        results.append(
            _at_least(
                "no_regression",
                comparison.delta_auc,
                -cfg.max_auc_regression,
                f"AUC change vs champion v{comparison.champion_version} (95% CI {comparison.ci_low:+.4f}..{comparison.ci_high:+.4f})",
            )
        )
    return results


def fairness_gate(report: dict[str, Any], cfg: GateConfig) -> GateResult:
    """The largest gated gap at most ``max_fairness_gap``, over the segments large enough to be judged.

    Segments too small (monitoring's sizes) are shown but not judged; with fewer than two large enough there is
    no gap to judge, and the gate passes saying so rather than reading a gap from a handful of churners.
    """
    measured = {m: report[m] for m in cfg.fairness_gate_metrics if report.get(m) is not None}
    rate = (max(measured, key=lambda m: measured[m]) if measured else cfg.fairness_gate_metrics[0]).removesuffix("_gap")

    def shown(segment: str, v: dict[str, Any]) -> str:
        value = "n/a" if math.isnan(v[rate]) else f"{v[rate]:.2f}"
        judged = v.get(f"in_{rate}_gap", True)
        return (
            f"{segment} {value}"
            if judged
            else f"{segment} {value} ({v.get('churners', 0)} churners, {v['rows']} rows: too small, not judged)"
        )

    figures = f"{rate.replace('_', ' ')} by segment: " + ", ".join(shown(s, v) for s, v in report["segments"].items())
    if not measured:
        why = "; ".join(report.get("notes") or ["fewer than two segments large enough"])
        return GateResult("fairness_gap", True, math.nan, cfg.max_fairness_gap, f"not judged: {why} ({figures})")
    name = max(measured, key=lambda m: measured[m])
    gate = _at_most("fairness_gap", measured[name], cfg.max_fairness_gap, f"largest segment {name.replace('_', ' ')}")
    return GateResult(gate.name, gate.passed, gate.observed, gate.limit, f"{gate.reason} ({figures})")


def _calibration_gates(ev: Evaluation, cfg: GateConfig) -> list[GateResult]:
    """Observed/expected churners on the holdout strictly inside the alert's band; the slope within its limit when set.

    An evaluation without calibration figures (recorded before they existed) fails: it was not measured.
    """
    fit = ev.calibration_fit
    found: list[GateResult] = []
    if cfg.max_calibration_drift is not None:
        ratio = float(fit.get("observed_expected", math.nan))
        drift = abs(ratio - 1)
        ok = not math.isnan(drift) and drift < cfg.max_calibration_drift
        rates = f" (observed churn rate {fit['observed_rate']:.3f}, expected {fit['expected_rate']:.3f})" if "observed_rate" in fit else ""
        what = f"holdout observed/expected churners {ratio:.2f}: off by {drift:.0%}{rates}"
        found.append(
            GateResult(
                "calibration",
                ok,
                ratio,
                cfg.max_calibration_drift,
                f"{what}, {'within' if ok else 'at or past'} ±{cfg.max_calibration_drift:.0%}",
            )
        )
    if cfg.max_calibration_slope_drift is not None:
        slope = float(fit.get("slope", math.nan))
        ok = not math.isnan(slope) and abs(slope - 1) <= cfg.max_calibration_slope_drift
        what = f"holdout calibration slope {slope:.2f} (intercept {fit.get('intercept', math.nan):+.2f})"
        found.append(
            GateResult(
                "calibration_slope",
                ok,
                slope,
                cfg.max_calibration_slope_drift,
                f"{what}, 1 ± {cfg.max_calibration_slope_drift:g} {'holds' if ok else 'fails'}",
            )
        )
    return found


def enforce(results: list[GateResult]) -> None:
    if any(not r.passed for r in results):
        raise QualityGateError(results)


def _at_least(name: str, observed: float, limit: float, what: str) -> GateResult:
    ok = not math.isnan(observed) and observed >= limit
    return GateResult(name, ok, observed, limit, f"{what} {observed:.4f} {'>=' if ok else '<'} {limit:.4f}")


def _at_most(name: str, observed: float, limit: float, what: str) -> GateResult:
    ok = not math.isnan(observed) and observed <= limit
    return GateResult(name, ok, observed, limit, f"{what} {observed:.4f} {'<=' if ok else '>'} {limit:.4f}")
