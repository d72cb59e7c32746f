"""The hash-chained audit trail: tampering of every kind is detected; crashes leave a verifiable log."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psycopg
import pytest

from churnops.errors import IntegrityError
from churnops.serving.audit import PostgresAuditSink, canonical, head_path_for, read_head, verify_file, verify_postgres
from tests.support.audit import audit_keys, file_sink, signer


def _entries(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"request_id": f"r{i}", "score": i / 100, "caller": "t", "reasons": [["tenure_days", -0.1]]} for i in range(start, start + n)]


@pytest.fixture
def log(tmp_path: Path) -> Path:
    path = tmp_path / "audit" / "predictions.jsonl"
    sink = file_sink(path, fsync="always")
    for i in range(4):
        sink.append(_entries(3, i * 3))
    sink.close()
    return path


def _rewrite(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def test_intact_log_verifies(log: Path) -> None:
    result = verify_file(log, audit_keys())
    assert result.ok and result.records == 12 and result.signatures == 4
    head = read_head(head_path_for(log))
    assert head is not None and head.seq == 12 and head.sig is not None


def test_edited_record_is_detected(log: Path) -> None:
    lines = log.read_text().splitlines()
    rec = json.loads(lines[5])
    rec["score"] = 0.99
    _rewrite(log, [*lines[:5], canonical(rec).decode(), *lines[6:]])  # as the writer would write it: the hash catches it
    result = verify_file(log, audit_keys())
    assert not result.ok and "seq 6" in result.problems[0]
    _rewrite(log, [*lines[:5], json.dumps(json.loads(lines[5])), *lines[6:]])  # the same record, other bytes
    result = verify_file(log, audit_keys())
    assert not result.ok and "line 6: not the canonical serialisation" in result.problems[0]


def test_deleted_record_is_detected(log: Path) -> None:
    lines = log.read_text().splitlines()
    _rewrite(log, lines[:4] + lines[5:])
    assert not verify_file(log, audit_keys()).ok


def test_reordered_records_are_detected(log: Path) -> None:
    lines = log.read_text().splitlines()
    lines[2], lines[3] = lines[3], lines[2]
    _rewrite(log, lines)
    assert not verify_file(log, audit_keys()).ok


def test_truncation_is_detected_by_the_head(log: Path) -> None:
    lines = log.read_text().splitlines()
    _rewrite(log, lines[:9])  # a clean cut at a batch boundary: the chain and its signatures are still valid
    result = verify_file(log, audit_keys())
    assert not result.ok and "truncated" in result.problems[0]


def test_rewritten_chain_is_detected_by_the_head(log: Path, tmp_path: Path) -> None:
    """A writer with the key rebuilds the whole chain with an edited record; only the head kept outside tells."""
    forged = tmp_path / "forged.jsonl"
    sink = file_sink(forged, fsync="never")
    records = [json.loads(line) for line in log.read_text().splitlines()]
    bodies = [{k: v for k, v in r.items() if k not in ("seq", "prev", "hash", "kid", "sig")} for r in records]
    bodies[2]["score"] = 0.0
    sink.append(bodies)
    sink.close()
    log.write_text(forged.read_text())
    result = verify_file(log, audit_keys())
    assert not result.ok and "head" in result.problems[0]


def test_refuses_to_extend_a_log_that_lost_records(log: Path) -> None:
    lines = log.read_text().splitlines()
    _rewrite(log, lines[:6])
    with pytest.raises(IntegrityError, match="head says 12"):
        file_sink(log)


CRASHER = """
import os, sys
from pathlib import Path
from churnops.serving.audit import canonical, seal
from tests.support.audit import file_sink
sink = file_sink(Path(sys.argv[1]), fsync="always")
sink.append([{"request_id": "ok", "score": 0.1}])
sealed, _ = seal([{"request_id": "torn", "score": 0.2}], sink.head, sink.signer)
data = canonical(sealed[0]) + b"\\n"
os.write(sink._fd, data[: len(data) // 2])   # the process dies halfway through a write
os._exit(9)
"""


def test_crash_mid_append_leaves_a_verifiable_log(tmp_path: Path) -> None:
    path = tmp_path / "predictions.jsonl"
    proc = subprocess.run([sys.executable, "-c", CRASHER, str(path)], capture_output=True, text=True, check=False)
    assert proc.returncode == 9, proc.stderr
    assert not path.read_bytes().endswith(b"\n")  # a torn last record
    sink = file_sink(path)  # reopening moves the torn bytes aside
    sink.append([{"request_id": "after", "score": 0.3}])
    sink.close()
    result = verify_file(path, audit_keys())
    assert result.ok and result.records == 2
    assert (tmp_path / "predictions.jsonl.torn").stat().st_size > 10  # kept aside for inspection, not deleted
    assert [json.loads(line)["request_id"] for line in path.read_text().splitlines()] == ["ok", "after"]


def test_concurrent_appends_form_one_chain(tmp_path: Path) -> None:
    sink = file_sink(tmp_path / "p.jsonl", fsync="never")
    threads = [threading.Thread(target=lambda i=i: [sink.append(_entries(2, i * 100 + j)) for j in range(25)]) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sink.close()
    result = verify_file(tmp_path / "p.jsonl", audit_keys())
    assert result.ok and result.records == 200 and result.signatures == 100


def test_postgres_sink_chains_across_writers_and_detects_tampering(pg_dsn: str) -> None:
    dsn = pg_dsn
    key = signer(Path("/nonexistent/audit/log"))
    sinks = [PostgresAuditSink(dsn, key), PostgresAuditSink(dsn, key)]  # two replicas

    def write(sink: PostgresAuditSink, start: int) -> None:
        for j in range(10):
            sink.append(_entries(3, start + j * 3))

    threads = [threading.Thread(target=write, args=(s, i * 1000)) for i, s in enumerate(sinks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in sinks:
        s.close()
    result = verify_postgres(dsn, audit_keys())
    assert result.ok and result.records == 60 and result.signatures == 20

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DELETE FROM churnops_audit_log WHERE seq > 51")  # at the end of a batch: signed
    truncated = verify_postgres(dsn, audit_keys())
    assert not truncated.ok and "truncated" in truncated.problems[0]

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("UPDATE churnops_audit_log SET record = jsonb_set(record, '{score}', '0.5') WHERE seq = 17")
    tampered = verify_postgres(dsn, audit_keys())
    assert not tampered.ok and "seq 17" in tampered.problems[0]


def test_fsync_policies_all_produce_valid_logs(tmp_path: Path) -> None:
    for policy in ("always", "interval", "never"):
        path = tmp_path / f"{policy}.jsonl"
        sink = file_sink(path, fsync=policy)
        sink.append(_entries(5))
        sink.close()
        assert verify_file(path, audit_keys()).ok
        assert path.stat().st_size > 0
