"""Operator benchmark: verdict quality on metric streams, and reconcile throughput and memory at 100 resources.

Part 1 replays the same seeded metric streams through two rules:
- ChurnOps: the operator's own ``analysis.judge`` on counts accumulated since the
  analysis began (sequential tests valid under repeated looks), fed to its own
  rollout state machine (``rollout.decide``: steps, holds, progress deadline);
- Flagger-style: each check compares the last interval's error rate, p95
  latency, score PSI and AUC delta with the same limits (fixed thresholds).
Both use the same steps, interval, minSamples and failureThreshold; a labelled
replay gives every prediction its label at once (the best case for the AUC check). A stream is
a rollout's per-interval traffic: requests split by the canary weight, errors,
latencies, calibrated scores and, for a labelled replay, churn labels. It prints
the false-rollback rate for a canary equal to the stable model and the
detection rate for a canary 0.03 AUC worse and for one with 2 % errors.

Part 2 starts the operator process against kmock's Kubernetes API with 100
ModelDeployments, each taking a version and then a healthy canary through
every step, and prints reconcile passes per second, time until all are
promoted, and the operator's peak memory.

    python tests/benchmarks/bench_operator.py [--runs 500] [--resources 100]
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from churnops_contract import metrics as m
from churnops_contract.queries import latency_le
from churnops_operator.decisions import analysis, rollout
from churnops_operator.decisions.analysis import Observation, VersionSample
from churnops_operator.decisions.rollout import RolloutStatus
from churnops_operator.spec import Analysis, DeploymentSpec, parse
from tests.operators.fakes import FakeKFP, FakeMLflow, FakePrometheus, Traffic
from tests.operators.harness import MD_PATH, NS, crd_defaults, prepare
from tests.operators.kubemock import ADMIN_TOKEN, KubeServer

STEPS = (5, 25, 50, 100)
INTERVAL_S = 300.0
FAILURE_THRESHOLD = 2
MIN_SAMPLES = 200
HORIZON = 40  # intervals per simulated rollout: past the 1 h progress deadline at the last step
STABLE_AUC = 0.85
CHURN_RATE = 0.2
SCORE_EDGES = np.array([0.0, *m.SCORE_BUCKETS[:-1], np.inf])


@dataclass(frozen=True)
class Scenario:
    name: str
    canary_error_rate: float = 0.001
    canary_auc: float = STABLE_AUC


SCENARIOS = (
    Scenario("equal to stable"),
    Scenario("AUC 0.03 worse", canary_auc=STABLE_AUC - 0.03),
    Scenario("2 % errors", canary_error_rate=0.02),
)


def separation(auc: float) -> float:
    """Mean shift between positives' and negatives' normal scores that gives ``auc``."""
    return math.sqrt(2.0) * float(np.sqrt(2.0) * _erfinv(2 * auc - 1))


def _erfinv(y: float) -> float:
    # Winitzki's approximation refined by two Newton steps; enough for scenario parameters.
    a = 0.147
    ln = math.log(1 - y * y)
    x = math.copysign(math.sqrt(math.sqrt((2 / (math.pi * a) + ln / 2) ** 2 - ln / a) - (2 / (math.pi * a) + ln / 2)), y)
    for _ in range(2):
        x -= (math.erf(x) - y) / (2 / math.sqrt(math.pi) * math.exp(-x * x))
    return x


@dataclass
class Window:
    """One version's traffic in one interval."""

    n: int
    errors: int
    latencies_ms: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


def traffic(rng: np.random.Generator, n: int, error_rate: float, auc: float) -> Window:
    labels = rng.random(n) < CHURN_RATE
    z = rng.normal(0.0, 1.0, n) + labels * separation(auc)
    scores = 1.0 / (1.0 + np.exp(-(z - 1.6)))  # calibrated-looking probabilities, mostly low
    return Window(n, int(rng.binomial(n, error_rate)), rng.lognormal(math.log(30.0), 0.5, n), scores, labels)


def auc_of(scores: np.ndarray, labels: np.ndarray) -> float | None:
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return None
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="mergesort")] = np.arange(1, len(scores) + 1)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def summarize(windows: list[Window], limit_ms: float, labelled: bool) -> VersionSample:
    n = sum(w.n for w in windows)
    lat = np.concatenate([w.latencies_ms for w in windows]) if windows else np.array([])
    scores = np.concatenate([w.scores for w in windows]) if windows else np.array([])
    labels = np.concatenate([w.labels for w in windows]) if windows else np.array([], dtype=bool)
    le_ms = float(latency_le(limit_ms)) * 1000.0
    return VersionSample(
        requests=float(n),
        errors=float(sum(w.errors for w in windows)),
        slow=float((lat > le_ms).sum()),
        timed=float(n),
        p95_ms=float(np.percentile(lat, 95)) if n else None,
        score_buckets=tuple(float(c) for c in np.histogram(scores, SCORE_EDGES)[0]),
        auc=auc_of(scores, labels) if labelled else None,
        labelled=float(n) if labelled else 0.0,
        positive_rate=float(labels.mean()) if labelled and n else None,
    )


def flagger_check(a: Analysis, c: VersionSample, s: VersionSample) -> bool:
    """Fixed thresholds on the last interval; True when the check fails.

    Error rate and p95 are the canary's own (as in Flagger's built-in checks); PSI and
    AUC compare with the stable model when it served traffic in the interval.
    """
    if not c.requests or c.p95_ms is None or c.score_buckets is None:
        return True  # no data fails, as in Flagger
    if (c.errors or 0) / c.requests > a.max_error_rate or c.p95_ms > a.max_latency_p95_ms:
        return True
    if not s.requests or s.score_buckets is None:
        return False
    if analysis.psi(c.score_buckets, s.score_buckets) > a.max_score_psi:
        return True
    return c.auc is not None and s.auc is not None and (c.labelled or 0) >= a.min_labelled and c.auc - s.auc < a.min_auc_delta


@dataclass
class Result:
    rolled_back: bool = False
    promoted: bool = False
    intervals: int = 0  # until the rollout ended (or the horizon)


def ours(rng: np.random.Generator, sc: Scenario, spec: DeploymentSpec, labelled: bool, rate: float) -> Result:
    """One rollout through the operator's own state machine (``rollout.decide``) and ``analysis.judge``."""
    now = 0.0
    st = rollout.decide(spec, RolloutStatus(stable="1"), "2", now).status
    st = rollout.traffic_applied(st, now)
    seen: list[tuple[Window, Window, float]] = []  # canary, stable, interval end
    limit = spec.rollout.analysis.max_latency_p95_ms
    for look in range(1, HORIZON + 1):
        now += INTERVAL_S
        total = rng.poisson(rate * INTERVAL_S)
        nc = rng.binomial(total, st.weight / 100.0)
        seen.append((traffic(rng, nc, sc.canary_error_rate, sc.canary_auc), traffic(rng, total - nc, 0.001, STABLE_AUC), now))
        assert st.step_started is not None
        step_n = sum(c.n for c, _, end in seen if end > st.step_started)
        obs = Observation(
            summarize([c for c, _, _ in seen], limit, labelled), summarize([x for _, x, _ in seen], limit, labelled), step_n, look
        )
        st = rollout.decide(spec, st, "2", now, analysis.judge(spec.rollout.analysis, obs, spec.rollout.min_samples)).status
        if st.canary is None:
            return Result(rolled_back=st.phase == "RolledBack", promoted=st.stable == "2", intervals=look)
    return Result(intervals=HORIZON)


def flagger(rng: np.random.Generator, sc: Scenario, a: Analysis, labelled: bool, rate: float) -> Result:
    """One rollout judged by fixed thresholds on the last interval, with the same steps and failure threshold."""
    step = failed = 0
    step_windows: list[Window] = []
    for look in range(1, HORIZON + 1):
        total = rng.poisson(rate * INTERVAL_S)
        nc = rng.binomial(total, STEPS[step] / 100.0)
        c = traffic(rng, nc, sc.canary_error_rate, sc.canary_auc)
        s = traffic(rng, total - nc, 0.001, STABLE_AUC)
        step_windows.append(c)
        step_n = sum(w.n for w in step_windows)
        if step_n < MIN_SAMPLES:
            continue
        if flagger_check(a, summarize([c], a.max_latency_p95_ms, labelled), summarize([s], a.max_latency_p95_ms, labelled)):
            failed += 1
            if failed >= FAILURE_THRESHOLD:
                return Result(rolled_back=True, intervals=look)
            continue
        step, step_windows = step + 1, []
        if step == len(STEPS):
            return Result(promoted=True, intervals=look)
    return Result(intervals=HORIZON)


def bench_verdicts(runs: int, seed: int, rate: float) -> None:
    print(f"== Verdicts: {runs} rollouts per scenario; steps {STEPS}, {INTERVAL_S:.0f} s interval, {rate:g} req/s,")
    print(f"   minSamples {MIN_SAMPLES}, failureThreshold {FAILURE_THRESHOLD}, limits as the CRD defaults unless noted;")
    print(f"   ChurnOps runs the operator's state machine (progress deadline 1 h); both stop at {HORIZON} intervals")
    for labelled, delta in ((False, None), (True, None), (True, -0.02)):
        over = {} if delta is None else {"analysis": {"minAUCDelta": delta}}
        spec = parse(
            {
                "model": {"version": "2"},
                "featureService": "f",
                "rollout": {
                    "steps": list(STEPS),
                    "minSamples": MIN_SAMPLES,
                    "failureThreshold": FAILURE_THRESHOLD,
                    "interval": f"{INTERVAL_S:.0f}s",
                    **over,
                },
            }
        )
        a = spec.rollout.analysis
        what = f"labelled replay, minAUCDelta {a.min_auc_delta:g}" if labelled else "no labels yet (AUC pending)"
        print(f"-- {what}")
        print(f"   {'scenario':<18} {'ChurnOps (sequential)':<30} {'Flagger-style (fixed)':<30}   goal")
        for sc in SCENARIOS:
            if not labelled and sc.canary_auc != STABLE_AUC:
                continue
            rng = np.random.default_rng(seed)
            mine = [ours(rng, sc, spec, labelled, rate) for _ in range(runs)]
            rng = np.random.default_rng(seed)
            theirs = [flagger(rng, sc, a, labelled, rate) for _ in range(runs)]
            kind = "false rollbacks" if sc.name == "equal to stable" else "detected"
            goal = "<= 2 %" if kind == "false rollbacks" else ">= 95 %"
            print(f"   {sc.name:<18} {_rate(mine, kind):<30} {_rate(theirs, kind):<30}   {goal}")
        print(f"   {'':<18} {'(median intervals to the end; undecided at the horizon)'}")


def _rate(results: list[Result], kind: str) -> str:
    share = sum(r.rolled_back for r in results) / len(results)
    median = float(np.median([r.intervals for r in results]))
    open_ = sum(not (r.rolled_back or r.promoted) for r in results)
    return f"{share:>6.1%} {kind} ({median:g}; {open_})"


# --- Part 2: the operator process against kmock -----------------------------------------------------------


def rss_peak_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1))  # type: ignore[union-attr]


def bench_reconcile(resources: int, tick: float) -> None:
    from tests.operators.harness import OperatorProcess  # noqa: PLC0415

    print(f"== Reconcile: {resources} ModelDeployments, tick {tick:g} s, against kmock (2 cores, one process each)")
    with KubeServer() as kube, FakePrometheus() as prom, FakeKFP() as kfp, FakeMLflow() as mlflow, tempfile.TemporaryDirectory() as tmp:
        for v in ("1", "2"):
            prom.set(v, Traffic())
        api = httpx.Client(base_url=kube.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
        prepare(kube, api)
        names = [f"md-{i:03d}" for i in range(resources)]
        for name in names:
            mlflow.register(name, 2)
        operator = OperatorProcess(kube.kubeconfig(Path(tmp) / "kubeconfig"), prom.url, mlflow.url, kfp.url, Path(tmp) / "op.log", tick)
        operator.args[operator.args.index("--metrics-port") + 1] = str(metrics_port := _free_port())
        operator.args[operator.args.index("--timeout") + 1] = "5"  # the operator's default
        operator.start()
        started = time.monotonic()
        for name in names:
            spec = {
                "model": {"registeredModel": name, "version": "1"},
                "featureService": "f",
                "rollout": {"interval": "1s", "minSamples": 100},
            }
            body = {"apiVersion": "churnops.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name, "namespace": NS}}
            api.post(MD_PATH.format(ns=NS), json={**body, "spec": crd_defaults(spec)}).raise_for_status()

        def statuses() -> list[dict[str, Any]]:
            return [i.get("status") or {} for i in api.get(MD_PATH.format(ns=NS)).json().get("items") or []]

        def count(version: str) -> int:
            return sum(1 for s in statuses() if s.get("stableVersion") == version)

        def finished() -> tuple[int, int]:
            """Canaries promoted, and rolled back (a metric query failing under load fails its check)."""
            done = statuses()
            return sum(1 for s in done if s.get("stableVersion") == "2"), sum(1 for s in done if "2" in (s.get("rejectedVersions") or []))

        while count("1") < resources:
            time.sleep(2)
        deployed = time.monotonic() - started
        passes_before = _passes(metrics_port)
        t0 = time.monotonic()
        for name in names:
            api.patch(
                f"{MD_PATH.format(ns=NS)}/{name}",
                json={"spec": {"model": {"version": "2"}}},
                headers={"Content-Type": "application/merge-patch+json"},
            ).raise_for_status()
        while sum(finished()) < resources:
            time.sleep(2)
        promoted_n, rolled_back = finished()
        promoted = time.monotonic() - t0
        passes = _passes(metrics_port) - passes_before
        seconds, count_ = _pass_time(metrics_port)
        assert operator.proc is not None
        peak = rss_peak_kib(operator.proc.pid)
        operator.stop()
        denied = kube.call(lambda: list(kube.k.denied))
        print(f"   all {resources} deployed (version 1) in {deployed:.1f} s")
        print(f"   {promoted_n} canaries promoted through {len(STEPS)} steps, {rolled_back} rolled back, all done in {promoted:.1f} s")
        print(
            f"   reconcile passes: {passes:.0f} in {promoted:.1f} s = {passes / promoted:.1f} passes/s; mean pass {1000 * seconds / count_:.1f} ms"
        )
        print(f"   operator peak memory (VmHWM): {peak / 1024:.1f} MiB; RBAC refusals: {len(denied)}")
        for reason in sorted({str(s["history"][-1]["reason"])[:200] for s in statuses() if s.get("rolloutPhase") == "RolledBack"})[:3]:
            print(f"   rolled back because: {reason}")


def _free_port() -> int:
    from churnops.processes import free_port  # noqa: PLC0415

    return free_port()


def _passes(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(float(v) for v in re.findall(r'^churnops_operator_reconciles_total\{result="ok"\} (\S+)$', text, re.M))


def _pass_time(port: int) -> tuple[float, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    total = float(re.search(r"^churnops_operator_reconcile_seconds_sum (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    count = float(re.search(r"^churnops_operator_reconcile_seconds_count (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    return total, count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--rates", type=float, nargs="+", default=[20.0, 60.0], help="requests per second over both versions")
    p.add_argument("--resources", type=int, default=100)
    p.add_argument("--tick", type=float, default=10.0, help="the operator's default pass interval")
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--skip-reconcile", action="store_true")
    args = p.parse_args()
    for rate in args.rates:
        bench_verdicts(args.runs, args.seed, rate)
    if not args.skip_reconcile:
        bench_reconcile(args.resources, args.tick)


if __name__ == "__main__":
    main()
