"""Pictures of a run (matplotlib, PNG): training curves, t-SNE, neighbour and false-negative galleries."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import Tensor

#: Frame colours of gallery images: same class as the query, another class, the query itself.
RIGHT, WRONG, QUERY = "tab:green", "tab:red", "black"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    path = Path(path)
    figure.savefig(path, dpi=90, bbox_inches="tight")
    _pyplot().close(figure)
    return path


def plot_curves(records: list[dict], path: str | Path,
                diagnostics: Sequence[str] = ("same_class_negatives", "same_class_target_mass")) -> Path:
    """Loss, learning rate, momentum, kNN accuracy and the label diagnostics against the step.

    Args:
        records: rows of a run's ``metrics.jsonl``.
        path: the PNG to write.
        diagnostics: the label diagnostics drawn (add ``cancelled_precision`` for FNC).
    """
    plt = _pyplot()
    panels = [
        ("loss", ["loss"]),
        ("learning rate", ["lr"]),
        ("EMA momentum", ["momentum"]),
        ("kNN accuracy", ["knn_accuracy"]),
        ("label diagnostics", list(diagnostics)),
        ("positive similarity", ["positive_similarity"]),
    ]
    figure, axes = plt.subplots(2, 3, figsize=(12, 6))
    for axis, (title, names) in zip(axes.flat, panels):
        for name in names:
            points = [(r["step"], r[name]) for r in records if name in r and "step" in r]
            if points:
                steps, values = zip(*points)
                axis.plot(steps, values, marker="o" if name == "knn_accuracy" else None, markersize=3, label=name)
        axis.set_title(title)
        axis.set_xlabel("step")
        if len(names) > 1 and axis.lines:
            axis.legend(fontsize=7)
    figure.tight_layout()
    return _save(figure, path)


def plot_tsne(features: Tensor, labels: Tensor, classes: Sequence[str], path: str | Path, seed: int = 0) -> Path:
    """A 2-D t-SNE (scikit-learn) of embeddings, coloured by class.

    Args:
        features: ``N×F`` embeddings.
        labels: ``N`` class labels.
        classes: class names by label.
        path: the PNG to write.
        seed: t-SNE's ``random_state``.
    """
    from sklearn.manifold import TSNE

    plt = _pyplot()
    x = features.detach().float().cpu().numpy()
    perplexity = float(min(30, max(2, (len(x) - 1) // 3)))
    points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    y = labels.cpu().numpy()
    figure, axis = plt.subplots(figsize=(6, 6))
    colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20")
    for label in np.unique(y):
        chosen = y == label
        name = classes[label] if 0 <= label < len(classes) else str(label)
        axis.scatter(points[chosen, 0], points[chosen, 1], s=6, color=colours(int(label) % colours.N), label=name)
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_title("t-SNE of test embeddings")
    if len(classes) <= 20:
        axis.legend(markerscale=3, fontsize=7, loc="best")
    return _save(figure, path)


def _show(axis, image: Tensor, colour: str | None, title: str | None = None) -> None:
    array = image.detach().cpu().permute(1, 2, 0).numpy()
    axis.imshow(array if array.dtype == np.uint8 else np.clip(array, 0, 1), interpolation="nearest")
    axis.set_xticks([])
    axis.set_yticks([])
    if colour is not None:
        for spine in axis.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(3)
    if title:
        axis.set_title(title, fontsize=7, color=colour or "black")


def plot_gallery(
    rows: list[tuple[Tensor, int, list[tuple[Tensor, int]]]],
    classes: Sequence[str],
    path: str | Path,
    title: str,
    columns: int | None = None,
) -> Path:
    """A gallery: each row is a query image, then images found for it, framed green
    when they share the query's class and red when not, each titled with its class.

    Args:
        rows: ``(query image, query label, [(image, label), ...])`` per row.
        classes: class names by label.
        path: the PNG to write.
        title: figure title.
        columns: images per row after the query (default: the longest row).
    """
    plt = _pyplot()
    columns = columns or max([len(found) for _, _, found in rows] + [1])
    figure, axes = plt.subplots(len(rows), columns + 1, figsize=(1.1 * (columns + 1), 1.25 * len(rows)),
                                squeeze=False)

    def name(label: int) -> str:
        return classes[label] if 0 <= label < len(classes) else str(label)

    for row, (query, query_label, found) in zip(axes, rows):
        _show(row[0], query, QUERY, f"query: {name(query_label)}")
        for axis, item in zip(row[1:], found + [None] * (columns - len(found))):
            if item is None:
                axis.axis("off")
                continue
            image, label = item
            _show(axis, image, RIGHT if label == query_label else WRONG, name(label))
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return _save(figure, path)
