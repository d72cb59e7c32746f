"""What a hostile or unlucky environment does to `churnops backup` / `churnops restore`: live writers, mount points,
symlinks, erasures, audit logs outside audit/, keys that cannot verify, crafted manifests, busy SQLite writers."""

from __future__ import annotations

import fcntl
import json
import sqlite3
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from churnops.backup import snapshot
from churnops.backup.manifest import MANIFEST
from churnops.backup.restore import restore
from churnops.backup.snapshot import take
from churnops.errors import ConflictError, IntegrityError, InvalidInputError
from churnops.monitoring.erasure import ErasureSettings, ErasureTargets, erase_customer
from churnops.monitoring.predlog.parquet import ParquetStore
from churnops.privacy import journal
from churnops.privacy.keys import ErasedCustomerError, erasure_token
from churnops.privacy.store import SqlitePrivacyStore
from churnops.serving.audit import FileAuditSink, verify_file
from churnops.serving.audit_keys import generate, load_public_keys, load_signer
from tests.backup.test_backup_restore import churnops, small_data

HOLD_AUDIT = """
import sys, time
from pathlib import Path
from churnops.serving.audit import FileAuditSink
from churnops.serving.audit_keys import load_signer
sink = FileAuditSink(Path(sys.argv[1]), load_signer(Path(sys.argv[2])), fsync="never")
sink.append([{"kind": "prediction", "live": True}])
print("held", flush=True)
time.sleep(60)
"""


def test_restore_force_refuses_a_data_dir_whose_audit_writer_is_live(tmp_path: Path) -> None:
    data, keys = small_data(tmp_path)
    take(data, tmp_path / "snap", keys)
    server = subprocess.Popen(
        [sys.executable, "-c", HOLD_AUDIT, str(data / "audit" / "predictions.jsonl"), str(keys / "signing.key")],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "held"
        before = sorted(p.name for p in data.iterdir())
        with pytest.raises(ConflictError, match=r"stop the server first \(.*audit/predictions.jsonl"):
            restore(tmp_path / "snap", data, None, force=True)
        assert sorted(p.name for p in data.iterdir()) == before  # nothing moved, nothing staged
    finally:
        server.kill()
        server.wait()
    restore(tmp_path / "snap", data, None, force=True)  # the server is gone: the restore goes through


def test_restore_keeps_an_existing_target_in_place_and_resolves_a_symlinked_one(tmp_path: Path) -> None:
    """A mount point cannot be renamed or removed: the target's inode stays, the old entries move aside inside it."""
    data, keys = small_data(tmp_path)
    take(data, tmp_path / "snap", keys)
    mount = tmp_path / "disk" / "data"
    mount.mkdir(parents=True)
    (mount / "after.csv").write_text("written since the snapshot\n")
    inode = mount.stat().st_ino
    link = tmp_path / "srv-data"
    link.symlink_to(mount)
    _, done = restore(tmp_path / "snap", link, None, force=True)
    assert link.is_symlink() and done.data_dir == mount.resolve()
    assert mount.stat().st_ino == inode
    assert done.moved_aside is not None and done.moved_aside.parent == mount
    assert (done.moved_aside / "after.csv").read_text() == "written since the snapshot\n"
    assert verify_file(mount / "audit" / "predictions.jsonl", load_public_keys(keys)).ok
    assert not list(tmp_path.glob("**/.restoring-*")) and not list((tmp_path / "disk").glob(".*"))
    # the aside folder is never part of a later snapshot
    take(mount, tmp_path / "snap2", None)
    assert not any(".before-restore-" in e["path"] for e in json.loads((tmp_path / "snap2" / MANIFEST).read_text())["entries"])


def test_symlinks_are_followed_inside_refused_outside_and_key_links_copied(tmp_path: Path) -> None:
    data, keys = small_data(tmp_path)
    (data / "raw").mkdir()
    (data / "raw" / "customers.csv").write_text("customer_id\n1\n")
    (data / "raw" / "current.csv").symlink_to("customers.csv")
    outside = tmp_path / "other-disk"
    outside.mkdir()
    (outside / "labels.csv").write_text("customer_id,churned\n1,0\n")
    (data / "labels").symlink_to(outside)
    with pytest.raises(InvalidInputError, match=r"labels -> .*other-disk \(outside the data directory"):
        take(data, tmp_path / "refused", keys)
    assert not (tmp_path / "refused").exists()

    secret = tmp_path / "secret-mount"  # a mounted secret: the key directory's names are symlinks into it
    secret.mkdir()
    for path in list(keys.iterdir()):
        path.rename(secret / path.name)
        path.symlink_to(secret / path.name)
    manifest = take(data, tmp_path / "snap", keys, follow_symlinks=True)
    paths = {e.path for e in manifest.entries}
    assert {"data/raw/current.csv", "data/labels/labels.csv", "keys/signing.key"} <= paths
    restored_keys = tmp_path / "restored-keys"
    restore(tmp_path / "snap", tmp_path / "restored", restored_keys)
    assert (tmp_path / "restored" / "labels" / "labels.csv").read_text() == "customer_id,churned\n1,0\n"
    assert verify_file(tmp_path / "restored" / "audit" / "predictions.jsonl", load_public_keys(restored_keys)).ok


def test_a_backup_waits_for_an_erasure_and_a_restore_re_applies_later_erasures(tmp_path: Path) -> None:
    data, keys = small_data(tmp_path)
    (data / "raw").mkdir()
    (data / "raw" / "customers.csv").write_text("customer_id,name\n42,Alice\n7,Bob\n")
    store = SqlitePrivacyStore(data / "privacy" / "privacy.db")
    store.subject_key(42)
    store.subject_key(7)
    take(data, tmp_path / "before", keys)  # the customer is still there

    # (a) an erasure in progress holds the data directory's erasure lock: the backup waits for its receipt
    with (data / journal.LOCK_NAME).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with pytest.raises(ConflictError, match=r"\.erasure\.lock stayed locked"), pytest.MonkeyPatch.context() as mp:
            mp.setattr(snapshot, "LOCK_WAIT_S", 0.3)
            take(data, tmp_path / "mid-erasure", keys)
        fcntl.flock(lock, fcntl.LOCK_UN)

    # (b) the erasure journal, kept outside the data directory, names tokens only
    kept = tmp_path / "erasure-journal.jsonl"
    token = erasure_token(store.store_key(), 42)
    store.suppress(token)
    store.shred(42)
    store.close()
    journal.record(kept, token)
    records = [json.loads(line) for line in kept.read_text().splitlines()]
    assert [sorted(r) for r in records] == [["at", "token"]]  # a time and the token: nothing names the customer
    assert records[0]["token"] == token and isinstance(records[0]["at"], float)
    _, done = restore(tmp_path / "before", tmp_path / "restored", None, journal=journal.tokens(kept))
    assert (done.erasures.suppressed, done.erasures.shredded) == (1, 1)
    restored = SqlitePrivacyStore(tmp_path / "restored" / "privacy" / "privacy.db")
    try:
        with pytest.raises(ErasedCustomerError):
            restored.subject_key(42)  # what the server asks before scoring or auditing a customer
        restored.subject_key(7)
    finally:
        restored.close()
    assert "Alice" not in (tmp_path / "restored" / "raw" / "customers.csv").read_text()


def test_the_erasure_holds_the_erasure_lock_through_its_receipt(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "audit").mkdir(parents=True)
    store = SqlitePrivacyStore(data / "privacy" / "privacy.db")
    seen: list[bool] = []

    class Receipts:
        def append(self, entries: list[dict[str, object]]) -> None:
            with (data / journal.LOCK_NAME).open("a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    seen.append(False)
                except BlockingIOError:
                    seen.append(True)

    settings = ErasureSettings(data, data / "audit", settle_s=0, journal=tmp_path / "erasure-journal.jsonl")
    erase_customer(42, settings, ErasureTargets(store, ParquetStore(data / "predictions")), Receipts(), "op")
    store.close()
    assert seen == [True]
    assert len(journal.tokens(tmp_path / "erasure-journal.jsonl")) == 1


def test_an_audit_log_outside_audit_is_cut_at_its_signature_and_its_keys_must_verify_it(tmp_path: Path) -> None:
    data, keys = small_data(tmp_path)
    log = data / "logs" / "predictor-2.jsonl"
    sink = FileAuditSink(log, load_signer(keys / "signing.key"), fsync="always")
    for i in range(3):
        sink.append([{"kind": "prediction", "i": i}, {"kind": "prediction", "i": -i}])
    sink.close()
    lines = log.read_bytes().splitlines(keepends=True)
    with log.open("ab") as f:  # a batch being written: its unsigned first record is out
        f.write(lines[-2].replace(b'"seq":6', b'"seq":7'))
    manifest = take(data, tmp_path / "snap", keys)
    assert {c.log for c in manifest.audit} == {"audit/predictions.jsonl", "logs/predictor-2.jsonl"}
    restore(tmp_path / "snap", tmp_path / "restored", None)
    assert (tmp_path / "restored" / "logs" / "predictor-2.jsonl").read_bytes() == b"".join(lines)

    # a key directory whose keys cannot verify the trail (the signer's pair is elsewhere) is refused
    other = tmp_path / "other-keys"
    generate(other, "signing.key")
    with pytest.raises(IntegrityError, match=r"signed by keys whose public key is not in .*other-keys"):
        take(data, tmp_path / "unverifiable", other)
    take(data, tmp_path / "anyway", other, allow_unverifiable=True)
    # a missing public key of a key the directory holds is derived from it
    for pub in keys.glob("*.pub"):
        pub.unlink()
    manifest = take(data, tmp_path / "derived", keys)
    assert any(n.endswith("derived from signing.key (the key directory lacked it)") for n in manifest.notes)


def test_folder_modes_are_restored_and_file_modes_masked(tmp_path: Path) -> None:
    data, keys = small_data(tmp_path)
    (data / "reports").mkdir(mode=0o750)
    (data / "reports").chmod(0o750)
    (data / "reports" / "r.txt").write_text("report\n")
    data.chmod(0o700)
    take(data, tmp_path / "snap", keys)
    m = json.loads((tmp_path / "snap" / MANIFEST).read_text())
    m["entries"] = [{**e, "mode": 0o6777} if e["path"] == "data/reports/r.txt" else e for e in m["entries"]]
    (tmp_path / "snap" / MANIFEST).write_text(json.dumps(m))
    restore(tmp_path / "snap", tmp_path / "restored", None)

    def mode(p: Path) -> int:
        return stat.S_IMODE(p.stat().st_mode)

    assert mode(tmp_path / "restored") == 0o700
    assert mode(tmp_path / "restored" / "reports") == 0o750
    assert mode(tmp_path / "restored" / "rollout") == stat.S_IMODE((data / "rollout").stat().st_mode)
    assert mode(tmp_path / "restored" / "reports" / "r.txt") == 0o777  # never setuid/setgid from a manifest


def test_a_key_conflict_is_found_before_the_data_is_put_in_place(tmp_path: Path) -> None:
    data, keys = small_data(tmp_path)
    take(data, tmp_path / "snap", keys)
    taken = tmp_path / "taken-keys"
    taken.mkdir()
    pub = next(keys.glob("*.pub"))
    (taken / pub.name).write_bytes(b"-----BEGIN PUBLIC KEY-----\nnot the same\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ConflictError, match="different key"):
        restore(tmp_path / "snap", tmp_path / "restored", taken)
    assert not (tmp_path / "restored").exists()


def test_the_command_cleans_stale_partials_and_quotes_the_next_command(tmp_path: Path) -> None:
    data, keys = small_data(tmp_path)
    stale = tmp_path / ".old.partial-99999999"  # a backup killed mid-copy; that pid does not exist
    stale.mkdir()
    done = churnops("--data-dir", str(data), "backup", "--out", str(tmp_path / "snap"), "--key-dir", str(keys), "--quiet")
    assert done.returncode == 0, done.stderr
    assert not stale.exists()
    target = tmp_path / "new place"
    done = churnops("--data-dir", str(target), "restore", "--from", str(tmp_path / "snap"), "--no-keys", "--quiet")
    assert done.returncode == 0, done.stderr
    assert f"next: churnops --data-dir '{target}' audit verify" in done.stdout


WRITER = """
import glob, os, sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], timeout=0.05, isolation_level=None)
print("ready", flush=True)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:  # the backup has begun writing its copy: the source is being read
    copies = glob.glob(sys.argv[2])
    if copies and os.path.getsize(copies[0]) > 0:
        break
failures = 0
for _ in range(3):
    try:
        conn.execute("INSERT INTO t (x) VALUES (zeroblob(100))")
    except sqlite3.OperationalError:
        failures += 1
    time.sleep(0.1)
print(failures, flush=True)
"""


def test_a_rollback_journal_database_is_copied_in_steps_that_a_short_busy_timeout_survives(tmp_path: Path) -> None:
    """One backup step over the whole file holds the read lock for the whole copy; a writer with a 50 ms busy
    timeout then fails. In steps of a few MiB with a pause between them, it waits a step at most."""
    data = tmp_path / "data"
    data.mkdir()
    db = data / "big.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE t (x BLOB)")
    conn.executemany("INSERT INTO t VALUES (randomblob(4000))", [()] * 16_000)  # ~64 MiB
    conn.commit()
    conn.close()
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), str(tmp_path / ".snap.partial-*" / "data" / "big.db")], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    backup = threading.Thread(target=take, args=(data, tmp_path / "snap", None))
    backup.start()
    out, _ = writer.communicate(timeout=60)
    backup.join(timeout=120)
    assert out.strip() == "0", "the writer hit 'database is locked' during the backup"
    assert (tmp_path / "snap" / MANIFEST).exists()
    copy = sqlite3.connect(tmp_path / "snap" / "data" / "big.db")
    assert copy.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    copy.close()
