"""`churnops backup` of a data directory while it serves, and `churnops restore` of it elsewhere.

The snapshot is taken while a predictor answers honest traffic, so its audit writer, its prediction-log writer
and its SQLite readers are all live; the rollout runner is not started here (a canary needs minutes of
traffic), its lock is exercised by `test_backup_waits_for_a_deployment_step`.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from churnops.backup import snapshot
from churnops.backup.manifest import MANIFEST
from churnops.backup.restore import restore
from churnops.backup.snapshot import last_line_end, signed, take
from churnops.errors import ConflictError, IntegrityError, InvalidInputError
from churnops.features import steps as foundation
from churnops.layout import Layout
from churnops.serving.audit import FileAuditSink, verify_file
from churnops.serving.audit_keys import generate, load_public_keys, load_signer
from tests.support.serving import Server, start_server

CHURNOPS = str(Path(sys.executable).parent / "churnops")


def churnops(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CHURNOPS, *args], check=False, capture_output=True, text=True, timeout=300)


def scores(server: Server, customers: list[int]) -> list[tuple[str, float]]:
    with server.client() as c:
        r = c.post("/v1/models/champion:predict", json={"instances": [{"customer_id": cid} for cid in customers]})
    assert r.status_code == 200, r.text
    return [(p["model_version"], p["churn_probability"]) for p in r.json()["predictions"]]


def traffic(server: Server, customers: list[int], stop: threading.Event, sent: list[int]) -> None:
    """Single-customer requests, one after the other, until told to stop (bounded in count too)."""
    with server.client() as c:
        for i in range(20_000):
            if stop.is_set():
                return
            r = c.post("/v1/models/champion:predict", json={"instances": [{"customer_id": customers[i % len(customers)]}]})
            assert r.status_code == 200, r.text
            sent.append(i)


@pytest.mark.timeout(300)
def test_a_snapshot_taken_while_serving_restores_elsewhere_and_serves_the_same_champion(
    served_data: Layout, audit_key_dir: Path, tmp_path: Path
) -> None:
    source = Layout(tmp_path / "source" / "data")
    shutil.copytree(served_data.data_dir, source.data_dir)
    customers = foundation.active_customers(source, 20)
    # the server's audit log is the data directory's own (audit/predictions.jsonl), as in embedded mode
    server = start_server(source, None, ["champion"], source.data_dir, ["--prediction-log-flush-s", "0.2"])
    try:
        before = scores(server, customers[:5])
        stop, sent = threading.Event(), list[int]()
        writer = threading.Thread(target=traffic, args=(server, customers, stop, sent))
        writer.start()
        try:
            while len(sent) < 200:  # audit records and prediction-log segments are being appended
                assert writer.is_alive()
                time.sleep(0.05)
            sent_before = len(sent)
            done = churnops("--data-dir", str(source.data_dir), "backup", "--out", str(tmp_path / "snap"), "--quiet")
            sent_during = len(sent) - sent_before
        finally:
            stop.set()
            writer.join()
        assert done.returncode == 0, done.stderr
        assert sent_during > 0  # the server answered (and both its writers appended) while the snapshot was taken
    finally:
        server.stop()

    manifest = json.loads((tmp_path / "snap" / MANIFEST).read_text())
    assert manifest["aliases"]["churn-classifier"]["champion"] == before[0][0]
    assert manifest["audit"][0]["records"] >= manifest["audit"][0]["head_seq"] > 0
    assert (tmp_path / "snap").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "snap" / "keys" / "signing.key").stat().st_mode & 0o777 == 0o600
    kinds = {e["path"]: e["kind"] for e in manifest["entries"]}
    assert kinds["data/mlflow/mlflow.db"] == kinds["data/feast/online_store.db"] == "sqlite"
    assert any(k.startswith("data/predictions/") and k.endswith(".parquet") for k in kinds)

    restored, keys = Layout(tmp_path / "elsewhere" / "data"), tmp_path / "restored-keys"
    shutil.rmtree(tmp_path / "source")  # the machine is lost: nothing may still point at it
    done = churnops("--data-dir", str(restored.data_dir), "restore", "--from", str(tmp_path / "snap"), "--key-dir", str(keys), "--quiet")
    assert done.returncode == 0, done.stderr
    assert (keys / "signing.key").stat().st_mode & 0o777 == 0o600
    trail = restored.audit / "predictions.jsonl"
    verified = verify_file(trail, load_public_keys(keys))  # what `churnops audit verify` runs
    assert verified.ok and verified.records == manifest["audit"][0]["records"], verified.problems

    # the restored directory serves the same champion with the same scores, and its trail goes on under the restored key
    env = {"CHURNOPS_AUDIT_KEY_DIR": str(keys)}
    after = start_server(restored, None, ["champion"], restored.data_dir, [], env=env)
    try:
        with httpx.Client(base_url=after.url, timeout=10) as c:
            assert c.get("/v2/health/ready").status_code == 200
        assert scores(after, customers[:5]) == before
    finally:
        after.stop()
    continued = verify_file(trail, load_public_keys(keys))
    assert continued.ok and continued.records > verified.records, continued.problems
    db = sqlite3.connect(restored.mlflow / "mlflow.db")
    locations = [r[0] for r in db.execute("SELECT storage_location FROM model_versions")]
    db.close()
    assert locations and all(loc.startswith((restored.mlflow / "artifacts").resolve().as_uri()) for loc in locations)


WRITER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA journal_mode=" + sys.argv[2])
conn.execute("CREATE TABLE IF NOT EXISTS ledger (id INTEGER PRIMARY KEY, amount INTEGER, pad TEXT)")
print("ready", flush=True)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("INSERT INTO ledger (amount, pad) VALUES (100, ?)", ("x" * 2000,))
    conn.execute("INSERT INTO ledger (amount, pad) VALUES (-100, ?)", ("y" * 2000,))
    conn.execute("COMMIT")
"""


@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_a_database_written_in_a_loop_is_copied_as_one_committed_state(tmp_path: Path, journal: str) -> None:
    data = tmp_path / "data"
    (data / "privacy").mkdir(parents=True)
    db = data / "privacy" / "ledger.db"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(db), journal], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
        while db.stat().st_size < 2_000_000:  # a few hundred transactions in, and still going
            time.sleep(0.05)
        take(data, tmp_path / "snap", None)
        assert writer.poll() is None  # the writer never stopped
    finally:
        writer.kill()
        writer.wait()
    restore(tmp_path / "snap", tmp_path / "restored", None)
    copy = sqlite3.connect(tmp_path / "restored" / "privacy" / "ledger.db")
    assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    count, total = copy.execute("SELECT count(*), sum(amount) FROM ledger").fetchone()
    copy.close()
    assert count > 0 and count % 2 == 0 and total == 0  # whole transactions only


def small_data(tmp_path: Path) -> tuple[Path, Path]:
    """A data directory with a signed audit trail, a JSON lines file and a database, and its key directory."""
    data, keys = tmp_path / "data", tmp_path / "keys"
    generate(keys, "signing.key")
    sink = FileAuditSink(data / "audit" / "predictions.jsonl", load_signer(keys / "signing.key"), fsync="always")
    for i in range(5):
        sink.append([{"kind": "prediction", "i": i}, {"kind": "prediction", "i": -i}])
    sink.close()
    (data / "rollout" / "churn").mkdir(parents=True)
    (data / "rollout" / "churn" / "deployment.json").write_text('{"status": {"stableVersion": "1"}}\n')
    (data / "rollout" / "churn" / "timeline.jsonl").write_text('{"a": 1}\n{"a": 2}\n{"a": ')  # a write cut short
    with sqlite3.connect(data / "privacy.db") as conn:
        conn.execute("CREATE TABLE t (x)")
    conn.close()
    return data, keys


def test_a_tampered_incomplete_or_padded_snapshot_is_refused_naming_the_file(tmp_path: Path) -> None:
    data, keys = small_data(tmp_path)
    snap = tmp_path / "snap"
    take(data, snap, keys)

    target = snap / "data" / "audit" / "predictions.jsonl"
    good = target.read_bytes()
    target.write_bytes(good.replace(b'"i":3', b'"i":4'))
    with pytest.raises(IntegrityError, match=r"data/audit/predictions.jsonl: sha256 .* \(altered\)"):
        restore(snap, tmp_path / "r1", None)
    target.write_bytes(good)

    (snap / "data" / "privacy.db").rename(tmp_path / "aside.db")
    with pytest.raises(IntegrityError, match=r"data/privacy.db: missing"):
        restore(snap, tmp_path / "r2", None)
    (tmp_path / "aside.db").rename(snap / "data" / "privacy.db")

    (snap / "data" / "extra.json").write_text("{}")
    with pytest.raises(IntegrityError, match=r"data/extra.json: not listed in the manifest"):
        restore(snap, tmp_path / "r3", None)
    (snap / "data" / "extra.json").unlink()

    # the command says the same, with the integrity exit code, and writes nothing
    (snap / "keys" / "signing.key").write_bytes(b"-----BEGIN PRIVATE KEY-----\nforged\n")
    done = churnops("--data-dir", str(tmp_path / "r4"), "restore", "--from", str(snap), "--no-keys", "--quiet")
    assert done.returncode == 4 and "keys/signing.key" in done.stderr, done.stderr
    assert not (tmp_path / "r4").exists()

    (snap / MANIFEST).unlink()
    with pytest.raises(IntegrityError, match="did not finish"):
        restore(snap, tmp_path / "r5", None)
    assert not any(p.name.startswith(("r1", "r2", "r3", ".r")) for p in tmp_path.iterdir())


def test_restore_refuses_a_non_empty_target_and_keeps_a_different_key_of_the_same_name(tmp_path: Path) -> None:
    data, keys = small_data(tmp_path)
    take(data, tmp_path / "snap", keys)
    occupied = tmp_path / "occupied"
    occupied.mkdir()
    (occupied / "precious.txt").write_text("mine")
    with pytest.raises(InvalidInputError, match="not empty; pass --force"):
        restore(tmp_path / "snap", occupied, None)

    other_keys = tmp_path / "other-keys"
    other_kid, _, _ = generate(other_keys, "signing.key")  # a machine that already signs with a key of its own
    theirs = (other_keys / "signing.key").read_bytes()
    _, done = restore(tmp_path / "snap", occupied, other_keys, force=True)
    assert done.moved_aside is not None and (done.moved_aside / "precious.txt").read_text() == "mine"
    assert (other_keys / "signing.key").read_bytes() == theirs  # never overwritten
    ours = [p for p in other_keys.glob("*.key") if p.name != "signing.key"]
    assert len(ours) == 1 and ours[0].read_bytes() == (keys / "signing.key").read_bytes() and ours[0].stat().st_mode & 0o777 == 0o600
    assert {p.name for p in other_keys.glob("*.pub")} == {f"{other_kid}.pub", *(p.name for p in keys.glob("*.pub"))}
    # the torn timeline line stayed behind; the audit trail restored whole
    assert (occupied / "rollout" / "churn" / "timeline.jsonl").read_text() == '{"a": 1}\n{"a": 2}\n'
    verified = churnops("--data-dir", str(occupied), "audit", "verify", "--audit-public-keys", str(other_keys))
    assert verified.returncode == 0 and "10 records" in verified.stdout, verified.stdout


def test_the_audit_cut_keeps_whole_signed_batches_only(tmp_path: Path) -> None:
    data, _ = small_data(tmp_path)
    log = data / "audit" / "predictions.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    with log.open("ab") as f:  # a batch being written: its first record is out, its signed last one not yet
        f.write(lines[-2].replace(b'"seq":9', b'"seq":11'))
        f.write(b'{"torn')
    end = last_line_end(log, signed)
    assert end == sum(len(line) for line in lines)


def test_backup_waits_for_a_deployment_step(tmp_path: Path) -> None:
    """A runner holds ``rollout/<name>/.lock`` for each step (churnops.rollout.store): the backup must not read mid-step."""
    data, keys = small_data(tmp_path)
    hold = "import fcntl, sys, time; f = open(sys.argv[1], 'a'); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(data / "rollout" / "churn" / ".lock")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(ConflictError, match=r"rollout/churn/.lock stayed locked"), pytest.MonkeyPatch.context() as mp:
            mp.setattr(snapshot, "LOCK_WAIT_S", 0.5)
            take(data, tmp_path / "snap", keys)
        assert not (tmp_path / "snap").exists() and not list(tmp_path.glob(".snap.partial-*"))
    finally:
        holder.kill()
        holder.wait()
    take(data, tmp_path / "snap", keys)
    assert json.loads((tmp_path / "snap" / MANIFEST).read_text())["deployments"]["churn"]["stableVersion"] == "1"
