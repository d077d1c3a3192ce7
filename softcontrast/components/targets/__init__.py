"""Target builders: ``(Columns, Rows) -> Targets(target, mask)``.

Every builder returns a row-stochastic target that is zero on masked columns. The
math lives in pure functions; the classes hold the hyperparameters.
"""

from softcontrast.components.targets.base import TargetBuilder, Targets
from softcontrast.components.targets.false_negatives import (
    FalseNegativeCancellation,
    cancel_false_negatives,
)
from softcontrast.components.targets.infonce import InfoNCE, one_hot_target
from softcontrast.components.targets.refinery import (
    SelfLabelingRefinery,
    confidence_schedule,
    confidence_weights,
    key_distributions,
    refined_label,
    self_labeling_target,
)
from softcontrast.components.targets.similarity import (
    SimilarityTargets,
    similarity_target,
)

__all__ = [
    "FalseNegativeCancellation",
    "InfoNCE",
    "SelfLabelingRefinery",
    "SimilarityTargets",
    "TargetBuilder",
    "Targets",
    "cancel_false_negatives",
    "confidence_schedule",
    "confidence_weights",
    "key_distributions",
    "one_hot_target",
    "refined_label",
    "self_labeling_target",
    "similarity_target",
]
