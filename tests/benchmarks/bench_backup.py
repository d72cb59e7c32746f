"""Backup and restore benchmark: the figures behind the runbook's RPO and RTO.

On a demo-sized data directory (``churnops demo --fast``, built in a temporary
directory unless ``--data-dir`` names one), in the same run:
  - ``churnops backup`` (the whole command, as cron runs it) and ``take`` alone:
    time and snapshot size;
  - the baseline: ``cp -a`` and ``tar -cf`` of the same directory (neither is a
    consistent copy of a live SQLite database or audit trail: they show what
    consistency costs, not an alternative);
  - ``restore`` (digest check + copy + registry rewrite) and the time until a
    predictor started on the restored directory answers ``/v2/health/ready``:
    the recovery time of a lost machine, once the snapshot is on the new one.

Usage: PYTHONPATH=. python tests/benchmarks/bench_backup.py [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from churnops.backup.restore import restore
from churnops.backup.snapshot import take
from churnops.processes import free_port, terminate

CHURNOPS = str(Path(sys.executable).parent / "churnops")
RPO_GOAL_S = 15 * 60  # snapshots every 15 minutes
RTO_GOAL_S = 60 * 60


def timed(work: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    work()
    return time.perf_counter() - t0


def size_of(*paths: Path) -> int:
    """Bytes of ``paths`` together, each inode once (``du -c``), so hard-linked files are not counted twice."""
    out = subprocess.run(["du", "-sbc", *map(str, paths)], check=True, capture_output=True, text=True).stdout
    return int(out.splitlines()[-1].split()[0])


def run(cmd: list[str], env: dict[str, str]) -> None:
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def demo_dir(tmp: Path, env: dict[str, str]) -> Path:
    data = tmp / "demo"
    print("building a demo data directory (churnops demo --fast, a few minutes)…", flush=True)
    run([CHURNOPS, "--data-dir", str(data), "demo", "--fast"], env)
    return data


def ready_after_start(data: Path, tmp: Path, env: dict[str, str]) -> float:
    """Seconds from `churnops serve` on ``data`` to its first 200 on /v2/health/ready."""
    port = free_port()
    cmd = [CHURNOPS, "--data-dir", str(data), "serve", "--port", str(port), "--insecure-no-auth", "--model", "champion"]
    log = (tmp / "serve.log").open("w")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env={**env, "OMP_NUM_THREADS": "1"})
    try:
        with httpx.Client(timeout=2) as c:
            while time.perf_counter() - t0 < 600:
                if proc.poll() is not None:
                    raise SystemExit(f"the restored server exited ({proc.returncode}): see {tmp / 'serve.log'}")
                try:
                    if c.get(f"http://127.0.0.1:{port}/v2/health/ready").status_code == 200:
                        return time.perf_counter() - t0
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        raise SystemExit("the restored server was not ready within 600 s")
    finally:
        terminate(proc, 30)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=None, help="an existing embedded data directory (default: build a demo one)")
    parser.add_argument("--key-dir", type=Path, default=None, help="its audit key directory (default $CHURNOPS_AUDIT_KEY_DIR or a new one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-backup-") as name:
        tmp = Path(name)
        keys = args.key_dir or Path(os.environ.get("CHURNOPS_AUDIT_KEY_DIR") or tmp / "keys")
        env = {**os.environ, "CHURNOPS_AUDIT_KEY_DIR": str(keys)}
        data = args.data_dir or demo_dir(tmp, env)

        cli_s = timed(lambda: run([CHURNOPS, "--data-dir", str(data), "backup", "--out", str(tmp / "snap-cli"), "--quiet"], env))
        take_s = timed(lambda: take(data, tmp / "snap", keys))
        link_s = timed(lambda: take(data, tmp / "snap-link", keys, link=True))
        cp_s = timed(lambda: run(["cp", "-a", str(data), str(tmp / "cp")], env))
        tar_s = timed(lambda: run(["tar", "-cf", str(tmp / "data.tar"), "-C", str(data.parent), data.name], env))
        source, snap, tar = size_of(data), size_of(tmp / "snap"), (tmp / "data.tar").stat().st_size
        linked = size_of(data, tmp / "snap-link") - source if (tmp / "snap-link").stat().st_dev == data.stat().st_dev else snap

        restored_keys = tmp / "restored-keys"
        restore_s = timed(lambda: restore(tmp / "snap", tmp / "restored", restored_keys))
        ready_s = ready_after_start(tmp / "restored", tmp, {**env, "CHURNOPS_AUDIT_KEY_DIR": str(restored_keys)})
        files = sum(1 for p in (tmp / "snap").rglob("*") if p.is_file())

    mib = 2**20
    print(f"\ndata directory: {source / mib:,.1f} MiB ({files:,} files in the snapshot)")
    print(f"  churnops backup (whole command, as cron runs it): {cli_s:6.2f} s")
    print(f"  take() (the snapshot alone):                      {take_s:6.2f} s   snapshot {snap / mib:,.1f} MiB")
    print(f"  take(link=True) (segments/artifacts hard-linked): {link_s:6.2f} s   new bytes {linked / mib:,.1f} MiB")
    print(f"  baseline cp -a:                                   {cp_s:6.2f} s   (not consistent for a live database)")
    print(f"  baseline tar -cf:                                 {tar_s:6.2f} s   archive {tar / mib:,.1f} MiB")
    print(f"  restore (verify every sha256, copy, rewrite):     {restore_s:6.2f} s")
    print(f"  restored server ready (/v2/health/ready):         {ready_s:6.2f} s")
    rto = restore_s + ready_s
    print(f"\nRTO measured (restore + ready): {rto:.1f} s — goal ≤ {RTO_GOAL_S} s: {'PASS' if rto <= RTO_GOAL_S else 'FAIL'}")
    print(
        f"RPO with a snapshot every {RPO_GOAL_S // 60} min: ≤ {RPO_GOAL_S // 60} min + one backup ({cli_s:.1f} s) — "
        f"backup takes {100 * cli_s / RPO_GOAL_S:.2f} % of the interval: {'PASS' if cli_s < RPO_GOAL_S / 10 else 'FAIL'}"
    )
    print(f"consistency costs ×{take_s / cp_s:.1f} the time of cp -a")


if __name__ == "__main__":
    main()
