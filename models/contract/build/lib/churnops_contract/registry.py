"""MLflow registry names shared by training, serving, the rollout runner and the operator."""

from __future__ import annotations

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
