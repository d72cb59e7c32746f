#!/usr/bin/env python3
"""Watch a ModelDeployment on a live cluster with kubectl and assert the order of what it does.

Phases (one per run, each polls until it passes, fails, or times out):

- ``ready``: the ModelDeployment reaches Ready, at no observation is it Ready while none of the
  InferenceServices it owns is Ready, and its Ready condition's lastTransitionTime is not earlier than
  that of a Ready InferenceService it owns (so the order is checked even when the run starts after it);
- ``promote``: a new version becomes the canary, its traffic weight goes through every step of
  ``spec.rollout.steps`` in order (e.g. 5, 25, 50, 100), and it is promoted to stable;
- ``rollback``: a new version becomes the canary and is rolled back: phase RolledBack, the stable
  version unchanged.

Standard library only (the hosted runner's python3); kubectl comes from $KUBECTL or PATH. The decisions
are pure functions over observations, so tests replay recorded states through a fake kubectl.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


class RolloutAssertionError(Exception):
    """The cluster did something the phase forbids (exit code 1)."""


@dataclass(frozen=True)
class Observation:
    """One poll: the ModelDeployment's status and the readiness of the InferenceServices it owns."""

    ready: bool
    phase: str
    stable: str
    canary: str
    weight: int
    steps: tuple[int, ...]
    isvcs_ready: dict[str, bool] = field(default_factory=dict)
    ready_since: str = ""
    isvcs_ready_since: dict[str, str] = field(default_factory=dict)

    def line(self) -> str:
        isvcs = ", ".join(f"{n}={'Ready' if r else 'NotReady'}" for n, r in sorted(self.isvcs_ready.items())) or "none"
        return (
            f"ready={self.ready} phase={self.phase or '-'} stable={self.stable or '-'} "
            f"canary={self.canary or '-'} weight={self.weight} isvcs: {isvcs}"
        )


def condition_true(obj: dict[str, Any], kind: str) -> bool:
    conditions = (obj.get("status") or {}).get("conditions") or []
    return any(c.get("type") == kind and c.get("status") == "True" for c in conditions)


def true_since(obj: dict[str, Any], kind: str) -> str:
    """lastTransitionTime of a True condition (RFC 3339 in UTC, so strings compare in time order); '' if not True."""
    conditions = (obj.get("status") or {}).get("conditions") or []
    return next((str(c.get("lastTransitionTime") or "") for c in conditions if c.get("type") == kind and c.get("status") == "True"), "")


def owned_by(obj: dict[str, Any], name: str) -> bool:
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("kind") == "ModelDeployment" and r.get("name") == name for r in refs)


def parse(md: dict[str, Any], isvcs: dict[str, Any]) -> Observation:
    """An Observation from ``kubectl get modeldeployment -o json`` and ``kubectl get inferenceservices -o json``."""
    name = md["metadata"]["name"]
    status = md.get("status") or {}
    steps = ((md.get("spec") or {}).get("rollout") or {}).get("steps") or []
    owned = [i for i in isvcs.get("items", []) if owned_by(i, name)]
    return Observation(
        ready=condition_true(md, "Ready"),
        phase=str(status.get("phase") or ""),
        stable=str(status.get("stableVersion") or ""),
        canary=str(status.get("canaryVersion") or ""),
        weight=int(status.get("canaryWeight") or 0),
        steps=tuple(int(s) for s in steps),
        isvcs_ready={i["metadata"]["name"]: condition_true(i, "Ready") for i in owned},
        ready_since=true_since(md, "Ready"),
        isvcs_ready_since={i["metadata"]["name"]: true_since(i, "Ready") for i in owned if condition_true(i, "Ready")},
    )


# --- decisions: pure, over the observations so far --------------------------------------------------


def check_ready(history: list[Observation]) -> bool:
    """True once Ready with a Ready InferenceService; raises if Ready was ever seen without one."""
    for obs in history:
        if obs.ready and not any(obs.isvcs_ready.values()):
            raise RolloutAssertionError(f"the ModelDeployment is Ready before any of its InferenceServices: {obs.line()}")
    if not history or not history[-1].ready:
        return False
    last = history[-1]
    earlier = [n for n, since in last.isvcs_ready_since.items() if since and last.ready_since and since <= last.ready_since]
    if last.ready_since and last.isvcs_ready_since and not earlier:
        raise RolloutAssertionError(
            f"the ModelDeployment became Ready at {last.ready_since}, before its InferenceServices "
            f"({', '.join(f'{n} at {t}' for n, t in sorted(last.isvcs_ready_since.items()))})"
        )
    return True


def weights_seen(history: Iterable[Observation], version: str) -> list[int]:
    """The distinct canary weights of ``version``, in the order they were observed."""
    seen: list[int] = []
    for obs in history:
        if obs.canary == version and obs.weight > 0 and (not seen or seen[-1] != obs.weight):
            seen.append(obs.weight)
    return seen


def rollout_version(history: list[Observation], baseline: str) -> str:
    """The first canary version other than the stable one at the start ('' while none)."""
    return next((o.canary for o in history if o.canary and o.canary != baseline), "")


def check_promote(history: list[Observation], baseline: str) -> bool:
    """True once the new version is stable after every step; raises on a rollback or a skipped/reordered step."""
    version = rollout_version(history, baseline)
    if not version:
        return False
    started = next(i for i, o in enumerate(history) if o.canary == version)
    after = history[started:]
    last = after[-1]
    if any(o.phase == "RolledBack" for o in after):
        raise RolloutAssertionError(f"version {version} was rolled back, not promoted: {last.line()}")
    weights = weights_seen(after, version)
    if any(b < a for a, b in itertools.pairwise(weights)):
        raise RolloutAssertionError(f"the canary weight of version {version} went down: {weights}")
    if not (last.stable == version and not last.canary):
        return False
    if weights != list(last.steps):
        raise RolloutAssertionError(f"version {version} was promoted after weights {weights}, not every step of {list(last.steps)}")
    if last.phase != "Promoted":
        raise RolloutAssertionError(f"version {version} is stable but the phase is {last.phase!r}: {last.line()}")
    return True


def check_rollback(history: list[Observation], baseline: str) -> bool:
    """True once the new version is rolled back with the baseline still stable; raises if it is promoted."""
    version = rollout_version(history, baseline)
    if not version:
        return False
    last = history[-1]
    if last.stable == version:
        raise RolloutAssertionError(f"version {version} was promoted; it should have been rolled back: {last.line()}")
    if last.canary or last.phase != "RolledBack":
        return False
    if last.stable != baseline:
        raise RolloutAssertionError(f"after the rollback of {version} the stable version is {last.stable}, not {baseline}")
    return True


# --- I/O ----------------------------------------------------------------------------------------------


def kubectl_json(*args: str) -> dict[str, Any]:
    kubectl = os.environ.get("KUBECTL", "kubectl")
    result = subprocess.run([kubectl, *args, "-o", "json"], capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RolloutAssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    loaded: dict[str, Any] = json.loads(result.stdout)
    return loaded


def observe(namespace: str, name: str) -> Observation:
    md = kubectl_json("-n", namespace, "get", "modeldeployment", name)
    isvcs = kubectl_json("-n", namespace, "get", "inferenceservices")
    return parse(md, isvcs)


def watch(
    poll: Callable[[], Observation], decide: Callable[[list[Observation]], bool], timeout_s: float, interval_s: float
) -> list[Observation]:
    """Poll until ``decide`` says done (or raises); print each change of state."""
    history: list[Observation] = []
    deadline = time.monotonic() + timeout_s
    while True:
        obs = poll()
        if not history or obs != history[-1]:
            print(obs.line(), flush=True)
        history.append(obs)
        if decide(history):
            return history
        if time.monotonic() >= deadline:
            raise RolloutAssertionError(f"timed out after {timeout_s:.0f} s; last: {obs.line()}")
        time.sleep(interval_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("phase", choices=["ready", "promote", "rollback"])
    parser.add_argument("--namespace", default="churn")
    parser.add_argument("--name", required=True, help="the ModelDeployment")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds (default 1800)")
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between polls (default 5)")
    args = parser.parse_args(argv)

    def poll() -> Observation:
        return observe(args.namespace, args.name)

    try:
        if args.phase == "ready":
            watch(poll, check_ready, args.timeout, args.interval)
        else:
            baseline = poll().stable
            print(f"stable version at the start: {baseline or '-'}", flush=True)
            check = check_promote if args.phase == "promote" else check_rollback
            watch(poll, lambda h: check(h, baseline), args.timeout, args.interval)
    except RolloutAssertionError as exc:
        print(f"FAIL ({args.phase}): {exc}", file=sys.stderr)
        return 1
    print(f"OK ({args.phase})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
