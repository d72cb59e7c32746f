"""A process that records predictions until it is killed: the subject of the crash test.

``python predlog_writer.py parquet <dir>`` or ``postgres <dsn>``. It records
customers 0, 1, 2, ... in order and, every 200 records, prints
``<accepted> <written>`` where ``written`` is the log's own count of records
in completed flushes. The test kills it with SIGKILL and reads the log back.
"""

from __future__ import annotations

import sys
import time

from prometheus_client import CollectorRegistry

from churnops.monitoring.predlog.parquet import ParquetStore
from churnops.monitoring.predlog.postgres import PostgresStore
from churnops.monitoring.predlog.records import LogStore
from churnops.monitoring.predlog.writer import PredictionLog
from tests.monitoring.predlog_fixtures import LAYOUT


def main(sink: str, target: str) -> None:
    store: LogStore = ParquetStore(target) if sink == "parquet" else PostgresStore(target)
    registry = CollectorRegistry()
    plog = PredictionLog(store, registry, flush_interval_s=0.05, flush_records=10**9)
    i = 0
    while True:
        plog.record(
            model="churn",
            version="1",
            layout=LAYOUT,
            customer_id=i,
            score=0.5,
            risk_band="low",
            request_id=f"req-{i}",
            values=(float(i), 1.0, None, "growth", "smb"),
        )
        i += 1
        if i % 200 == 0:
            written = registry.get_sample_value("churnops_prediction_log_records_total", {"sink": sink})
            print(i, int(written or 0), flush=True)
            time.sleep(0.002)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
