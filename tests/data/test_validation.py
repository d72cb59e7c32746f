from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from churnops.data.raw import read_raw
from churnops.data.validation import ValidationRun, raw_suites, validate
from churnops.errors import DataValidationError
from churnops.features.catalog import DOMAINS
from churnops.features.validation import feature_suite
from churnops.layout import Layout


def test_generated_data_passes_every_suite(small_layout: Layout) -> None:
    run = ValidationRun()
    for table, expectations in raw_suites().items():
        run.reports.append(validate(read_raw(small_layout.raw, table), table, expectations))
    for domain in DOMAINS:
        run.reports.append(validate(pd.read_parquet(small_layout.features / f"{domain}.parquet"), domain, feature_suite(domain)))
    assert run.success, run.render()
    assert run.pass_rate == 1.0
    assert run.evaluated > 250


def test_broken_raw_data_fails_with_readable_report(small_layout: Layout) -> None:
    customers = read_raw(small_layout.raw, "customers")
    customers.loc[0:9, "segment"] = "government"
    customers.loc[3, "customer_id"] = int(customers["customer_id"].iloc[4])
    customers.loc[5, "discount_pct"] = 140.0
    report = validate(customers, "customers", raw_suites()["customers"])
    run = ValidationRun([report])
    assert not run.success
    assert {f.column for f in report.failures} == {"segment", "customer_id", "discount_pct"}
    assert 0 < run.pass_rate < 1
    with pytest.raises(DataValidationError) as err:
        run.raise_for_failures()
    text = str(err.value)
    assert "[FAIL] customers" in text
    assert "column 'segment'" in text and "'government'" in text
    assert "column 'discount_pct'" in text


def test_feature_schema_drift_is_caught(small_layout: Layout) -> None:
    usage = pd.read_parquet(small_layout.features / "usage.parquet").drop(columns=["logins_mean_7d"]).assign(surprise=1)
    report = validate(usage, "usage", feature_suite("usage"))
    kinds = {f.expectation for f in report.failures}
    assert "expect_table_columns_to_match_set" in kinds


def test_distribution_bounds_catch_a_broken_population(small_layout: Layout) -> None:
    labels = read_raw(small_layout.raw, "labels").assign(churned_30d=1)
    report = validate(labels, "labels", raw_suites()["labels"])
    assert [f.expectation for f in report.failures] == ["expect_column_mean_to_be_between"]


def test_report_is_written_as_json(small_layout: Layout, tmp_path: Path) -> None:
    run = ValidationRun([validate(read_raw(small_layout.raw, "nps"), "nps", raw_suites()["nps"])])
    run.write(tmp_path / "r.json")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["pass_rate"] == 1.0 and doc["suites"][0]["suite"] == "nps"
