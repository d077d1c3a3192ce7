"""Evaluation of frozen features: kNN, linear probe, baselines, label diagnostics and pictures.

``softcontrast evaluate RUN_DIR`` (:mod:`softcontrast.evaluation.command`) runs all of
it on a finished run. One concept per module:

* :mod:`~softcontrast.evaluation.features` – backbone and raw-pixel features of a split.
* :mod:`~softcontrast.evaluation.knn` – weighted kNN (memory-bounded chunks) and its sweep.
* :mod:`~softcontrast.evaluation.probe` – linear probe (scikit-learn logistic regression; torch above a size limit).
* :mod:`~softcontrast.evaluation.baselines` – raw pixels and the random-init network (bounded subsets).
* :mod:`~softcontrast.evaluation.diagnostics` – same-class label diagnostics.
* :mod:`~softcontrast.evaluation.plots` – curves, t-SNE and galleries (PNG).
"""

from softcontrast.evaluation.baselines import baseline_knn, random_init_backbone
from softcontrast.evaluation.diagnostics import (
    DIAGNOSTICS,
    false_negative_diagnostics,
    label_diagnostics,
    last_quarter_means,
    read_metrics,
    step_diagnostics,
)
from softcontrast.evaluation.features import extract_features, raw_pixel_features
from softcontrast.evaluation.knn import (
    knn_accuracy,
    knn_feature_accuracy,
    knn_predict,
    knn_sweep,
)
from softcontrast.evaluation.probe import linear_probe_accuracy

__all__ = [
    "DIAGNOSTICS",
    "baseline_knn",
    "extract_features",
    "knn_accuracy",
    "knn_feature_accuracy",
    "knn_predict",
    "knn_sweep",
    "false_negative_diagnostics",
    "label_diagnostics",
    "last_quarter_means",
    "linear_probe_accuracy",
    "random_init_backbone",
    "raw_pixel_features",
    "read_metrics",
    "step_diagnostics",
]
