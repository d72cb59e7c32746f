"""Quality gates: pure decisions on an evaluation, each with a readable reason."""

from __future__ import annotations

import math
from dataclasses import dataclass

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
    ]
    if ev.fairness:
        name = max(cfg.fairness_gate_metrics, key=lambda m: ev.fairness[m])
        results.append(_at_most("fairness_gap", ev.fairness[name], cfg.max_fairness_gap, f"largest segment {name.replace('_', ' ')}"))
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


def enforce(results: list[GateResult]) -> None:
    if any(not r.passed for r in results):
        raise QualityGateError(results)


def _at_least(name: str, observed: float, limit: float, what: str) -> GateResult:
    ok = not math.isnan(observed) and observed >= limit
    return GateResult(name, ok, observed, limit, f"{what} {observed:.4f} {'>=' if ok else '<'} {limit:.4f}")


def _at_most(name: str, observed: float, limit: float, what: str) -> GateResult:
    ok = not math.isnan(observed) and observed <= limit
    return GateResult(name, ok, observed, limit, f"{what} {observed:.4f} {'<=' if ok else '>'} {limit:.4f}")
