"""Our drift statistics against Evidently's on the same data and the same bins.

How the comparison is made comparable:
- PSI and Jensen-Shannon: Evidently bins numeric columns itself (Sturges bins
  over reference + window), so each value is replaced by the name of its
  bin in our profile and the column is declared categorical; Evidently then
  computes its statistic on exactly our bins. Tolerance 1e-9 (both use
  natural logs and replace empty shares by 1e-4, which is Evidently's rule
  while no non-empty bin holds less than 1e-4).
- Chi-square: Evidently's ``chisquare`` is a goodness-of-fit test against the
  reference shares; ours in that mode (``reference_is_sample=False``) must
  match to 1e-9. Our default treats the reference as a sample too (test of
  homogeneity), which is the right test when the reference is not much
  larger than the window; both agree as the reference grows.
- KS: Evidently's ``ks`` is scipy's ``ks_2samp`` on raw values. Our statistic
  with the whole reference equals it; the p-value is scipy's own
  distribution for effective sizes up to 1,000 (tolerance 1e-9) and the
  Stephens-corrected limit above (tolerance 5 % relative for p-values from
  1e-10; below that both are far beyond any threshold). With the
  profile's 500-point sketch the statistic moves by at most 1/500.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from churnops.monitoring.drift import Layout, chi_square, count_frame, evaluate
from churnops.monitoring.profile import NumericProfile, build_profile

REF_N = 20_000


def evidently_values(
    reference: pd.DataFrame, current: pd.DataFrame, numeric: list[str], categorical: list[str], checks: list[tuple[str, str]]
) -> dict[tuple[str, str], float]:
    """Evidently's drift score for each (column, method)."""
    from evidently import DataDefinition, Dataset, Report  # noqa: PLC0415 - seconds to import
    from evidently.metrics import ValueDrift  # noqa: PLC0415

    definition = DataDefinition(numerical_columns=numeric, categorical_columns=categorical)
    report = Report([ValueDrift(column=column, method=method) for column, method in checks])
    snapshot = report.run(
        Dataset.from_pandas(current, data_definition=definition), Dataset.from_pandas(reference, data_definition=definition)
    )
    out: dict[tuple[str, str], float] = {}
    for metric in snapshot.dict()["metrics"]:
        config: dict[str, Any] = metric["config"]
        out[(config["column"], config["method"])] = float(metric["value"])
    return out


def frames(window_n: int, seed: int, strength: float = 1.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    reference = pd.DataFrame(
        {
            "amount": rng.lognormal(3, 0.6, REF_N),
            "tickets": rng.poisson(2.0, REF_N).astype(float),
            "plan": rng.choice(["basic", "pro", "team", "enterprise"], REF_N, p=[0.4, 0.3, 0.2, 0.1]),
        }
    )
    current = pd.DataFrame(
        {
            "amount": rng.lognormal(3 + 0.08 * strength, 0.6 + 0.05 * strength, window_n),
            "tickets": rng.poisson(2 + 0.3 * strength, window_n).astype(float),
            "plan": rng.choice(["basic", "pro", "team", "enterprise", "legacy"], window_n, p=[0.35, 0.3, 0.2, 0.1, 0.05]),
        }
    )
    return reference, current


def binned(frame: pd.DataFrame, profile_edges: dict[str, tuple[float, ...]]) -> pd.DataFrame:
    """Each numeric value replaced by the name of its profile bin (right-closed, like the profile)."""
    out = frame.copy()
    for name, edges in profile_edges.items():
        out[name] = "bin" + pd.Series(np.searchsorted(np.asarray(edges), frame[name].to_numpy(), side="left"), index=frame.index).astype(
            str
        )
    return out


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # Evidently's chi-square divides by a new category's empty expectation
@pytest.mark.parametrize(("window_n", "seed", "strength"), [(1_000, 1, 1.0), (5_000, 2, 0.3), (5_000, 4, 1.0)])
def test_psi_js_ks_and_chi_square_match_evidently(window_n: int, seed: int, strength: float) -> None:
    reference, current = frames(window_n, seed, strength)
    scores = np.full(REF_N, 0.2)
    exact = build_profile(reference, scores, ["amount", "tickets"], ["plan"], sketch_points=REF_N)  # every distinct value kept
    layout = Layout.of(exact)
    counts = count_frame(layout, current, np.full(window_n, 0.2))
    ours = evaluate(layout, counts)
    edges = {f.name: f.edges for f in exact.features if isinstance(f, NumericProfile)}
    checks = [(c, m) for c in ("amount", "tickets", "plan") for m in ("psi", "jensenshannon")] + [("plan", "chisquare")]
    theirs = evidently_values(binned(reference, edges), binned(current, edges), [], ["amount", "tickets", "plan"], checks)
    theirs |= evidently_values(reference, current, ["amount", "tickets"], ["plan"], [("amount", "ks"), ("tickets", "ks")])

    for name in ("amount", "tickets", "plan"):
        f = ours.feature(name)
        assert f.psi == pytest.approx(theirs[(name, "psi")], rel=1e-9, abs=1e-12), name
        assert f.js == pytest.approx(theirs[(name, "jensenshannon")], rel=1e-9, abs=1e-12), name
    plan = layout.names.index("plan")
    _, gof_p = chi_square(layout.reference[plan], layout.reference_values[plan : plan + 1], counts.bins[plan], reference_is_sample=False)
    assert gof_p[0] == pytest.approx(theirs[("plan", "chisquare")], rel=1e-9, abs=1e-300)
    for name in ("amount", "tickets"):
        p = ours.feature(name).p_value
        assert p is not None
        if REF_N * window_n / (REF_N + window_n) <= 1_000:
            assert p == pytest.approx(theirs[(name, "ks")], rel=1e-9, abs=1e-300), name
        elif theirs[(name, "ks")] >= 1e-10:
            assert p == pytest.approx(theirs[(name, "ks")], rel=0.05), name
        else:  # far below every threshold both ways; the limit's relative error grows in the far tail
            assert p < 1e-9, name


def test_ks_with_the_profile_sketch_stays_within_its_resolution() -> None:
    reference, current = frames(3_000, 3)
    scores = np.full(REF_N, 0.2)
    sketched = build_profile(reference, scores, ["amount"], [])  # 500-point sketch
    exact = build_profile(reference, scores, ["amount"], [], sketch_points=REF_N)
    d_sketch = count_frame(Layout.of(sketched), current[["amount"]], np.full(3_000, 0.2)).ks
    d_exact = count_frame(Layout.of(exact), current[["amount"]], np.full(3_000, 0.2)).ks
    assert d_sketch is not None and d_exact is not None
    assert abs(d_sketch[0] - d_exact[0]) <= 1 / 500 + 1e-12
