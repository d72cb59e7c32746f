"""Audit trail benchmark: what signing costs each append on the request path, and what verification costs.

The predictor appends one batch per request (its instances), and each append
signs once (Ed25519 over the batch's last ``(seq, hash)``). Timed, per append
of a one-record batch as the predictor writes it:
  - the signature alone;
  - ``seal`` (chain hashes + signature) and the same chaining without signing;
  - ``FileAuditSink.append`` with the default ``interval`` fsync (write + seal);
and the verification rate of the resulting log (records/s, signatures/s).

Usage: PYTHONPATH=. python tests/benchmarks/bench_audit.py [--appends 20000]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from churnops.serving.audit import GENESIS, FileAuditSink, Head, canonical, seal, verify_file
from churnops.serving.audit_keys import PublicKeys, Signer

ENTRY: dict[str, Any] = {
    "request_id": "0d6f4c1e9b7a4d3c8e2f1a0b9c8d7e6f",
    "time": 1_765_000_000.123,
    "caller": "svc-crm",
    "model": "churn-classifier",
    "model_version": "7",
    "customer_id": 123456,
    "score": 0.8123,
    "risk_band": "high",
    "features_sha256": "a" * 64,
    "reasons": [["tenure_days", -0.41], ["support_tickets_30d", 0.33], ["plan", 0.12], ["nps_last", -0.08], ["logins_7d", 0.05]],
}


def per_call_us(fn: Callable[[int], object], n: int) -> tuple[float, float]:
    """Median and p99 of one call, in microseconds (timed in groups of 100 to keep the clock's own cost out)."""
    groups = []
    for g in range(n // 100):
        t0 = time.perf_counter()
        for i in range(100):
            fn(g * 100 + i)
        groups.append((time.perf_counter() - t0) / 100 * 1e6)
    groups.sort()
    return statistics.median(groups), groups[int(len(groups) * 0.99) - 1]


def unsigned_seal(entries: list[dict[str, Any]], head: Head) -> str:
    prev = head.hash
    for seq, entry in enumerate(entries, start=head.seq + 1):
        prev = hashlib.sha256(prev.encode() + canonical({**entry, "seq": seq, "prev": prev})).hexdigest()
    return prev


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--appends", type=int, default=20_000)
    args = parser.parse_args()
    signer = Signer.of(Ed25519PrivateKey.generate(), "benchmark")
    head = Head(41, GENESIS)
    rows = [
        ("Ed25519 signature alone", per_call_us(lambda i: signer.sign("batch", i, GENESIS), args.appends)),
        ("chain hash, no signature (before)", per_call_us(lambda i: unsigned_seal([ENTRY], head), args.appends)),
        ("seal: chain hash + signature", per_call_us(lambda i: seal([ENTRY], head, signer), args.appends)),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "audit.jsonl"
        sink = FileAuditSink(log, signer, fsync="interval")
        rows.append(("FileAuditSink.append (interval fsync)", per_call_us(lambda i: sink.append([dict(ENTRY)]), args.appends)))
        sink.close()
        t0 = time.perf_counter()
        result = verify_file(log, PublicKeys({signer.kid: signer.key.public_key()}, "benchmark"))
        seconds = time.perf_counter() - t0
    print(f"per append of a one-record batch ({args.appends:,} appends):")
    for name, (p50, p99) in rows:
        print(f"  {name:<40} p50 {p50:7.1f} us   p99 {p99:7.1f} us")
    assert result.ok, result.problems
    print(
        f"verify: {result.records:,} records, {result.signatures:,} signatures in {seconds:.2f} s ({result.records / seconds:,.0f} records/s)"
    )


if __name__ == "__main__":
    main()
