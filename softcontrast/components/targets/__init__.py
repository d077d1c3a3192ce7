"""Target builders: ``(LogitColumns[, support]) -> Targets(target, mask)``.

Every builder returns a row-stochastic target that is zero on masked columns. The
math lives in pure functions; the classes hold the hyperparameters.
"""

from softcontrast.components.targets.base import TargetBuilder, Targets
from softcontrast.components.targets.false_negatives import FalseNegativeCancellation, cancel_false_negatives
from softcontrast.components.targets.infonce import InfoNCE, one_hot_target
from softcontrast.components.targets.refinery import (
    SelfLabelingRefinery,
    confidence_schedule,
    confidence_weights,
    key_distributions,
    refined_label,
    self_labeling_target,
)
from softcontrast.components.targets.similarity import SimilarityTargets, similarity_target
from softcontrast.components.targets.view_false_negatives import ViewFalseNegatives, view_fnc_targets

__all__ = [
    "FalseNegativeCancellation",
    "InfoNCE",
    "SelfLabelingRefinery",
    "SimilarityTargets",
    "TargetBuilder",
    "Targets",
    "ViewFalseNegatives",
    "cancel_false_negatives",
    "confidence_schedule",
    "confidence_weights",
    "key_distributions",
    "one_hot_target",
    "refined_label",
    "self_labeling_target",
    "similarity_target",
    "view_fnc_targets",
]
