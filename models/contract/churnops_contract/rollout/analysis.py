"""Judge a canary against the stable model with tests that stay valid under repeated looks.

A rollout looks at the same, growing sample at every interval. A fixed
threshold on each look (what Flagger and Argo Rollouts do) fails a canary that
is as good as the stable model whenever noise crosses the line once, and the
more looks, the likelier that is. Here every check is a sequential test whose
false-alarm probability over *all* looks is bounded:

- error rate and latency use a mixture sequential probability ratio test
  (mSPRT; Johari, Pekelis and Walsh, "Always valid inference", 2017): the
  estimate ``d`` with variance ``V`` is compared with the boundary ``d0`` of the
  null hypothesis through ``L = sqrt(V / (V + t^2)) * exp(t^2 (d - d0)^2 / (2 V (V + t^2)))``
  for a normal mixture of scale ``t``; under the null, ``P(L ever >= 1/a) <= a``
  (Ville's inequality), so the test may look after every request;
- the AUC difference uses Wald's sequential probability ratio test between
  "as good as stable" (difference 0) and "worse by ``min_auc_delta``", with the
  normal likelihood of the estimate: ``log L = m (d - m/2) / V``. It fails at
  ``log((1 - b) / a)`` and passes at ``log(b / (1 - a))``, ``b = MISS_RATE``,
  and stays *undecided* in between. A test of "within the limit" alone would
  need the canary's own AUC to be known to within the gap between the limit
  and the true drop; the two-sided test instead stops as soon as either
  hypothesis is clearly the likelier one, which a rollout's labels can show;
- the score PSI has no likelihood ratio; its check spends the error budget over
  looks (``a_j = a * 6 / (pi^2 j^2)``, summing to ``a``) on a normal bound of the
  bias-corrected PSI.

Decision rule: a check *fails* when a test rejects "the canary is within its
limit"; it is *inconclusive* when a figure it needs is missing, NaN, malformed
or unreachable (never counted as success, and not as the canary's failure
either: the rollout machine holds and, past a limit, withdraws the canary
without rejecting it); it *passes* when every required figure is present and
no test rejects; it *waits* while the canary has fewer than ``min_samples``
requests. An undecided AUC passes a step but not the promotion: the rollout
machine keeps the canary at its last step until the test decides. The budget
``false_rollback_rate`` is split evenly over the four metrics (Bonferroni).

AUC and delayed labels: a version's labelled count is *reported* (a number,
possibly 0), *not reported* (the label pipeline exported nothing for it), or
*unknown* (the answer failed). AUC is judged once both versions report
``min_labelled`` labels; before that it is *pending* (with ``require_auc`` it is
*undecided*: the promotion waits for the labels, and a deadline withdraws the
canary instead of promoting it). When labels are expected (one version reports labels or an
AUC) and the other's are not reported or unknown, AUC is *unavailable*: it
may hold a rollout, never promote one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Literal

from churnops_contract.rollout.spec import Analysis

Outcome = Literal["pass", "fail", "unavailable", "pending", "undecided"]
CheckOutcome = Literal["pass", "fail", "wait", "inconclusive"]
METRICS = ("error_rate", "latency", "score_psi", "auc")
SLOW_SHARE = 0.05  # p95 <= limit  <=>  at most 5 % of requests slower than the limit
MISS_RATE = 0.05  # the AUC test's chance of passing a canary exactly min_auc_delta worse (Wald's beta)


@dataclass(frozen=True)
class VersionSample:
    """Counts for one model version over the analysis window; None when unavailable."""

    requests: float | None = None
    errors: float | None = None
    slow: float | None = None  # requests slower than the latency limit's bucket
    timed: float | None = None  # requests in the latency histogram
    p95_ms: float | None = None  # reported figure, not used for the decision
    score_buckets: tuple[float, ...] | None = None  # per-bucket (not cumulative) counts
    auc: float | None = None
    labelled: float | None = None  # None: not reported (see the module docstring)
    positive_rate: float | None = None
    labels_unknown: bool = False  # the labelled count could not be read (failed or malformed answer)


@dataclass(frozen=True)
class Observation:
    canary: VersionSample
    stable: VersionSample
    step_requests: float | None  # canary requests since the current step began
    look: int  # 1 for the first check of this analysis, 2 for the next ...
    problems: tuple[str, ...] = ()  # query errors, for the verdict's reasons


@dataclass(frozen=True)
class MetricResult:
    name: str
    outcome: Outcome
    canary: float | None
    stable: float | None
    limit: float
    evidence: float  # log-likelihood ratio over its rejection boundary (>= 1 rejects)
    detail: str
    decidable: bool = True  # undecided, but more canary data alone could still decide it
    estimated: bool = True  # undecided with an estimate to lean on (False: waiting for the labels it requires)


@dataclass(frozen=True)
class Verdict:
    outcome: CheckOutcome
    samples: int  # canary requests in the analysis window
    step_samples: int
    results: tuple[MetricResult, ...] = field(default=())
    reason: str = ""

    @property
    def conclusive(self) -> bool:
        """No test is still undecided; a promotion needs this, a step does not."""
        return all(r.outcome != "undecided" for r in self.results)

    @property
    def decidable(self) -> bool:
        """Every undecided test could still be decided by more canary data (else waiting is futile)."""
        return all(r.decidable for r in self.results if r.outcome == "undecided")

    @property
    def estimated(self) -> bool:
        """Every undecided test has an estimate: settling it can lean on evidence (else the canary is withdrawn)."""
        return all(r.estimated for r in self.results if r.outcome == "undecided")

    @property
    def leans_worse(self) -> bool:
        """An undecided test finds "worse" the likelier hypothesis (how the rollout settles it at its deadline)."""
        return any(r.outcome == "undecided" and r.evidence > 0 for r in self.results)

    def figures(self) -> dict[str, object]:
        """The verdict for status and events: figures rounded for people."""
        out: dict[str, object] = {"outcome": self.outcome, "samples": self.samples, "reason": self.reason}
        for r in self.results:
            out[r.name] = {
                "outcome": r.outcome,
                "canary": _round(r.canary),
                "stable": _round(r.stable),
                "limit": r.limit,
                "evidence": round(r.evidence, 3),
            }
        return out


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 5)


def known(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def msprt_log_lr(estimate: float, variance: float, null: float, tau: float) -> float:
    """log of the normal-mixture likelihood ratio for ``estimate ~ N(theta, variance)`` against theta = null."""
    v = max(variance, 1e-12)
    t2 = tau * tau
    return 0.5 * math.log(v / (v + t2)) + t2 * (estimate - null) ** 2 / (2.0 * v * (v + t2))


def _evidence(estimate: float, variance: float, null: float, tau: float, alpha: float) -> float:
    """log LR over log(1/alpha), counted only above the null (more errors, more slow requests); >= 1 rejects."""
    if estimate <= null:
        return 0.0
    return max(msprt_log_lr(estimate, variance, null, tau), 0.0) / math.log(1.0 / alpha)


def _rate_var(x: float, n: float) -> float:
    p = (x + 0.5) / (n + 1.0)  # keeps the variance positive when no event has happened yet
    return p * (1.0 - p) / n


def error_rate(c: VersionSample, s: VersionSample, a: Analysis, alpha: float) -> MetricResult:
    name, limit = "error_rate", a.max_error_rate
    if not all(known(x) for x in (c.requests, c.errors, s.requests, s.errors)):
        return MetricResult(name, "unavailable", None, None, limit, 0.0, "error or request counts missing")
    assert c.requests is not None and c.errors is not None and s.requests is not None and s.errors is not None
    if c.requests <= 0 or s.requests <= 0:
        return MetricResult(name, "unavailable", None, None, limit, 0.0, "a model answered no requests in the window")
    pc, ps = min(c.errors / c.requests, 1.0), min(s.errors / s.requests, 1.0)
    var = _rate_var(c.errors, c.requests) + _rate_var(s.errors, s.requests)
    ev = _evidence(pc - ps, var, limit, max(limit, 0.005), alpha)
    outcome: Outcome = "fail" if ev >= 1.0 else "pass"
    return MetricResult(name, outcome, pc, ps, limit, ev, f"canary {pc:.4f} vs stable {ps:.4f}, allowed excess {limit:g}")


def latency(c: VersionSample, s: VersionSample, a: Analysis, alpha: float) -> MetricResult:
    name, limit = "latency_p95_ms", a.max_latency_p95_ms
    if not all(known(x) for x in (c.slow, c.timed, s.slow, s.timed)):
        return MetricResult(name, "unavailable", c.p95_ms, s.p95_ms, limit, 0.0, "latency histogram missing")
    assert c.slow is not None and c.timed is not None and s.slow is not None and s.timed is not None
    if c.timed <= 0 or s.timed <= 0:
        return MetricResult(name, "unavailable", c.p95_ms, s.p95_ms, limit, 0.0, "no timed requests in the window")
    qc, qs = c.slow / c.timed, s.slow / s.timed
    var_c = _rate_var(c.slow, c.timed)
    # Both must reject: the canary breaks the objective, and it is slower than the stable model.
    above_objective = _evidence(qc, var_c, SLOW_SHARE, 0.05, alpha)
    above_stable = _evidence(qc - qs, var_c + _rate_var(s.slow, s.timed), 0.0, 0.05, alpha)
    ev = min(above_objective, above_stable)
    outcome: Outcome = "fail" if ev >= 1.0 else "pass"
    return MetricResult(name, outcome, c.p95_ms, s.p95_ms, limit, ev, f"share slower than {limit:g} ms: canary {qc:.4f}, stable {qs:.4f}")


def psi_of_counts(canary: tuple[float, ...], stable: tuple[float, ...]) -> float:
    """Population stability index between two histograms of *counts*, with half-count smoothing.

    Not the monitoring's ``psi_of_proportions`` (an epsilon floor on proportions, as
    Evidently computes it): the half-count smoothing keeps the statistic finite for
    empty buckets with a known small-sample bias, which the sequential bound subtracts.
    """
    k = len(canary)
    nc, ns = sum(canary), sum(stable)
    total = 0.0
    for ci, si in zip(canary, stable, strict=True):
        p = (ci + 0.5) / (nc + 0.5 * k)
        q = (si + 0.5) / (ns + 0.5 * k)
        total += (p - q) * math.log(p / q)
    return total


def score_psi(c: VersionSample, s: VersionSample, a: Analysis, alpha: float, look: int) -> MetricResult:
    name, limit = "score_psi", a.max_score_psi
    cb, sb = c.score_buckets, s.score_buckets
    if cb is None or sb is None or len(cb) != len(sb) or len(cb) < 2 or not all(known(x) for x in (*cb, *sb)):
        return MetricResult(name, "unavailable", None, None, limit, 0.0, "score histograms missing")
    nc, ns = sum(cb), sum(sb)
    if nc <= 0 or ns <= 0:
        return MetricResult(name, "unavailable", None, None, limit, 0.0, "no scores in the window")
    value = psi_of_counts(cb, sb)
    k = len(cb)
    h = 1.0 / nc + 1.0 / ns
    bias = (k - 1) * h  # expected PSI of two samples of one distribution
    se = math.sqrt(2.0 * (k - 1)) * h + math.sqrt(4.0 * max(limit, 0.0) * h)
    spent = alpha * 6.0 / (math.pi**2 * max(look, 1) ** 2)
    z = NormalDist().inv_cdf(1.0 - spent)
    lower = value - bias - z * se  # a one-sided lower bound of the true PSI at this look
    ev = 0.0 if lower <= 0 else lower / limit if limit > 0 else math.inf
    outcome: Outcome = "fail" if lower > limit else "pass"
    return MetricResult(name, outcome, value, None, limit, ev, f"PSI {value:.4f} (lower bound {lower:.4f})")


def auc_variance(auc: float, positives: float, negatives: float) -> float:
    """Hanley and McNeil (1982) variance of an AUC estimate."""
    q1 = auc / (2.0 - auc)
    q2 = 2.0 * auc * auc / (1.0 + auc)
    return (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)) / (positives * negatives)


def auc(c: VersionSample, s: VersionSample, a: Analysis, alpha: float) -> MetricResult:
    name, limit = "auc_delta", a.min_auc_delta
    expected = _labels_expected(c, s)
    if expected is not None:
        return MetricResult(name, "unavailable", c.auc, s.auc, limit, 0.0, expected)
    labelled = [x.labelled for x in (c, s)]
    if not all(known(x) and x >= a.min_labelled for x in labelled):  # type: ignore[operator]
        few = f"fewer than {a.min_labelled} delayed labels per model"
        if a.require_auc:  # steps may pass, the promotion waits for the labels; the deadline withdraws, never promotes
            return MetricResult(name, "undecided", c.auc, s.auc, limit, 0.0, f"{few}; requireAUC holds the promotion", estimated=False)
        return MetricResult(name, "pending", c.auc, s.auc, limit, 0.0, few)
    if not all(known(x) for x in (c.auc, s.auc, c.positive_rate, s.positive_rate)):
        return MetricResult(name, "unavailable", c.auc, s.auc, limit, 0.0, "labels exist but AUC or churn rate is missing")
    assert c.auc is not None and s.auc is not None and c.positive_rate is not None and s.positive_rate is not None
    variances = []
    for sample, rate in ((c, c.positive_rate), (s, s.positive_rate)):
        assert sample.labelled is not None and sample.auc is not None
        pos = max(sample.labelled * rate, 1.0)
        neg = max(sample.labelled - pos, 1.0)
        variances.append(auc_variance(min(max(sample.auc, 0.5), 0.999), pos, neg))
    delta = c.auc - s.auc
    log_lr = wald_log_lr(delta, sum(variances), limit)
    fail_at, pass_at = math.log((1.0 - MISS_RATE) / alpha), math.log(MISS_RATE / (1.0 - alpha))
    outcome: Outcome = "fail" if log_lr >= fail_at else "pass" if log_lr <= pass_at else "undecided"
    detail = f"AUC canary {c.auc:.4f} vs stable {s.auc:.4f}; log LR {log_lr:.2f} (fails at {fail_at:.2f}, passes at {pass_at:.2f})"
    # With the canary's own AUC known exactly, only the stable's variance would be left.
    decidable = not pass_at < wald_log_lr(delta, variances[1], limit) < fail_at
    if outcome == "undecided" and not decidable:
        detail += "; the stable version's labels are too few for more canary data to decide"
    return MetricResult(name, outcome, c.auc, s.auc, limit, max(log_lr, 0.0) / fail_at, detail, decidable)


def _labels_expected(c: VersionSample, s: VersionSample) -> str | None:
    """Why AUC cannot be judged although labels are expected; None when it can (or when no labels exist anywhere)."""
    for role, x in (("canary", c), ("stable", s)):
        if x.labels_unknown:
            return f"the {role}'s label coverage could not be read"
        if known(x.auc) and not known(x.labelled):
            return f"the {role} reports an AUC but no label coverage"
    reported = {role: x.labelled for role, x in (("canary", c), ("stable", s)) if known(x.labelled)}
    if len(reported) == 1:
        (role, count), other = next(iter(reported.items())), "stable" if "canary" in reported else "canary"
        if count is not None and count > 0:
            return f"the {role} reports {count:.0f} delayed labels but the {other} reports none"
    return None


def wald_log_lr(estimate: float, variance: float, worse: float) -> float:
    """log of Wald's likelihood ratio of "difference = worse" against "difference = 0" for ``estimate ~ N(difference, variance)``."""
    return worse * (estimate - worse / 2.0) / max(variance, 1e-12)


def judge(a: Analysis, obs: Observation, min_samples: int) -> Verdict:
    """One check of the canary; see the module docstring for the rule."""
    samples = obs.canary.requests
    if not known(samples):
        why = "; ".join(obs.problems) or "canary request count missing"
        return Verdict("inconclusive", 0, 0, (), f"no canary request count: {why}")
    assert samples is not None
    if not known(obs.step_requests):
        why = "; ".join(obs.problems) or "the step's canary request count is missing"
        return Verdict("inconclusive", int(samples), 0, (), f"no request count for the current step: {why}")
    assert obs.step_requests is not None
    step = int(obs.step_requests)
    if samples < min_samples:
        return Verdict("wait", int(samples), step, (), f"{int(samples)} of {min_samples} canary requests")
    alpha = a.false_rollback_rate / len(METRICS)
    results = (
        error_rate(obs.canary, obs.stable, a, alpha),
        latency(obs.canary, obs.stable, a, alpha),
        score_psi(obs.canary, obs.stable, a, alpha, obs.look),
        auc(obs.canary, obs.stable, a, alpha),
    )
    for outcome in ("fail", "unavailable"):
        found = [r for r in results if r.outcome == outcome]
        if found:
            reason = "; ".join(f"{r.name} {r.outcome}: {r.detail}" for r in found)
            if obs.problems:
                reason += f" ({'; '.join(obs.problems)})"
            return Verdict("fail" if outcome == "fail" else "inconclusive", int(samples), step, results, reason)
    open_ = [r for r in results if r.outcome == "undecided"]
    reason = "all judged metrics within limits"
    if open_:
        reason += "; " + "; ".join(f"{r.name} undecided: {r.detail}" for r in open_)
    return Verdict("pass", int(samples), step, results, reason)
