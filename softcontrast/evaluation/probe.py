"""Linear probe: a multinomial logistic regression fit on frozen features.

Up to :data:`TORCH_PROBE_ABOVE` training rows it is scikit-learn's ``LogisticRegression``;
above, the same problem (standardised features, multinomial cross-entropy, L2 penalty
``1 / C`` on the weights, L-BFGS) is solved in torch on the features' device, reading the
features in mini-batches so that its scratch memory does not grow with the number of rows.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: Training rows above which :func:`linear_probe_accuracy` fits the torch probe
#: (:func:`torch_linear_probe_accuracy`) instead of scikit-learn's.
TORCH_PROBE_ABOVE = 20_000
#: Rows per mini-batch of the torch probe: its scratch memory is about
#: ``PROBE_BATCH × (features + classes)`` values, whatever the number of rows.
PROBE_BATCH = 8192
#: The probe's solvers: ``auto`` (by :data:`TORCH_PROBE_ABOVE`), ``sklearn`` or ``torch``.
SOLVERS = ("auto", "sklearn", "torch")


def probe_solver(train_rows: int, solver: str = "auto") -> str:
    """The solver :func:`linear_probe_accuracy` uses: ``solver``, or for ``auto`` ``torch`` above
    :data:`TORCH_PROBE_ABOVE` training rows and ``sklearn`` up to it.

    Raises:
        ValueError: ``solver`` is none of :data:`SOLVERS`.
    """
    if solver not in SOLVERS:
        raise ValueError(f"probe solver must be one of {', '.join(SOLVERS)}; got {solver!r}")
    if solver != "auto":
        return solver
    return "torch" if train_rows > TORCH_PROBE_ABOVE else "sklearn"


def linear_probe_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    regularization: float = 1.0,
    max_iter: int = 1000,
    seed: int = 0,
    solver: str = "auto",
) -> float:
    """Top-1 test accuracy of a linear classifier fit on frozen features.

    The features are computed once by the caller. They are standardised with the
    training mean and standard deviation, then a multinomial logistic regression
    (L2 penalty, L-BFGS) is fit: scikit-learn's ``LogisticRegression`` up to
    :data:`TORCH_PROBE_ABOVE` training rows, :func:`torch_linear_probe_accuracy` on the
    features' device above (``solver`` picks one by hand). Both minimise the same loss.

    Args:
        train_features: ``N×F`` training features.
        train_labels: ``N`` labels.
        test_features: ``M×F`` test features.
        test_labels: ``M`` labels.
        regularization: inverse L2 strength ``C`` of ``LogisticRegression``.
        max_iter: L-BFGS iterations at most.
        seed: ``random_state`` of scikit-learn's solver (the torch probe draws nothing).
        solver: ``auto``, ``sklearn`` or ``torch``.

    Returns:
        Accuracy in ``[0, 1]``.
    """
    if probe_solver(train_features.shape[0], solver) == "torch":
        return torch_linear_probe_accuracy(train_features, train_labels, test_features, test_labels,
                                           regularization, max_iter)
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


def _moments(features: Tensor, batch_size: int) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation (population, 1 where 0) of the columns, read in mini-batches."""
    total = torch.zeros(features.shape[1], dtype=torch.float64, device=features.device)
    squares = torch.zeros_like(total)
    for start in range(0, features.shape[0], batch_size):
        rows = features[start : start + batch_size].double()
        total += rows.sum(dim=0)
        squares += rows.square().sum(dim=0)
    mean = total / features.shape[0]
    std = (squares / features.shape[0] - mean.square()).clamp_min(0).sqrt()
    return mean.float(), torch.where(std > 0, std, torch.ones_like(std)).float()


def fit_torch_probe(
    features: Tensor,
    labels: Tensor,
    num_classes: int,
    regularization: float = 1.0,
    max_iter: int = 1000,
    batch_size: int = PROBE_BATCH,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fits the multinomial logistic regression of scikit-learn's ``LogisticRegression(C)``
    on standardised features, in torch on the features' device.

    Minimises ``mean cross-entropy + |W|² / (2 C N)`` (scikit-learn's objective divided by
    ``C N``; the bias is not penalised) with full-batch L-BFGS (strong Wolfe line search)
    from zero weights. Each loss evaluation reads the rows ``batch_size`` at a time and
    accumulates the gradient, so the memory beyond the features is that of one mini-batch.

    Returns:
        ``weight`` (``C×F``), ``bias``, and the features' ``mean`` and ``std`` to standardise with.
    """
    if not regularization > 0:
        raise ValueError(f"probe regularization C must be > 0, got {regularization}")
    if batch_size < 1:
        raise ValueError(f"probe batch size must be >= 1, got {batch_size}")
    count, device = features.shape[0], features.device
    mean, std = _moments(features, batch_size)
    labels = labels.to(device)
    weight = torch.zeros(num_classes, features.shape[1], device=device, requires_grad=True)
    bias = torch.zeros(num_classes, device=device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=10,
                                  tolerance_grad=1e-6, tolerance_change=1e-10, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        total = torch.zeros((), device=device)
        for start in range(0, count, batch_size):
            rows = (features[start : start + batch_size].float() - mean) / std
            loss = F.cross_entropy(F.linear(rows, weight, bias), labels[start : start + batch_size],
                                   reduction="sum") / count
            loss.backward()
            total += loss.detach()
        penalty = weight.square().sum() / (2 * regularization * count)
        penalty.backward()
        return total + penalty.detach()

    optimizer.step(closure)
    return weight.detach(), bias.detach(), mean, std


@torch.no_grad()
def predict_torch_probe(features: Tensor, weight: Tensor, bias: Tensor, mean: Tensor, std: Tensor,
                        batch_size: int = PROBE_BATCH) -> Tensor:
    """Classes of ``features`` under a probe of :func:`fit_torch_probe`, ``batch_size`` rows at a time."""
    return torch.cat([
        F.linear((features[start : start + batch_size].float() - mean) / std, weight, bias).argmax(dim=1)
        for start in range(0, features.shape[0], batch_size)
    ])


def torch_linear_probe_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    regularization: float = 1.0,
    max_iter: int = 1000,
    batch_size: int = PROBE_BATCH,
) -> float:
    """Top-1 test accuracy of the torch probe (:func:`fit_torch_probe`), on the features' device.

    Args:
        train_features: ``N×F`` training features.
        train_labels: ``N`` labels.
        test_features: ``M×F`` test features (moved to the training features' device batch by batch).
        test_labels: ``M`` labels.
        regularization: inverse L2 strength ``C``, as scikit-learn's.
        max_iter: L-BFGS iterations at most.
        batch_size: rows read at once.

    Returns:
        Accuracy in ``[0, 1]``.
    """
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    with torch.enable_grad():
        probe = fit_torch_probe(train_features.detach(), train_labels, num_classes, regularization, max_iter,
                                batch_size)
    predicted = predict_torch_probe(test_features.detach().to(train_features.device), *probe, batch_size=batch_size)
    return (predicted.cpu() == test_labels.cpu()).float().mean().item()
