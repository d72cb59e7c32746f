"""Attacks on the audit trail by someone who can write the log directory but does not hold the signing key.

Each test plays one attack from the security review with real files and the
real ``churnops audit verify`` command: a chain rebuilt after an edit, a
truncation hidden by deleting or rewriting the head, a forged append, a second
writer through another name of the same file, a damaged head or last line, a
signing key kept beside the log, keys that are unknown or rotated, and a
rollback that only the PostgreSQL anchor can see.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from churnops.cli import main
from churnops.errors import ConfigError, ConflictError, IntegrityError
from churnops.layout import Layout
from churnops.serving.audit import FileAuditSink, PostgresAuditSink, canonical, chain_hash, head_path_for, verify_file
from churnops.serving.audit_anchor import Anchor
from churnops.serving.audit_keys import PublicKeys, Signer, generate, load_public_keys, load_signer, signer_for
from churnops.serving.audit_setup import AuditSettings, open_sink
from tests.support import groups
from tests.support.serving import Registered

pytestmark = groups.SERVING_MODELS

CHURNOPS = str(Path(sys.executable).parent / "churnops")


def _entries(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"request_id": f"r{i}", "score": i / 100, "caller": "t"} for i in range(start, start + n)]


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Signer, Path]:
    """A key pair outside the log's directory: the signer, and the directory of public keys verifiers get."""
    _, private, _ = generate(tmp_path / "keys")
    return load_signer(private), tmp_path / "keys"


@pytest.fixture
def log(tmp_path: Path, keys: tuple[Signer, Path]) -> Path:
    """Four signed batches of three records (seq 1 to 12), with its signed head."""
    path = tmp_path / "audit" / "predictions.jsonl"
    sink = FileAuditSink(path, keys[0], fsync="always")
    for i in range(4):
        sink.append(_entries(3, i * 3))
    sink.close()
    return path


def _verify(log: Path, public: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    code = main(["audit", "verify", "--log", str(log), "--audit-public-keys", str(public), *extra])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out + out.err


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _write(path: Path, records: list[dict[str, Any]]) -> None:
    """As the writer writes (canonical bytes): the attacks below are about content, not encoding."""
    path.write_bytes(b"".join(canonical(r) + b"\n" for r in records))


def _rehash(records: list[dict[str, Any]], drop_signatures: bool = False) -> list[dict[str, Any]]:
    """What an attacker without the key can do: recompute every hash (signatures cannot be recomputed)."""
    prev = "0" * 64
    for rec in records:
        if drop_signatures:
            rec.pop("kid", None)
            rec.pop("sig", None)
        rec["prev"] = prev
        prev = rec["hash"] = chain_hash(prev, {k: v for k, v in rec.items() if k not in ("hash", "sig")})
    return records


def _forge_head(log: Path, rec: dict[str, Any], with_signature: bool = False) -> None:
    head = {"seq": rec["seq"], "hash": rec["hash"]}
    if with_signature:
        head |= {"kid": rec["kid"], "sig": rec["sig"]}
    head_path_for(log).write_text(json.dumps(head))


def test_the_intact_trail_verifies_and_the_command_says_what_it_checked(
    log: Path, keys: tuple[Signer, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = _verify(log, keys[1], capsys)
    assert code == 0 and "audit trail OK: 12 records" in out
    assert f"signed batches: 4 (kid {keys[0].kid})" in out and f"head: seq 12, signed by kid {keys[0].kid}" in out
    assert "anchor: not checked" in out


@pytest.mark.parametrize("drop_signatures", [False, True])
def test_an_edit_with_every_hash_and_the_head_recomputed_is_detected(
    log: Path, keys: tuple[Signer, Path], capsys: pytest.CaptureFixture[str], drop_signatures: bool
) -> None:
    records = _lines(log)
    records[4]["score"] = 0.99
    records = _rehash(records, drop_signatures)
    _write(log, records)
    _forge_head(log, records[-1], with_signature=not drop_signatures)
    code, out = _verify(log, keys[1], capsys)
    assert code == 1 and "TAMPERED" in out
    assert ("does not verify" in out) if not drop_signatures else ("carry no signature" in out or "head (seq 12): not signed" in out)


def test_truncation_with_the_head_deleted_is_detected(log: Path, keys: tuple[Signer, Path], capsys: pytest.CaptureFixture[str]) -> None:
    _write(log, _lines(log)[:6])
    head_path_for(log).unlink()
    code, out = _verify(log, keys[1], capsys)
    assert code == 1 and "no head kept outside the log" in out
    # a log written before heads existed can be accepted on purpose, saying what goes unnoticed
    code, out = _verify(log, keys[1], capsys, "--allow-missing-head")
    assert code == 0 and "cannot be detected" in out


def test_truncation_with_the_head_rewritten_from_the_new_last_record_is_detected(
    log: Path, keys: tuple[Signer, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    records = _lines(log)[:7]  # mid-batch: the new last record carries no signature to copy
    _write(log, records)
    _forge_head(log, records[-1])
    code, out = _verify(log, keys[1], capsys)
    assert code == 1 and "head (seq 7): not signed" in out
    _forge_head(log, records[-1] | {"kid": records[5]["kid"], "sig": records[5]["sig"]}, with_signature=True)  # a signature of seq 6
    code, out = _verify(log, keys[1], capsys)
    assert code == 1 and "does not verify" in out


@pytest.mark.parametrize("fake_signature", [False, True])
def test_a_forged_record_appended_after_the_head_is_detected(
    log: Path, keys: tuple[Signer, Path], capsys: pytest.CaptureFixture[str], fake_signature: bool
) -> None:
    records = _lines(log)
    forged: dict[str, Any] = {"request_id": "forged", "score": 0.01, "caller": "t", "seq": 13, "prev": records[-1]["hash"]}
    if fake_signature:
        forged["kid"] = keys[0].kid
    forged["hash"] = chain_hash(forged["prev"], forged)
    if fake_signature:
        forged["sig"] = records[-1]["sig"]  # a real signature, of another head
    _write(log, [*records, forged])
    _forge_head(log, forged, with_signature=fake_signature)
    code, out = _verify(log, keys[1], capsys)
    assert code == 1 and ("does not verify" in out if fake_signature else "not signed" in out)
    head_path_for(log).unlink()
    code, out = _verify(log, keys[1], capsys, "--allow-missing-head")
    assert code == 1 and ("does not verify" in out if fake_signature else "1 record(s) after seq 12 carry no signature" in out)


def test_a_writer_refuses_to_sign_on_top_of_a_forged_tail(log: Path, keys: tuple[Signer, Path]) -> None:
    """Restarting the server after a forged append must not make the forgery part of the signed chain."""
    records = _lines(log)
    forged = {"request_id": "forged", "score": 0.01, "seq": 13, "prev": records[-1]["hash"]}
    forged["hash"] = chain_hash(forged["prev"], forged)
    _write(log, [*records, forged])
    with pytest.raises(IntegrityError, match=r"line 13 \(the last\): seq 13 is not signed"):
        FileAuditSink(log, keys[0])


def test_a_stripped_signature_is_detected(log: Path, keys: tuple[Signer, Path], capsys: pytest.CaptureFixture[str]) -> None:
    records = _lines(log)
    del records[5]["sig"]
    _write(log, records)
    code, out = _verify(log, keys[1], capsys)
    assert code == 1 and "seq 6: names signing key" in out


@pytest.mark.parametrize("other_name", ["symlink", "hardlink", "relative"])
def test_a_second_writer_through_another_name_of_the_same_file_is_refused(
    log: Path, keys: tuple[Signer, Path], tmp_path: Path, other_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = FileAuditSink(log, keys[0])
    try:
        if other_name == "symlink":
            other = tmp_path / "elsewhere.jsonl"
            other.symlink_to(log)
        elif other_name == "hardlink":
            other = tmp_path / "elsewhere.jsonl"
            other.hardlink_to(log)
        else:
            monkeypatch.chdir(log.parent.parent)
            other = Path("audit/../audit/predictions.jsonl")
        with pytest.raises(ConflictError, match="being written by another process"):
            FileAuditSink(other, keys[0])
    finally:
        first.close()
    if other_name == "hardlink":  # its head would be beside the other name: refused rather than starting a second head
        with pytest.raises(IntegrityError, match=r"no head file elsewhere\.jsonl\.head"):
            FileAuditSink(other, keys[0])
        return
    second = FileAuditSink(other, keys[0])  # once the first is gone, the other name continues the one chain
    second.append(_entries(1, 100))
    second.close()
    assert verify_file(log, load_public_keys(keys[1])).records == 13


SECOND_WRITER = """
import sys
from pathlib import Path
from churnops.serving.audit import FileAuditSink
from churnops.serving.audit_keys import load_signer
FileAuditSink(Path(sys.argv[1]), load_signer(Path(sys.argv[2])))
"""


def test_a_second_process_through_a_symlink_is_refused(log: Path, keys: tuple[Signer, Path], tmp_path: Path) -> None:
    link = tmp_path / "link.jsonl"
    link.symlink_to(log)
    first = FileAuditSink(log, keys[0])
    try:
        private = next(keys[1].glob("*.key"))
        done = subprocess.run([sys.executable, "-c", SECOND_WRITER, str(link), str(private)], capture_output=True, text=True, check=False)
    finally:
        first.close()
    assert done.returncode != 0 and "ConflictError" in done.stderr and "being written by another process" in done.stderr


@pytest.mark.parametrize(
    "damage", ["not json {", '{"seq": 12}', '{"seq": "12", "hash": "x"}', "[1, 2]"], ids=["not-json", "missing", "types", "list"]
)
def test_a_damaged_head_is_a_finding_and_stops_a_writer_clearly(
    log: Path, keys: tuple[Signer, Path], capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    head_path_for(log).write_text(damage)
    code, out = _verify(log, keys[1], capsys)
    assert code == 1 and f"audit head {head_path_for(log)}" in out
    with pytest.raises(IntegrityError, match=str(head_path_for(log))):
        FileAuditSink(log, keys[0])


def test_a_garbage_last_line_is_a_finding_and_stops_a_writer_clearly(
    log: Path, keys: tuple[Signer, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    with log.open("a") as f:
        f.write("}{ not a record\n")  # a whole line: not what a crash leaves (that is a line without its newline)
    code, out = _verify(log, keys[1], capsys)
    assert code == 1 and "line 13: not a JSON object" in out
    with pytest.raises(IntegrityError, match=rf"{log}, line 13 \(the last\): not a JSON object"):
        FileAuditSink(log, keys[0])
    assert not (log.parent / "predictions.jsonl.torn").exists()  # not mistaken for a torn record


def test_serve_stops_with_a_message_on_a_damaged_trail(
    served_layout: Layout, registered: Registered, tmp_path: Path, keys: tuple[Signer, Path]
) -> None:
    log = tmp_path / "audit" / "predictions.jsonl"
    sink = FileAuditSink(log, signer_for(None, os.environ, log.parent))
    sink.append(_entries(2))
    sink.close()
    cmd = [CHURNOPS, "--data-dir", str(served_layout.data_dir), "serve", "--port", "0", "--insecure-no-auth"]
    cmd += ["--tracking-uri", registered.cfg.tracking_uri, "--audit-log", str(log)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    head_path_for(log).write_text('{"seq": 2}')
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert done.returncode == IntegrityError.exit_code, done.stderr[-2000:]
    assert f"audit head {head_path_for(log)}" in done.stderr and "Traceback" not in done.stderr
    head_path_for(log).unlink()
    with log.open("a") as f:
        f.write("garbage\n")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env=env)
    assert done.returncode == IntegrityError.exit_code, done.stderr[-2000:]
    assert f"{log}, line 3 (the last)" in done.stderr and "Traceback" not in done.stderr


def test_a_signing_key_inside_the_logs_directory_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, private, _ = generate(tmp_path / "data" / "audit" / "keys")
    with pytest.raises(ConfigError, match="inside the audit log's directory"):
        signer_for(private, {}, tmp_path / "data" / "audit")
    table = tmp_path / "in.csv"
    table.write_text("customer_id\n1\n")
    code = main(
        [
            "--data-dir",
            str(tmp_path / "data"),
            "score",
            str(table),
            "--out",
            str(tmp_path / "o.parquet"),
            "--audit-signing-key",
            str(private),
        ]
    )
    err = capsys.readouterr().err
    assert code == ConfigError.exit_code and "--audit-signing-key" in err and "inside the audit log's directory" in err


def test_a_private_key_others_can_read_is_refused(tmp_path: Path) -> None:
    _, private, public = generate(tmp_path / "keys")
    private.chmod(0o644)
    with pytest.raises(ConfigError, match="mode 0644"):
        load_signer(private)
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        public.chmod(0o600)
        load_signer(public)


def test_the_embedded_default_key_is_created_once_owner_only_outside_the_data_dir(tmp_path: Path) -> None:
    env = {"CHURNOPS_AUDIT_KEY_DIR": str(tmp_path / "config" / "audit-keys")}
    first = signer_for(None, env, tmp_path / "data" / "audit")
    again = signer_for(None, env, tmp_path / "data" / "audit")
    key = tmp_path / "config" / "audit-keys" / "signing.key"
    assert first.kid == again.kid and key.stat().st_mode & 0o077 == 0
    assert (tmp_path / "config" / "audit-keys" / f"{first.kid}.pub").exists()
    env_xdg = {"XDG_CONFIG_HOME": str(tmp_path / "xdg")}
    assert signer_for(None, env_xdg, tmp_path / "data" / "audit").source == str(
        tmp_path / "xdg" / "churnops" / "audit-keys" / "signing.key"
    )


def test_an_unknown_kid_fails(log: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate(tmp_path / "other")
    code, out = _verify(log, tmp_path / "other", capsys)
    assert code == 1 and "unknown kid" in out


def test_a_rotated_trail_verifies_with_both_public_keys_and_fails_with_only_the_new_one(
    log: Path, keys: tuple[Signer, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kid_b, private_b, public_b = generate(tmp_path / "rotated")
    with pytest.raises(IntegrityError, match="unknown kid"):  # the new key alone cannot vouch for the old tail
        FileAuditSink(log, load_signer(private_b))
    sink = FileAuditSink(log, load_signer(private_b), trusted=load_public_keys(keys[1]))
    sink.append(_entries(2, 50))
    sink.close()
    both = tmp_path / "verify-set"
    both.mkdir()
    for pub in [*keys[1].glob("*.pub"), public_b]:
        (both / pub.name).write_bytes(pub.read_bytes())
    code, out = _verify(log, both, capsys)
    assert code == 0 and kid_b in out and keys[0].kid in out
    code, out = _verify(log, tmp_path / "rotated", capsys)
    assert code == 1 and f"unknown kid '{keys[0].kid}'" in out


def test_keygen_prints_the_kid_and_writes_an_owner_only_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "keygen", "--out", str(tmp_path / "k")]) == 0
    out = capsys.readouterr().out
    kid = out.split()[1]
    assert (tmp_path / "k" / f"{kid}.key").stat().st_mode & 0o077 == 0
    assert kid in load_public_keys(tmp_path / "k").keys


def test_a_rollback_to_an_earlier_signed_state_is_caught_by_the_postgres_anchor(
    tmp_path: Path, keys: tuple[Signer, Path], pg_dsn: str, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "audit" / "predictions.jsonl"
    sink = FileAuditSink(log, keys[0], fsync="always", anchor=Anchor(pg_dsn, "online", interval_s=3600))
    for i in range(4):
        sink.append(_entries(3, i * 3))
        if i == 2:
            kept = head_path_for(log).read_bytes()  # the attacker keeps a copy of the head as it was after batch 3
    sink.close()  # writes the newest checkpoint
    anchored = ["--anchor-dsn", pg_dsn, "--anchor-name", "online"]
    code, out = _verify(log, keys[1], capsys, *anchored)
    assert code == 0 and "newest checkpoint of 'online' at seq 12" in out

    records = _lines(log)[:9]  # back to the end of batch 3, with the head file of that time
    _write(log, records)
    head_path_for(log).write_bytes(kept)
    code, out = _verify(log, keys[1], capsys)
    assert code == 0  # without the anchor, an earlier signed head is indistinguishable from the present
    code, out = _verify(log, keys[1], capsys, *anchored)
    assert code == 1 and "reached seq 12 (rolled back)" in out


def test_public_keys_named_after_another_kid_are_refused(keys: tuple[Signer, Path], tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    (wrong / "0000000000000000.pub").write_bytes(next(keys[1].glob("*.pub")).read_bytes())
    with pytest.raises(ConfigError, match=f"name it {keys[0].kid}.pub"):
        load_public_keys(wrong)
    assert isinstance(load_public_keys(next(keys[1].glob("*.pub"))), PublicKeys)  # one file works too


def test_a_trail_from_before_signing_is_adopted_only_when_it_verifies(
    log: Path, keys: tuple[Signer, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    legacy = _rehash(_lines(log), drop_signatures=True)  # as the trail was written before signing
    _write(log, legacy)
    _forge_head(log, legacy[-1])
    with pytest.raises(IntegrityError, match="churnops audit adopt"):  # a writer does not sign on top of it by itself
        FileAuditSink(log, keys[0])
    code, out = _verify(log, keys[1], capsys)
    assert code == 1 and "head (seq 12): not signed" in out and "churnops audit adopt" in out
    private = str(next(keys[1].glob("*.key")))
    broken = [*legacy[:3], *legacy[4:]]
    _write(log, broken)
    adopt = ["audit", "adopt", "--log", str(log), "--audit-signing-key", private, "--audit-public-keys", str(keys[1])]
    assert main(adopt) == 1 and "not adopted" in capsys.readouterr().out
    assert len(_lines(log)) == 11  # nothing appended to a broken trail
    _write(log, legacy)
    assert main(adopt) == 0 and "adopted: 12 records verified; seq 13" in capsys.readouterr().out
    code, out = _verify(log, keys[1], capsys)
    assert code == 0 and "audit trail OK: 13 records" in out


def test_a_writer_refuses_a_log_whose_head_was_deleted(log: Path, keys: tuple[Signer, Path]) -> None:
    """Writing a fresh head for a cut-off log would erase the evidence of the cut."""
    _write(log, _lines(log)[:9])
    head_path_for(log).unlink()
    with pytest.raises(IntegrityError, match="has records but no head file"):
        FileAuditSink(log, keys[0])


def test_a_row_forged_into_the_postgres_trail_is_detected_and_not_extended(
    pg_dsn: str, keys: tuple[Signer, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    sink = PostgresAuditSink(pg_dsn, keys[0])
    sink.append(_entries(2))
    sink.append(_entries(2, 2))
    sink.close()
    verify = ["audit", "verify", "--dsn", pg_dsn, "--audit-public-keys", str(keys[1])]
    assert main(verify) == 0 and "signed batches: 2" in capsys.readouterr().out
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute("SELECT hash FROM churnops_audit_log WHERE seq = 4").fetchone()
        assert row is not None
        forged = {"request_id": "forged", "score": 0.5, "seq": 5, "prev": row[0]}
        forged["hash"] = chain_hash(row[0], forged)
        conn.execute(
            "INSERT INTO churnops_audit_log (seq, prev, hash, record) VALUES (5, %s, %s, %s)", (row[0], forged["hash"], json.dumps(forged))
        )
        conn.execute("UPDATE churnops_audit_head SET seq = 5, hash = %s, kid = NULL, sig = NULL", (forged["hash"],))
    assert main(verify) == 1 and "head (seq 5): not signed" in capsys.readouterr().out
    with pytest.raises(IntegrityError, match="seq 5 \\(the last\\): is not signed"):
        PostgresAuditSink(pg_dsn, keys[0])


def test_a_shared_postgres_trail_needs_an_explicit_signing_key(tmp_path: Path) -> None:
    """Each pod would otherwise create its own key, lost with the pod: the next one could not vouch for the chain."""
    settings = AuditSettings(tmp_path / "audit" / "predictions.jsonl", dsn="host=127.0.0.1 dbname=unused")
    with pytest.raises(ConfigError, match="--audit-signing-key: a shared audit trail needs a signing key"):
        open_sink(settings, {"CHURNOPS_AUDIT_KEY_DIR": str(tmp_path / "keys")})
    assert not (tmp_path / "keys").exists()


def test_a_rollback_with_the_head_copied_from_a_batch_signature_is_detected(
    log: Path, keys: tuple[Signer, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """A batch's signature is in the log for anyone to copy; a head is signed in its own role, so the copy does not verify."""
    records = _lines(log)[:9]  # cut back to the end of batch 3
    _write(log, records)
    _forge_head(log, records[-1], with_signature=True)
    code, out = _verify(log, keys[1], capsys)
    assert code == 1 and "head (seq 9)" in out and "does not verify" in out


def _replace_line(log: Path, n: int, line: bytes) -> None:
    lines = log.read_bytes().splitlines(keepends=True)
    lines[n - 1] = line
    log.write_bytes(b"".join(lines))


@pytest.mark.parametrize(
    "rewrite",
    [
        pytest.param(lambda b: b.replace(b"{", b'{"score":0.999,"caller":"mallory",', 1), id="duplicate-keys-forged-first"),
        pytest.param(lambda b: b.replace(b'"caller":"t"', b'"caller":NaN'), id="nan"),
        pytest.param(lambda b: json.dumps(json.loads(b), sort_keys=False).encode(), id="spacing"),
        pytest.param(lambda b: b.replace(b'"caller"', b'"\\u0063aller"'), id="escape"),
        pytest.param(lambda b: json.dumps(dict(reversed(list(json.loads(b).items()))), separators=(",", ":")).encode(), id="key-order"),
    ],
)
def test_a_line_that_is_not_the_canonical_bytes_of_its_record_is_a_finding(
    log: Path, keys: tuple[Signer, Path], capsys: pytest.CaptureFixture[str], rewrite: Any
) -> None:
    """json.loads keeps the last of duplicate keys and reads NaN: the hash would match while a first-wins reader sees forgeries."""
    original = log.read_bytes().splitlines()[4]
    _replace_line(log, 5, rewrite(original) + b"\n")
    code, out = _verify(log, keys[1], capsys)
    assert code == 1 and "line 5:" in out, out


@pytest.mark.parametrize(
    "last",
    [b"[" * 100_000 + b"]" * 100_000, b'{"a":' * 500 + b"1" + b"}" * 500, None],
    ids=["deep-nesting", "nesting-beyond-the-serialiser", "integer-beyond-64-bits"],
)
def test_a_hostile_line_is_a_finding_and_a_clear_error_for_writers_and_adopt(
    log: Path, keys: tuple[Signer, Path], capsys: pytest.CaptureFixture[str], last: bytes | None
) -> None:
    """Never a traceback: verify reports the line, a writer and `audit adopt` stop with an IntegrityError naming it."""
    if last is None:  # an integer no 64-bit reader holds, in the last (signed) record
        last = log.read_bytes().splitlines()[-1].replace(b'"caller":"t"', b'"caller":' + b"9" * 30)
        _replace_line(log, 12, last + b"\n")
        n = 12
    else:
        with log.open("ab") as f:
            f.write(last + b"\n")
        n = 13
    code, out = _verify(log, keys[1], capsys)
    assert code == 1 and f"line {n}:" in out, out
    with pytest.raises(IntegrityError, match=rf"{log}, line {n} \(the last\)"):
        FileAuditSink(log, keys[0])
    private = str(next(keys[1].glob("*.key")))
    code = main(["audit", "adopt", "--log", str(log), "--audit-signing-key", private, "--audit-public-keys", str(keys[1])])
    err = capsys.readouterr().err
    assert code == IntegrityError.exit_code and f"line {n} (the last)" in err and "Traceback" not in err


def test_a_deeply_nested_head_is_a_finding_and_stops_a_writer_clearly(
    log: Path, keys: tuple[Signer, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    head_path_for(log).write_bytes(b"[" * 100_000 + b"]" * 100_000)
    code, out = _verify(log, keys[1], capsys)
    assert code == 1 and f"audit head {head_path_for(log)}, line 1" in out
    with pytest.raises(IntegrityError, match=str(head_path_for(log))):
        FileAuditSink(log, keys[0])


def test_an_integer_beyond_64_bits_in_a_postgres_row_is_a_finding(
    pg_dsn: str, keys: tuple[Signer, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """jsonb keeps any integer; the canonical serialisation has none beyond 64 bits: a finding, not a TypeError."""
    sink = PostgresAuditSink(pg_dsn, keys[0])
    sink.append(_entries(2))
    sink.close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE churnops_audit_log SET record = jsonb_set(record, '{score}', %s::jsonb) WHERE seq = 1", ("9" * 30,))
    assert main(["audit", "verify", "--dsn", pg_dsn, "--audit-public-keys", str(keys[1])]) == 1
    out = capsys.readouterr()
    assert "seq 1: the record has no canonical form" in out.out and "Traceback" not in out.err
