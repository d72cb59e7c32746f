"""A refused model explains itself: what failed, where its evaluation and card are, what changes the outcome.

A quality gate is right to refuse when it is configured that way; the person who
trained the model then needs the figures and the settings, not only the verdict.
The message names the CLI option and the settings-file field of each failed gate,
and the option that registers the model anyway as a rejected candidate (no alias,
so no rollout picks it up) for inspection.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from churnops.training.gates import GateResult, QualityGateError

# gate -> (CLI option, field of the settings file's ``gates`` section)
GATE_SETTINGS: dict[str, tuple[str, str]] = {
    "auc": ("--min-auc", "gates.min_auc"),
    "brier": ("--max-brier", "gates.max_brier"),
    "fairness_gap": ("--max-fairness-gap", "gates.max_fairness_gap"),
    "no_regression": ("--max-auc-regression", "gates.max_auc_regression"),
}
REGISTER_REJECTED = "--register-rejected"


FairnessRole = Literal["platform", "protected", "segment"]


@dataclass(frozen=True)
class FairnessColumns:
    """What the evaluated fairness column is, what is reported beside it, and what per-segment thresholds go by.

    ``role``: the platform's own segment column ("platform", gated as its compliance report does), a protected
    attribute ("protected", gated: the gap is to be closed, not un-gated), or a business segment ("segment",
    gated only when asked). ``thresholds_by`` is a business segment column, never a protected attribute:
    thresholds per protected value would treat people differently by that attribute.
    """

    role: FairnessRole = "platform"
    reported: tuple[str, ...] = ()
    thresholds_by: str | None = None


def hints(failed: list[GateResult], fairness_column: str | None, role: FairnessRole = "platform") -> list[str]:
    """What a user can change, one line per failed gate, then the way to inspect the model in the registry."""
    lines = []
    for r in failed:
        option, setting = GATE_SETTINGS.get(r.name, ("", ""))
        where = f"{option} (settings file: {setting})" if option else "its option (see `churnops train --help`)"
        lines.append(f"{r.name}: the limit is {r.limit:g}; {where} changes it")
        if r.name == "fairness_gap" and fairness_column:
            lines.append(f"{r.name}: {_fairness_hint(fairness_column, role)}")
    lines.append(
        f"{REGISTER_REJECTED} registers the model anyway as a rejected candidate for inspection "
        "(tagged with the failed gates, never given the challenger or champion alias, so no rollout picks it up)"
    )
    return lines


def _fairness_hint(column: str, role: FairnessRole) -> str:
    if role == "protected":
        return (
            f"{column!r} is a protected attribute: the gap is the model's to close, not a gate to remove. The card shows "
            "each value's recall and churners; look for features that stand in for it, add data for the missed group, "
            "or review the limit with whoever set it"
        )
    if role == "segment":
        return (
            f"{column!r} is gated as a business segment because --gate-segment was given; without it the segment is "
            "reported, not gated. --per-segment-thresholds reports what equal opportunity at one threshold per "
            "segment would give"
        )
    return (
        f"the platform's segment column {column!r} is gated as its compliance report is; "
        "--per-segment-thresholds reports what equal opportunity at one threshold per segment would give"
    )


class ModelRefusedError(QualityGateError):
    """Quality gates failed; the message points at the evaluation and the model card and says what to change."""

    def __init__(
        self, results: list[GateResult], evaluation: Path, card: Path, fairness_column: str | None = None, role: FairnessRole = "platform"
    ) -> None:
        super().__init__(results)
        self.evaluation, self.card = evaluation, card
        failed = [r for r in results if not r.passed]
        text = "\n".join(
            [
                "model not registered: quality gates failed:",
                *(f"  - {r.name}: {r.reason}" for r in failed),
                f"evaluation: {evaluation}",
                f"model card: {card} (per-segment figures, gaps and every gate)",
                "to change the outcome:",
                *(f"  - {line}" for line in hints(failed, fairness_column, role)),
            ]
        )
        self.message = text
        self.args = (text,)
