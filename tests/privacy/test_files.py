"""Files under the data directory lose one customer: Parquet (streamed, row groups kept), CSV, JSON, logs, HTML."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churnops.privacy.files import scrub_tree


def test_every_kind_of_file_loses_the_customer_and_keeps_everyone_else(tmp_path: Path) -> None:
    x, y = 100015, 100016
    (tmp_path / "raw" / "customers").mkdir(parents=True)
    table = pa.table({"customer_id": pa.array([y, x, y, x], pa.int64()), "mrr": [1.0, 2.0, 3.0, 4.0]})
    pq.write_table(table, tmp_path / "raw" / "customers" / "part-0.parquet", row_group_size=2, compression="zstd")
    ruled_out = tmp_path / "raw" / "other.parquet"
    pq.write_table(pa.table({"customer_id": pa.array([1, 2], pa.int64())}), ruled_out)
    (tmp_path / "labels").mkdir()
    pd.DataFrame({"customer_id": [x, y], "churned_30d": [1, 0]}).to_csv(tmp_path / "labels" / "l.csv", index=False)
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "perf.json").write_text(json.dumps({"join": {"unknown_customers": [x]}, "auc": 0.8}))
    (tmp_path / "reports" / "predictor.log").write_text(f"ready\nonline: customer {x} high\n")
    (tmp_path / "reports" / "r.html").write_text(f"<td>{x}</td>")
    (tmp_path / "reports" / "clean.html").write_text(f"<td>{y}</td>")
    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "predictions.jsonl").write_text(json.dumps({"customer_id": x}) + "\n")
    before = ruled_out.stat().st_mtime_ns

    changes = {c.path.relative_to(tmp_path).as_posix(): (c.action, c.removed) for c in scrub_tree(tmp_path, x, frozenset({"audit"}))}

    assert changes == {
        "raw/customers/part-0.parquet": ("rows", 2),
        "labels/l.csv": ("rows", 1),
        "reports/perf.json": ("json", 1),
        "reports/predictor.log": ("lines", 1),
        "reports/r.html": ("delete", 1),
    }
    rewritten = pq.ParquetFile(tmp_path / "raw" / "customers" / "part-0.parquet")
    assert rewritten.read().to_pydict() == {"customer_id": [y, y], "mrr": [1.0, 3.0]}
    assert rewritten.metadata.num_row_groups == 2 and rewritten.metadata.row_group(0).column(0).compression == "ZSTD"
    assert ruled_out.stat().st_mtime_ns == before  # statistics ruled the customer out: not rewritten
    assert pd.read_csv(tmp_path / "labels" / "l.csv")["customer_id"].tolist() == [y]
    assert json.loads((tmp_path / "reports" / "perf.json").read_text()) == {"join": {"unknown_customers": []}, "auc": 0.8}
    assert (tmp_path / "reports" / "predictor.log").read_text() == "ready\n"
    assert not (tmp_path / "reports" / "r.html").exists() and (tmp_path / "reports" / "clean.html").exists()
    assert str(x) in (tmp_path / "audit" / "predictions.jsonl").read_text()  # skipped folders are left alone
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temporary file left
    assert scrub_tree(tmp_path, x, frozenset({"audit"})) == []  # a second pass finds nothing
