"""MLflow registry names shared by training, serving, the rollout runner and the operator."""

from __future__ import annotations

from collections.abc import Mapping

DEFAULT_MODEL_NAME = "churn-classifier"

# Aliases replace MLflow's deprecated stages.
CHAMPION = "champion"  # the version serving all traffic
CHALLENGER = "challenger"  # the latest version that passed the training gates

# Model-version tags written on promotion and rollback.
TAG_PROMOTED_AT = "promoted_at"
TAG_PROMOTION_REASON = "promotion_reason"
TAG_REPLACED_AT = "replaced_at"
TAG_REPLACED_BY = "replaced_by"
TAG_ROLLED_BACK_AT = "rolled_back_at"
TAG_ROLLBACK_REASON = "rollback_reason"

# A version registered although quality gates failed, for inspection (`churnops train --register-rejected`):
# it never gets an alias, cannot be promoted, and neither driver starts a rollout of it.
TAG_REJECTED = "rejected"
TAG_FAILED_GATES = "failed_gates"


def rejected_gates(tags: Mapping[str, str]) -> str | None:
    """The gates a rejected candidate failed (from its version tags); None for a version that passed them."""
    if tags.get(TAG_REJECTED) != "true":
        return None
    return tags.get(TAG_FAILED_GATES) or "unknown"


def rejected_reason(model: str, version: str, gates: str) -> str:
    return (
        f"version {version} of {model} is a rejected candidate (failed quality gates: {gates}); it is registered "
        "for inspection only and is never rolled out: train a version that passes its gates"
    )
