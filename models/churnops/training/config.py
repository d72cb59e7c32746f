"""Training settings: the search budget, the quality gates, the campaign economics.

Plain dataclasses with no ML imports, so the CLI, the KFP pipeline and the
rollout runner take their defaults from here (each setting is defined once)
without loading scikit-learn, LightGBM or Optuna.

The search budget is scaled to the table (``plan_search``): a fixed budget that
suits 50,000 customers x 116 features spends minutes on a 5,000-row table
where a single LightGBM fits in a second. Whatever the user sets is kept; what
is left unset (None) is chosen from the table's size, and the plan states the
time it expects before the search starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from churnops.errors import InvalidInputError
from churnops.training.families import FAMILY_TABLE, family_of
from churnops_contract.policy import TrainingWindow

# The model families, in the order their default trials run; each is one entry of ``families.FAMILY_TABLE``.
FAMILIES = tuple(f.name for f in FAMILY_TABLE)
TREE_FAMILIES = tuple(f.name for f in FAMILY_TABLE if f.tree)
# families whose margin the server attributes exactly (native TreeSHAP, linear coefficients)
ATTRIBUTABLE_FAMILIES = tuple(f.name for f in FAMILY_TABLE if f.attribution is not None)

# Below this many training cells (rows x features) a table is small: one thread per model, because
# OpenMP's per-tree synchronisation costs more than the work it splits (LightGBM on 3,500 x 20 took
# 0.4 s CPU with one thread and 7.7 s with two on a busy 2-core machine), and only the families the
# served ensemble can use (random forests and MLPs are the slowest fits and cannot be served with exact reasons).
SMALL_TABLE_CELLS = 1_000_000
# Below this many training rows the first (default) trees are shallow: 31-leaf trees on 3,500 rows fit
# noise (grouped CV AUC 0.811 against 0.840 for 7 leaves on a 5,000-row customer table).
SHALLOW_TREE_ROWS = 20_000
# On a small table a trial costs a fraction of a second, so it gets more trials per family and no early stop
# (on a 5,000-row table the best trial came after 20); on a large one the study stops once it stalls.
SMALL_TABLE_TRIALS_PER_FAMILY = 8
LARGE_TABLE_TRIALS = 40
FEW_ROWS = 2_000  # below: five folds, so that each validation fold still holds enough churners
MAX_THREADS = 2  # the reference machine has 2 cores; more threads only add contention
# CPU seconds of one fit with a family's default parameters and one thread: (fixed, per million cells).
FIT_COST_S: dict[str, tuple[float, float]] = {f.name: f.fit_cost_s for f in FAMILY_TABLE}
THREAD_SPEEDUP = 1.5  # what a second thread gave tree families on 38,000 x 63 (an otherwise idle machine)
# Share of the trials after each family's first that the median rule prunes after one fold (observed 0.7 on small tables).
PRUNED_SHARE = 0.7


@dataclass(frozen=True)
class SearchBudget:
    """What the AutoML search may spend; a field left None is scaled to the table by ``plan_search``."""

    n_trials: int | None = None
    timeout_s: float | None = 600.0  # wall-clock cap; with a timeout the trial count may vary between runs
    n_folds: int | None = None
    families: tuple[str, ...] | None = None
    patience: int | None = None  # stop after this many trials without a gain in the best CV AUC

    def __post_init__(self) -> None:
        unknown = set(self.families or ()) - set(FAMILIES)
        if unknown:
            raise InvalidInputError(f"unknown model families {sorted(unknown)}; choose from {FAMILIES}")
        if self.families is not None and not self.families:
            raise InvalidInputError("give at least one model family", field="families")
        if self.n_trials is not None and self.families is not None and self.n_trials < len(self.families):
            raise InvalidInputError(f"n_trials={self.n_trials} is below the number of families ({len(self.families)})")
        if self.n_trials is not None and self.n_trials < 1:
            raise InvalidInputError(f"must be at least 1, got {self.n_trials}", field="n_trials")
        if self.n_folds is not None and self.n_folds < 2:
            raise InvalidInputError(f"must be at least 2, got {self.n_folds}", field="n_folds")
        if self.patience is not None and self.patience < 1:
            raise InvalidInputError(f"must be at least 1, got {self.patience}", field="patience")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise InvalidInputError(f"must be positive (None for no cap), got {self.timeout_s}", field="timeout_s")


@dataclass(frozen=True)
class SearchPlan:
    """A budget resolved for one table: every setting concrete, and the time the search is expected to take."""

    rows: int
    features: int
    n_trials: int
    timeout_s: float | None
    n_folds: int
    families: tuple[str, ...]
    patience: int
    threads: int
    shallow_trees: bool
    expected_s: float

    def describe(self) -> str:
        cap = f", capped at {_duration(self.timeout_s)}" if self.timeout_s is not None else ""
        stop = f"stop after {self.patience} trials without gain" if self.patience < self.n_trials else "no early stop"
        return (
            f"AutoML plan for {self.rows:,} training rows x {self.features} features: {self.n_trials} trials over "
            f"{', '.join(self.families)}, {self.n_folds}-fold CV, {stop}, "
            f"{self.threads} thread{'s' if self.threads > 1 else ''} per model; expected about {_duration(self.expected_s)}{cap}"
        )


def model_threads(rows: int, features: int) -> int:
    """Threads per model fit: one on small tables (see SMALL_TABLE_CELLS), all cores otherwise."""
    return 1 if rows * features < SMALL_TABLE_CELLS else MAX_THREADS


def plan_search(budget: SearchBudget, rows: int, features: int) -> SearchPlan:
    """Fill the budget's unset fields from the table's size (training rows, features after selection)."""
    small = rows * features < SMALL_TABLE_CELLS
    families = budget.families or (ATTRIBUTABLE_FAMILIES if small else FAMILIES)
    n_trials = budget.n_trials or (SMALL_TABLE_TRIALS_PER_FAMILY * len(families) if small else LARGE_TABLE_TRIALS)
    if n_trials < len(families):
        raise InvalidInputError(f"{n_trials} trials cannot try each of the {len(families)} families {families} once", field="n_trials")
    n_folds = budget.n_folds or (5 if rows < FEW_ROWS else 3)
    threads = model_threads(rows, features)
    plan = SearchPlan(
        rows=rows,
        features=features,
        n_trials=n_trials,
        timeout_s=budget.timeout_s,
        n_folds=n_folds,
        families=families,
        patience=budget.patience or (n_trials if small else max(8, n_trials // 3)),
        threads=threads,
        shallow_trees=rows < SHALLOW_TREE_ROWS,
        expected_s=0.0,
    )
    return replace(plan, expected_s=expected_seconds(plan))


def fit_seconds(family: str, rows: int, features: int, threads: int) -> float:
    entry = family_of(family)
    fixed, per_million = entry.fit_cost_s
    seconds = fixed + per_million * rows * features / 1e6
    return seconds / THREAD_SPEEDUP if threads > 1 and entry.threaded else seconds


def expected_seconds(plan: SearchPlan) -> float:
    """Search (trials spread evenly over the families), plus selection and the final refit of up to three members."""
    fold_rows = plan.rows * (plan.n_folds - 1) // plan.n_folds
    per_fold = sum(fit_seconds(f, fold_rows, plan.features, plan.threads) for f in plan.families) / len(plan.families)
    first = len(plan.families)  # the default trials are never pruned
    later_folds = PRUNED_SHARE + (1 - PRUNED_SHARE) * plan.n_folds
    search = (first * plan.n_folds + (plan.n_trials - first) * later_folds) * per_fold
    if plan.timeout_s is not None:
        search = min(search, plan.timeout_s)
    refit = 4 * fit_seconds("lightgbm", plan.rows, plan.features, plan.threads)
    return search + refit


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


@dataclass(frozen=True)
class GateConfig:
    min_auc: float = 0.80
    max_brier: float = 0.15
    max_fairness_gap: float = 0.25  # largest allowed gap between segments, for the metrics below
    # Equal opportunity by default: segments churn at different true rates, so their positive rates
    # differ legitimately; a recall gap means churners of one segment are missed more often.
    fairness_gate_metrics: tuple[str, ...] = ("recall_gap",)
    # Whether the gaps across the table's fairness column gate the model. A protected attribute is gated;
    # a business segment (contract type, plan) is reported only unless asked, because its churn base rates
    # may differ many-fold. The platform's own table gates its segment column, as its compliance report does.
    gate_fairness: bool = True
    # Equal opportunity at per-segment thresholds (each segment's churners found at the overall recall):
    # evaluated on the holdout and reported; serving applies the one threshold, which the gate judges.
    per_segment_thresholds: bool = False
    max_auc_regression: float = 0.01  # a challenger may trail the champion by at most this much AUC
    # Calibration on the holdout (the latest rows: the current population). Observed over expected churners must
    # lie strictly within the retraining policy's band (its max_calibration_drift: the alert fires at 0.25); a
    # model outside it would raise the calibration alert against itself as soon as its outcomes arrive.
    max_calibration_drift: float | None = 0.25
    # Logistic recalibration slope (1: the scores spread as far as the outcomes do): |slope - 1| at most this. None: not gated.
    max_calibration_slope_drift: float | None = None


@dataclass(frozen=True)
class BusinessConfig:
    """Economics of a retention campaign."""

    contact_cost: float = 1_000.0  # cost of one retention play (CSM time plus the offer)
    save_rate: float = 0.25  # share of contacted churners that stay
    months_saved: float = 6.0  # revenue months kept when a churner is saved
    max_contact_share: float = 0.25  # customer-success capacity: at most this share of customers per campaign

    def __post_init__(self) -> None:
        if not self.contact_cost > 0:
            raise InvalidInputError(f"must be positive, got {self.contact_cost}", field="contact_cost")
        if not 0 < self.save_rate <= 1:
            raise InvalidInputError(f"must be in (0, 1], got {self.save_rate}", field="save_rate")
        if not self.months_saved > 0:
            raise InvalidInputError(f"must be positive, got {self.months_saved}", field="months_saved")
        if not 0 < self.max_contact_share <= 1:
            raise InvalidInputError(f"must be in (0, 1], got {self.max_contact_share}", field="max_contact_share")

    @property
    def break_even_revenue(self) -> float:
        """Monthly revenue above which contacting a certain churner pays for itself."""
        return self.contact_cost / (self.save_rate * self.months_saved)


@dataclass(frozen=True)
class TrainingConfig:
    seed: int = 42
    budget: SearchBudget = field(default_factory=SearchBudget)
    holdout_fraction: float = 0.25
    max_features: int = 60
    top_k: int = 4
    gates: GateConfig = field(default_factory=GateConfig)
    business: BusinessConfig = field(default_factory=BusinessConfig)
    window: TrainingWindow = field(default_factory=TrainingWindow)
