"""``churnops monitor``: drift of a logged window, delayed-label performance, privacy erasure.

Predictions are written to a real Parquet prediction log (by the real
writer, or by a real predictor for erasure); the registry is a real MLflow
store whose versions carry reference profiles. Findings exit 0; bad input
ends with its exit code and a message naming the problem.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from churnops.cli import main
from churnops.data.schema import ENTITY
from churnops.monitoring.predlog.parquet import ParquetStore
from churnops.monitoring.predlog.postgres import PostgresStore
from churnops.monitoring.predlog.records import FeatureLayout, PredictionBatch, SegmentKey, to_table
from churnops.reports.drift import EVIDENTLY_NAME, HTML_NAME, JSON_NAME, METRICS_NAME
from churnops.serving.scoring import risk_bands
from tests.monitoring.monitor_fixtures import (
    THRESHOLD,
    Monitored,
    Predictor,
    Traffic,
    monitored_fixture,  # noqa: F401 - fixtures used by name
    predictor_fixture,  # noqa: F401
    send,
    served_data_fixture,  # noqa: F401
    traffic_fixture,  # noqa: F401
    write_predictions,
)
from tests.support import groups
from tests.support.waiting import poll

pytestmark = groups.MONITORED

T = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)
AROUND_T = ["--since", "2026-05-01T11:00:00Z", "--until", "2026-05-01T13:00:00Z"]
EVER = (dt.datetime(2000, 1, 1, tzinfo=dt.UTC), dt.datetime(2100, 1, 1, tzinfo=dt.UTC))


def monitor(data_dir: Path, monitored: Monitored, *args: str) -> int:
    return main(["--data-dir", str(data_dir), "monitor", *args, "--tracking-uri", monitored.cfg.tracking_uri])


def champion_log(monitored: Monitored, data_dir: Path, rows: pd.DataFrame, at: dt.datetime = T, **kw: object) -> np.ndarray:
    model = monitored.models[monitored.champion]
    return write_predictions(data_dir / "predictions", monitored.model_name, monitored.champion, model, rows, at.timestamp(), **kw)  # type: ignore[arg-type]


# --- drift --------------------------------------------------------------------------------------------------


def test_a_window_without_drift_gets_every_report_and_a_clean_verdict(
    monitored: Monitored, traffic: Traffic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    champion_log(monitored, tmp_path, traffic.normal.head(800))
    out = tmp_path / "report"
    assert monitor(tmp_path, monitored, "drift", *AROUND_T, "--model", "champion", "--out", str(out)) == 0
    printed = capsys.readouterr().out
    assert f"{monitored.model_name} v{monitored.champion}, 800 predictions" in printed
    assert "no drift" in printed and "DRIFT DETECTED" not in printed
    doc = json.loads((out / JSON_NAME).read_text())
    assert (doc["model_version"], doc["window"]["rows"], doc["drift_detected"]) == (monitored.champion, 800, False)
    assert doc["drifted_features"] == []
    features = monitored.models[monitored.champion].feature_names
    assert sorted(f["feature"] for f in doc["features"]) == sorted(features)
    html = (out / HTML_NAME).read_text()
    assert html.count('alt="drift plot"') == len(features) + 1  # the score and every feature
    evidently_page = (out / EVIDENTLY_NAME).read_text()
    assert "Drifted Columns" in evidently_page and all(name in evidently_page for name in features)
    prom = (out / METRICS_NAME).read_text()
    assert f'churnops_drift_detected{{model="{monitored.model_name}",version="{monitored.champion}"}} 0.0' in prom
    assert f'churnops_drift_window_size{{model="{monitored.model_name}",version="{monitored.champion}"}} 800.0' in prom
    for path in (out / JSON_NAME, out / HTML_NAME, out / EVIDENTLY_NAME, out / METRICS_NAME):
        assert str(path) in printed


def test_a_drifted_window_names_its_drifted_features_and_still_exits_0(
    monitored: Monitored, traffic: Traffic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    champion_log(monitored, tmp_path, traffic.drifted.head(800))
    # default report directory under the data dir, Evidently skipped
    assert monitor(tmp_path, monitored, "drift", "--window", "2h", "--until", "2026-05-01T13:00:00+00:00", "--no-evidently") == 0
    printed = capsys.readouterr().out
    reports = list((tmp_path / "reports" / "monitoring").glob(f"drift-v{monitored.champion}-20260501T130000Z"))
    assert len(reports) == 1 and not (reports[0] / EVIDENTLY_NAME).exists()
    doc = json.loads((reports[0] / JSON_NAME).read_text())
    assert doc["drift_detected"] is True and "DRIFT DETECTED" in printed
    drifted = doc["drifted_features"]
    assert len(drifted) / doc["tested"] >= doc["policy"]["drifted_share"]
    listed = re.findall(r"^    (\w+): ", printed, flags=re.MULTILINE)
    by_psi = sorted((f for f in doc["features"] if f["drifted"]), key=lambda f: -f["psi"])
    assert listed == [f["feature"] for f in by_psi][: len(listed)] and len(listed) == min(15, len(drifted))
    for f in by_psi[: len(listed)]:
        assert f"{f['feature']}: {f['reason']}" in printed
    # the usage features the covariate preset moves are among them
    assert {"logins_mean_30d", "tickets_30d"} & set(drifted), drifted


def test_the_cluster_log_in_postgresql_gives_the_same_report_and_erases_the_same_way(
    monitored: Monitored, traffic: Traffic, tmp_path: Path, pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = traffic.drifted.head(400)
    model = monitored.models[monitored.champion]
    write_predictions(PostgresStore(pg_dsn), monitored.model_name, monitored.champion, model, rows, T.timestamp())
    champion_log(monitored, tmp_path, rows)
    docs = []
    for name, source in (("pg", ["--prediction-log-dsn", pg_dsn]), ("parquet", [])):
        assert monitor(tmp_path, monitored, "drift", *AROUND_T, *source, "--no-evidently", "--out", str(tmp_path / name)) == 0
        doc = json.loads((tmp_path / name / JSON_NAME).read_text())
        doc.pop("generated_at")
        docs.append(doc)
    assert docs[0] == docs[1] and docs[0]["drift_detected"] is True
    who = int(rows[ENTITY].iloc[0])
    expected = int((rows[ENTITY] == who).sum())
    capsys.readouterr()
    erase = ["monitor", "erase", "--customer", str(who), "--prediction-log-dsn", pg_dsn, "--settle-s", "0"]
    assert main(["--data-dir", str(tmp_path), *erase]) == 0
    assert receipt_of(capsys.readouterr().out)["erased"]["prediction_log"] == expected
    store = PostgresStore(pg_dsn)
    try:
        left = store.read_window(*EVER, features=[])
    finally:
        store.close()
    assert len(left) == len(rows) - expected and who not in set(left["customer_id"])


def test_an_empty_window_says_what_the_log_holds(
    monitored: Monitored, traffic: Traffic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    champion_log(monitored, tmp_path, traffic.normal.head(50))
    late = ["--since", "2026-05-02T00:00:00Z", "--until", "2026-05-03T00:00:00Z"]
    assert monitor(tmp_path, monitored, "drift", *late) == 3
    err = capsys.readouterr().err
    assert f"no prediction of {monitored.model_name} v{monitored.champion}" in err
    assert "the log holds no prediction of this model at all in that window" in err
    # the challenger's window is empty while the champion's is not: the message lists what is there
    assert monitor(tmp_path, monitored, "drift", *AROUND_T, "--model", "challenger") == 3
    assert f"the log holds v{monitored.champion} (50) in that window" in capsys.readouterr().err


@pytest.mark.parametrize("change", ["extra", "missing"])
def test_a_log_whose_features_differ_from_the_reference_profile_is_refused(
    change: str, monitored: Monitored, traffic: Traffic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = monitored.models[monitored.champion]
    features = list(model.feature_names)
    rows = traffic.normal.head(300).copy()
    if change == "extra":
        rows["loyalty_points"] = 1.0
        features.append("loyalty_points")
        expected = "records feature(s) ['loyalty_points'] that its reference profile lacks"
    else:
        features.remove("tenure_days")
        expected = "feature(s) ['tenure_days'] of the reference profile"
    layout = FeatureLayout(tuple(features), frozenset(model.categorical))
    p = model.predict_proba(traffic.normal.head(300)[list(model.feature_names)])
    batch = PredictionBatch(
        monitored.model_name,
        monitored.champion,
        layout,
        rows[ENTITY].tolist(),
        p,
        risk_bands(p, THRESHOLD),
        [f"r{i}" for i in range(len(rows))],
        rows[features],
        T.timestamp(),
    )
    ParquetStore(tmp_path / "predictions").write(SegmentKey(batch.model, batch.version, layout, batch.day), to_table([batch]))
    assert monitor(tmp_path, monitored, "drift", *AROUND_T) == 2
    assert expected in capsys.readouterr().err


def test_nan_scores_in_the_log_are_refused_with_the_request_that_holds_them(
    monitored: Monitored, traffic: Traffic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = monitored.models[monitored.champion]
    rows = traffic.normal.head(300)
    layout = FeatureLayout(tuple(model.feature_names), frozenset(model.categorical))
    p = model.predict_proba(rows[list(model.feature_names)])
    batch = PredictionBatch(
        monitored.model_name,
        monitored.champion,
        layout,
        rows[ENTITY].tolist(),
        p,
        risk_bands(p, THRESHOLD),
        [f"req-{i}" for i in range(len(rows))],
        rows[list(model.feature_names)],
        T.timestamp(),
    )
    table = to_table([batch])
    broken = p.copy()
    broken[7] = np.nan  # a value the writer would never accept, written behind its back
    table = table.set_column(table.schema.get_field_index("score"), table.schema.field("score"), pa.array(broken, pa.float64()))
    ParquetStore(tmp_path / "predictions").write(SegmentKey(batch.model, batch.version, layout, batch.day), table)
    assert monitor(tmp_path, monitored, "drift", *AROUND_T) == 2
    err = capsys.readouterr().err
    assert "prediction_log.score: 1 logged score(s) are NaN or outside [0, 1], first nan in request req-7" in err


@pytest.mark.parametrize(
    ("args", "field", "message"),
    [
        (["--window", "5x"], "--window", "expected a number and a unit"),
        (["--window", "0h"], "--window", "must be longer than zero"),
        (["--since", "yesterday"], "--since", "expected an ISO 8601 time"),
        (["--since", "2026-05-02", "--until", "2026-05-01"], "--until", "before it starts"),
        (["--window", "1h", "--since", "2026-05-01", "--until", "2026-05-02"], "--window", "at most one of --since and --until"),
    ],
)
def test_bad_window_options_name_the_option(
    args: list[str], field: str, message: str, monitored: Monitored, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert monitor(tmp_path, monitored, "drift", *args) == 2
    err = capsys.readouterr().err
    assert f"{field}: " in err and message in err


# --- performance with delayed labels --------------------------------------------------------------------------

SCORES = [0.9, 0.8, 0.35, 0.2, 0.95, 0.85]  # customers 1..6; 5 and 6 have no outcome yet
OUTCOMES = {1: 1, 2: 0, 3: 1, 4: 0}
WINDOW_START = "2026-04-01T00:00:00Z"  # the observation window [Apr 1, May 1) holds predictions made on Apr 10


def labelled_log(monitored: Monitored, traffic: Traffic, tmp_path: Path) -> None:
    rows = traffic.normal.head(len(SCORES)).copy()
    rows[ENTITY] = np.arange(1, len(SCORES) + 1)
    champion_log(monitored, tmp_path, rows, dt.datetime(2026, 4, 10, 9, 0, tzinfo=dt.UTC), scores=SCORES)


def labels_file(path: Path, outcomes: dict[int, int], extra: dict[int, int] | None = None) -> Path:
    """CSV or Parquet by the name's suffix, like a labels feed."""
    all_outcomes = {**outcomes, **(extra or {})}
    frame = pd.DataFrame(
        {
            "customer_id": list(all_outcomes),
            "event_timestamp": [WINDOW_START] * len(all_outcomes),
            "churned_30d": list(all_outcomes.values()),
        }
    )
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    else:
        frame.to_csv(path, index=False)
    return path


def performance(monitored: Monitored, tmp_path: Path, labels: Path, out: Path, *extra: str) -> int:
    window = ["--since", "2026-04-01T00:00:00Z", "--until", "2026-05-01T00:00:00Z"]
    return monitor(tmp_path, monitored, "performance", "--labels", str(labels), *window, "--out", str(out), *extra)


def measured(doc: dict[str, object], metric: str, source: str = "measured") -> dict[str, object]:
    (figure,) = [
        f
        for f in doc["performance"]["figures"]  # type: ignore[index]
        if f["metric"] == metric and f["source"] == source and f["segment"] == "all" and f["period"] is None
    ]
    return figure  # type: ignore[no-any-return]


def test_a_late_label_gives_the_right_auc_and_pending_predictions_are_never_negatives(
    monitored: Monitored, traffic: Traffic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labelled_log(monitored, traffic, tmp_path)
    # customer 4's outcome has not arrived yet: churners 1 (0.9) and 3 (0.35) against the stayer 2 (0.8) -> AUC 1/2
    early = labels_file(tmp_path / "early.csv", {k: v for k, v in OUTCOMES.items() if k != 4})
    assert performance(monitored, tmp_path, early, tmp_path / "early") == 0
    doc = json.loads((tmp_path / "early" / "performance_report.json").read_text())
    assert measured(doc, "auc")["value"] == pytest.approx(0.5) and measured(doc, "auc")["rows"] == 3
    capsys.readouterr()

    # the late label (customer 4 stayed, score 0.2) arrives: pairs 0.9>0.8, 0.9>0.2, 0.35<0.8, 0.35>0.2 -> AUC 3/4
    late = labels_file(tmp_path / "late.parquet", OUTCOMES)
    assert performance(monitored, tmp_path, late, tmp_path / "late") == 0
    doc = json.loads((tmp_path / "late" / "performance_report.json").read_text())
    auc = measured(doc, "auc")
    assert (auc["value"], auc["rows"], auc["source"]) == (pytest.approx(0.75), 4, "measured")
    # Had customers 5 and 6 (scores 0.95 and 0.85, no outcome yet) been counted as stayers, the AUC would be 4/8.
    assert measured(doc, "precision")["value"] == pytest.approx(2 / 3)  # flagged at 0.3: customers 1, 2, 3; churners 1, 3
    assert measured(doc, "recall")["value"] == pytest.approx(1.0)
    assert measured(doc, "brier")["value"] == pytest.approx((0.1**2 + 0.8**2 + 0.65**2 + 0.2**2) / 4)
    (coverage,) = [c for c in doc["performance"]["coverage"] if c["segment"] == "all"]
    assert (coverage["predictions"], coverage["labelled"], coverage["pending"]) == (6, 4, 2)
    assert coverage["coverage"] == pytest.approx(4 / 6)
    # CBPE estimates: over every prediction, and over the pending ones alone, always marked as estimated
    assert measured(doc, "auc", "estimated")["rows"] == 6
    (pending,) = doc["pending_estimates"]
    assert (pending["pending"], pending["source"]) == (2, "estimated")
    assert pending["metrics"]["brier"]["value"] == pytest.approx((0.95 * 0.05 + 0.85 * 0.15) / 2)
    churn = {(f["source"]): f["value"] for f in doc["business"]["figures"] if f["metric"] == "churn_rate" and f["segment"] == "all"}
    assert churn == {"measured": pytest.approx(0.5), "estimated": pytest.approx(np.mean(SCORES))}
    assert doc["thresholds"] == {monitored.champion: THRESHOLD}
    printed = capsys.readouterr().out
    assert "4 labelled (66.7% coverage), 2 pending (never counted as negatives)" in printed
    assert re.search(r"auc\s+0\.750 \[measured\]\s+\d\.\d{3} \[estimated, CBPE\]", printed), printed
    assert "churn rate 50.0% [measured]" in printed
    assert (tmp_path / "late" / "performance.prom").read_text().count('source="measured"') >= 5


def test_a_label_for_an_unknown_customer_is_reported_and_fails_the_check(
    monitored: Monitored, traffic: Traffic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labelled_log(monitored, traffic, tmp_path)
    labels = labels_file(tmp_path / "labels.csv", OUTCOMES, extra={424242: 1})
    assert performance(monitored, tmp_path, labels, tmp_path / "out") == 4
    captured = capsys.readouterr()
    assert "1 label(s) name customers that no prediction in the window mentions (first: 424242)" in captured.err
    assert "424242" in captured.out  # the summary's notes say it too
    doc = json.loads((tmp_path / "out" / "performance_report.json").read_text())  # the report is written all the same
    assert doc["join"]["unknown_customers"] == [424242] and measured(doc, "auc")["value"] == pytest.approx(0.75)
    # accepted on request
    assert performance(monitored, tmp_path, labels, tmp_path / "out2", "--allow-unknown-customers") == 0


def test_a_labels_file_without_the_outcome_column_is_refused(
    monitored: Monitored, traffic: Traffic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labelled_log(monitored, traffic, tmp_path)
    bad = tmp_path / "labels.csv"
    pd.DataFrame({"customer_id": [1], "event_timestamp": [WINDOW_START], "churned": [1]}).to_csv(bad, index=False)
    assert performance(monitored, tmp_path, bad, tmp_path / "out") == 2
    assert "required columns are missing: ['churned_30d']" in capsys.readouterr().err
    missing = tmp_path / "nowhere.csv"
    assert performance(monitored, tmp_path, missing, tmp_path / "out") == 2
    assert "nowhere.csv: file not found" in capsys.readouterr().err


# --- privacy erasure --------------------------------------------------------------------------------------------


def receipt_of(printed: str) -> dict[str, Any]:
    """The erasure receipt the command prints (JSON, then the line naming the chain it went to)."""
    doc: dict[str, Any] = json.loads(printed[: printed.rindex("\nreceipt ")])
    return doc


def test_erasure_removes_a_customers_records_and_the_audit_trail_still_verifies(
    predictor: Predictor, traffic: Traffic, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    who, other = 990_000_001, 990_000_002
    rows = traffic.normal.head(5)
    sent = send(predictor, rows, ids=[who, who, other, who, other], per_request=2)
    assert len(sent) == 5

    def logged() -> list[str] | None:
        frame = ParquetStore(predictor.log_dir).read_window(*EVER, features=[])
        mine = frame[frame["customer_id"].isin([who, other])]
        return sorted(mine["request_id"]) if len(mine) == 5 else None

    before = poll("the predictor's log to hold the five predictions", logged)
    assert before == sorted(p["request_id"] for p in sent)
    args = ["--data-dir", str(tmp_path), "monitor", "erase", "--customer", str(who), "--prediction-log", str(predictor.log_dir)]
    assert main([*args, "--settle-s", "1"]) == 0
    assert receipt_of(capsys.readouterr().out)["erased"]["prediction_log"] == 3
    after = ParquetStore(predictor.log_dir).read_window(*EVER, features=[])
    assert who not in set(after["customer_id"].dropna()) and int((after["customer_id"] == other).sum()) == 2
    assert main(["--data-dir", str(tmp_path), "audit", "verify", "--log", str(predictor.server.audit_log)]) == 0
    assert "audit trail OK" in capsys.readouterr().out
    # asked again, there is nothing left to erase
    assert main([*args, "--settle-s", "0"]) == 0
    again = receipt_of(capsys.readouterr().out)
    assert again["erased"]["prediction_log"] == 0 and again["suppressed"] == "already listed"


def test_erasure_also_clears_the_customers_labels(
    monitored: Monitored, traffic: Traffic, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    journal = tmp_path / "outside" / "erasure-journal.jsonl"  # where a restore finds the erasures to apply again
    monkeypatch.setenv("CHURNOPS_ERASURE_JOURNAL", str(journal))
    labelled_log(monitored, traffic, tmp_path)
    labels_dir = tmp_path / "labels"
    labels_dir.mkdir()
    labels_file(labels_dir / "april.csv", OUTCOMES)
    assert main(["--data-dir", str(tmp_path), "monitor", "erase", "--customer", "3", "--settle-s", "0"]) == 0
    assert 3 not in set(ParquetStore(tmp_path / "predictions").read_window(*EVER)["customer_id"])
    assert sorted(pd.read_csv(labels_dir / "april.csv")["customer_id"]) == [1, 2, 4]
    assert len(journal.read_text().splitlines()) == 1 and '"3"' not in journal.read_text()  # a token, never the id
    assert main(["--data-dir", str(tmp_path), "monitor", "erase", "--customer", "-5"]) == 2
