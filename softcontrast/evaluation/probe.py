"""Linear probe: a multinomial logistic regression fit on frozen features (scikit-learn)."""

from __future__ import annotations

import numpy as np
from torch import Tensor


def linear_probe_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    regularization: float = 1.0,
    max_iter: int = 1000,
    seed: int = 0,
) -> float:
    """Top-1 test accuracy of a linear classifier fit on frozen features.

    The features are computed once by the caller. They are standardised with the
    training mean and standard deviation, then scikit-learn's
    ``LogisticRegression`` (L-BFGS, multinomial, L2 penalty) is fit to convergence.

    Args:
        train_features: ``N×F`` training features.
        train_labels: ``N`` labels.
        test_features: ``M×F`` test features.
        test_labels: ``M`` labels.
        regularization: inverse L2 strength ``C`` of ``LogisticRegression``.
        max_iter: L-BFGS iterations at most.
        seed: ``random_state`` of the solver.

    Returns:
        Accuracy in ``[0, 1]``.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x_train = train_features.detach().float().cpu().numpy()
    x_test = test_features.detach().float().cpu().numpy()
    y_train, y_test = train_labels.cpu().numpy(), test_labels.cpu().numpy()
    probe = make_pipeline(
        StandardScaler(), LogisticRegression(C=regularization, max_iter=max_iter, random_state=seed)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        probe.fit(x_train, y_train)
    return float(np.mean(probe.predict(x_test) == y_test))
