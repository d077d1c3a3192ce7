"""``softcontrast evaluate``: kNN sweep, linear probe, baselines, diagnostics and pictures of a run.

``softcontrast evaluate RUN_DIR`` reads a finished run (``backbone.pt``, the settings
saved with its newest complete checkpoint, ``metrics.jsonl``);
``softcontrast evaluate --backbone PATH --dataset SOURCE [--arch ... --width ...]``
evaluates an exported backbone. Both write ``eval.json`` and PNGs to ``<run>/eval/``
(or ``--output-dir``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from softcontrast.checkpoints import CHECKPOINT_DIR, RUN_CONFIG, list_checkpoints
from softcontrast.components.augment import ViewRecipe, moco_v2_cifar
from softcontrast.components.backbones import Backbone
from softcontrast.components.named_backbones import (
    SPEC_FILE,
    BackboneSpec,
    backbone_spec,
    build_backbone,
    load_network_state,
    read_spec,
)
from softcontrast.data import CenterCrops, ImageSource, ImageTensorDataset, load_source, random_indices
from softcontrast.errors import USER_ERRORS
from softcontrast.evaluation.baselines import (
    BASELINE_MAX_TEST,
    BASELINE_MAX_TRAIN,
    baseline_splits,
    random_init_backbone,
)
from softcontrast.evaluation.diagnostics import (
    DIAGNOSTICS,
    last_quarter_means,
    read_metrics,
)
from softcontrast.evaluation.features import extract_features, raw_pixel_features
from softcontrast.evaluation.knn import SWEEP_K, SWEEP_TEMPERATURES, knn_sweep
from softcontrast.evaluation.plots import plot_curves, plot_gallery, plot_tsne
from softcontrast.evaluation.probe import linear_probe_accuracy, probe_solver
from softcontrast.methods import ContrastiveMethod
from softcontrast.run_settings import make_method, saved_settings

#: ``--width`` of a bare ``--backbone`` without ``backbone.json`` beside it (the digits runs' width).
BARE_WIDTH = 16
#: The headline kNN setting (the training monitor's): k = 200, T = 0.1.
HEADLINE = "k=200,T=0.1"


class RunSettingsError(ValueError):
    """A folder that is not a finished run, or a backbone its flags do not describe."""


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """The settings of a finished run: ``run_config.json`` of its newest complete checkpoint.

    Raises:
        RunSettingsError: the folder holds no ``backbone.pt`` or no complete checkpoint.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunSettingsError(f"run folder not found: {run_dir}")
    if not (run_dir / "backbone.pt").is_file():
        raise RunSettingsError(
            f"{run_dir} is not a finished run (no backbone.pt): pass the output dir of a completed training "
            "run, or --backbone PATH --dataset SOURCE"
        )
    checkpoints = list_checkpoints(run_dir / CHECKPOINT_DIR)
    if not checkpoints:
        raise RunSettingsError(
            f"{run_dir} has no complete checkpoint with the run's settings ({CHECKPOINT_DIR}/*/{RUN_CONFIG}): "
            "pass --backbone PATH --dataset SOURCE with the run's flags instead"
        )
    settings = json.loads((checkpoints[-1].path / RUN_CONFIG).read_text())
    settings["epochs_done"] = checkpoints[-1].epoch
    return settings


def load_backbone(path: str | Path, spec: BackboneSpec | str, cifar_stem: bool = True, width: int = 64) -> Backbone:
    """A backbone built from its spec (or a short ResNet name with ``cifar_stem`` and ``width``) with the
    weights of ``path``; old ``backbone.pt`` files whose keys start with ``network.`` load too.

    Raises:
        RunSettingsError: the file is missing or its weights do not fit the spec.
    """
    path = Path(path)
    if not path.is_file():
        raise RunSettingsError(f"backbone file not found: {path}")
    if isinstance(spec, str):
        spec = backbone_spec(spec, cifar_stem=cifar_stem, width=width)
    backbone = build_backbone(spec)
    try:
        load_network_state(backbone, torch.load(path, map_location="cpu", weights_only=True))
    except RuntimeError as error:
        first = next((line.strip() for line in str(error).splitlines()[1:] if line.strip()), str(error))
        flags = f"--arch {spec.name}" + (f" --width {spec.width}" if spec.width is not None else "")
        flags += (f" --backbone-kwargs '{json.dumps(spec.kwargs)}'" if spec.kwargs else "")
        flags += "" if spec.cifar_stem else " --no-cifar-stem"
        raise RunSettingsError(
            f"{path} does not fit {flags} ({first}): pass the backbone flags it was trained with"
        ) from None
    return backbone


def evaluate_features(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                      seed: int) -> dict[str, Any]:
    """The kNN sweep (:func:`knn_sweep`) and the linear probe of one set of frozen features."""
    return {
        "knn": knn_sweep(train_features, train_labels, test_features, test_labels),
        "linear_probe": linear_probe_accuracy(train_features, train_labels, test_features, test_labels, seed=seed),
    }


#: The t-SNE picture shows at most this many test images (a seeded random subset above it).
TSNE_MAX_POINTS = 5000
#: Side of the images a streamed split shows in pictures and feeds the false-negative step.
PICTURE_SIDE = 96


def images_at(split: "ImageTensorDataset | ImageSource", indices: Sequence[int], side: int = PICTURE_SIDE) -> Tensor:
    """``uint8`` images ``indices`` of a split: rows of an in-memory one, centre views at ``side`` of a streamed one."""
    if isinstance(split, ImageTensorDataset):
        return split.images[torch.as_tensor(list(indices), dtype=torch.long)]
    views = CenterCrops(split, side)
    return torch.stack([views[int(i)][0] for i in indices])


def neighbour_rows(train: "ImageTensorDataset | ImageSource", test: "ImageTensorDataset | ImageSource",
                   train_features: Tensor,
                   test_features: Tensor, queries: int = 8, shown: int = 8) -> list:
    """Gallery rows (see :func:`plot_gallery`): the first test image of each class (up to
    ``queries``) and its ``shown`` nearest training images by cosine of the features."""
    chosen: list[int] = []
    for label in test.labels.unique().tolist():
        chosen.append(int((test.labels == label).nonzero()[0]))
        if len(chosen) == queries:
            break
    similarity = test_features[chosen] @ train_features.T
    nearest = similarity.topk(min(shown, len(train)), dim=1).indices.cpu()
    return [
        (images_at(test, [q])[0], int(test.labels[q]),
         list(zip(images_at(train, row.tolist()), (int(train.labels[i]) for i in row.tolist()))))
        for q, row in zip(chosen, nearest)
    ]


def method_from_settings(settings: dict[str, Any]) -> ContrastiveMethod:
    """The run's method rebuilt through the registry from its saved settings (untrained).

    Raises:
        KeyError: the run's method is not registered in this process.
    """
    resolved = saved_settings(settings)
    backbone = build_backbone(resolved.model.backbone_spec())
    return make_method(resolved, backbone, int(settings.get("num_processes", 1)), settings.get("num_train_samples"))


def detected_columns(method: ContrastiveMethod, images: Tensor, ids: Tensor) -> tuple[Tensor, Tensor] | None:
    """``B×N`` flags of the columns the method's step detects as false negatives, and the
    ``B×N`` sample ids of those columns; ``None`` for a method that detects none.

    One real step (:meth:`ContrastiveMethod.forward`) without an update: the flags are its
    targets' ``found``, over the first contrast's columns (own-key layout: column 0 is the
    image's own key).
    """
    output = method(images, ids)
    if output.targets is None or output.targets.found is None:
        return None
    return output.targets.found, output.columns.column_ids(ids)


@torch.no_grad()
def false_negative_rows(method: ContrastiveMethod, train: ImageTensorDataset, seed: int, batch: int = 64,
                        rows: int = 6, shown: int = 8) -> list | None:
    """Gallery rows: training queries and the distinct images the step detects as their
    false negatives (``None`` for a method that detects none).

    One training-mode step without an update (:func:`detected_columns`); an image
    detected through several of its view entries is shown once. The batch is capped so
    that one block of the step's column views fits its memory.
    """
    capacity = method.memory.capacity
    if capacity > 0:
        batch = min(batch, capacity // len(method.passes[0].columns))
    torch.manual_seed(seed)
    ids = torch.randperm(len(train))[:batch]
    method.train()
    side = max(crop.size for crop in method.crop_plan())
    detected = detected_columns(method, images_at(train, ids.tolist(), side), ids)
    if detected is None:
        return None
    found, column_ids = detected
    order = found.sum(dim=1).argsort(descending=True)[:rows]
    result = []
    for row in order.tolist():
        own = int(ids[row])
        images = [j for j in column_ids[row][found[row]].tolist() if j >= 0 and j != own]
        images = list(dict.fromkeys(images))[:shown]
        result.append((images_at(train, [own])[0], int(train.labels[own]),
                       list(zip(images_at(train, images), (int(train.labels[j]) for j in images)))))
    return result


def _false_negative_pictures(run_dir: Path, settings: dict, train, output: Path) -> str | None:
    """Draws ``false_negatives.png`` when the run's method detects false negatives.

    Returns ``None`` when drawn or when the method detects none, else why it was skipped.
    """
    from safetensors.torch import load_file

    try:
        method = method_from_settings(settings)
    except KeyError as error:
        return f"skipped: {error.args[0]}"
    seed = int(settings.get("seed", 0))
    checkpoint = list_checkpoints(run_dir / CHECKPOINT_DIR)[-1]
    try:
        method.load_state_dict(load_file(checkpoint.path / "model.safetensors"))
    except (RuntimeError, FileNotFoundError) as error:
        if false_negative_rows(method, train, seed, batch=2, rows=1) is None:
            return None  # an untrained step says the method detects none: nothing to draw
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
        return f"skipped: the checkpoint's weights do not fit the method rebuilt from its settings ({first})"
    rows = false_negative_rows(method, train, seed)
    if rows is None:
        return None
    if not any(found for _, _, found in rows):
        return "skipped: the method detected no false negatives in the sampled batch"
    plot_gallery(rows, train.classes, output / "false_negatives.png",
                 "detected false negatives (green: same class as the query, red: another class)")
    return FALSE_NEGATIVES_DRAWN


#: What :func:`_false_negative_pictures` returns once it drew the picture.
FALSE_NEGATIVES_DRAWN = "drawn"


def evaluate(
    run_dir: str | Path | None = None,
    backbone_path: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    output_dir: str | Path | None = None,
    plots: bool = True,
    progress: bool = True,
    device: torch.device | str | None = None,
    num_workers: int = 0,
    baseline_limits: tuple[int | None, int | None] = (BASELINE_MAX_TRAIN, BASELINE_MAX_TEST),
) -> dict[str, Any]:
    """Evaluates a run (``run_dir``) or an exported backbone (``backbone_path`` + ``flags``).

    Args:
        run_dir: a finished run's output folder.
        backbone_path: a ``backbone.pt`` (used when ``run_dir`` is ``None``).
        flags: settings of a bare backbone: ``dataset``, ``image_size``, ``train_subset``,
            ``backbone`` (architecture), ``backbone_kwargs``, ``width``, ``no_cifar_stem``, ``view_size``,
            ``seed``. When none of the four backbone settings is given, the ``backbone.json``
            beside ``backbone_path`` names the network (else ``resnet18`` at width :data:`BARE_WIDTH`).
        output_dir: where ``eval.json`` and the PNGs go (default ``<run>/eval``).
        plots: draw the PNGs.
        progress: progress bars on stderr.
        device: where features are computed, compared and probed (default: the GPU when
            there is one, else the CPU).
        num_workers: loader workers of a streamed dataset.
        baseline_limits: training and test images of the baselines at most (``None``: all).

    The trained network is measured on the whole splits; the raw-pixel and random-init
    baselines on a seeded random subset above
    :data:`~softcontrast.evaluation.baselines.BASELINE_MAX_TRAIN` training or
    :data:`~softcontrast.evaluation.baselines.BASELINE_MAX_TEST` test images (then
    ``eval.json`` has ``baseline_subset: {"train": n, "test": m}``). The linear probe is
    scikit-learn's up to :data:`~softcontrast.evaluation.probe.TORCH_PROBE_ABOVE` training
    rows, the torch one on ``device`` above (``linear_probe_solver`` in ``eval.json``).

    Returns:
        The content of ``eval.json``.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if run_dir is not None:
        run_dir = Path(run_dir)
        settings = read_run(run_dir)
        backbone_path = run_dir / "backbone.pt"
    else:
        settings = dict(flags or {})
        run_dir = Path(backbone_path).parent
        if all(settings.get(name) is None for name in ("backbone", "backbone_kwargs", "width", "no_cifar_stem")):
            saved_spec = read_spec(Path(backbone_path).with_name(SPEC_FILE))
            if saved_spec is not None:  # the spec saved beside the weights names the network
                settings.update(backbone=saved_spec.name, backbone_kwargs=json.dumps(saved_spec.kwargs),
                                no_cifar_stem=not saved_spec.cifar_stem, width=saved_spec.width)
        if settings.get("width") is None:
            settings["width"] = BARE_WIDTH
    output = Path(output_dir) if output_dir else run_dir / "eval"
    resolved = saved_settings(settings)
    spec = resolved.model.backbone_spec()
    seed = int(settings.get("seed", 0))
    backbone = load_backbone(backbone_path, spec)

    splits = load_source(settings.get("dataset", "digits"), settings.get("image_size"), num_workers)
    if splits.test is None:
        raise RunSettingsError(f"dataset {settings.get('dataset')!r} has no test split to evaluate on")
    train, test = splits.train, splits.test
    if settings.get("train_subset") is not None:
        train = train.subset(int(settings["train_subset"]), seed=seed)
    if (train.labels < 0).any() or (test.labels < 0).any():
        raise RunSettingsError("evaluation needs class labels on both splits; this dataset has unlabelled images")
    recipe: ViewRecipe = resolved.data.view(moco_v2_cifar())

    def bar(name: str) -> str | None:
        return name if progress else None

    def features(network: torch.nn.Module, pair: tuple, name: str) -> list[Tensor]:
        return [extract_features(network, split, recipe, device=device, num_workers=num_workers,
                                 progress=bar(f"{name} {part}")) for part, split in zip(("train", "test"), pair)]

    backbone.to(device)
    trained = features(backbone, (train, test), "features")
    results = {"trained": evaluate_features(trained[0], train.labels, trained[1], test.labels, seed)}
    base_train, base_test, subset = baseline_splits(train, test, seed, *baseline_limits)
    for name, (train_features, test_features) in (
        ("raw_pixels", raw_pixel_features(base_train, base_test, num_workers)),
        ("random_init", features(random_init_backbone(spec, seed=seed).to(device),
                                 (base_train, base_test), "random-init")),
    ):
        results[name] = evaluate_features(train_features.to(device), base_train.labels, test_features.to(device),
                                          base_test.labels, seed)

    records = read_metrics(run_dir / "metrics.jsonl")
    method = settings.get("method")
    detects = any("false_negatives_per_row" in record for record in records)  # logged by steps that detect
    names = DIAGNOSTICS if detects else tuple(d for d in DIAGNOSTICS if d != "cancelled_precision")
    report: dict[str, Any] = {
        "method": method,
        "dataset": settings.get("dataset", "digits"),
        "epochs_done": settings.get("epochs_done"),
        "train_images": len(train),
        "test_images": len(test),
        "view_size": recipe.size,
        "backbone": {"arch": spec.name, "width": spec.width, "cifar_stem": spec.cifar_stem, "kwargs": spec.kwargs},
        "headline": HEADLINE,
        "knn": {name: result["knn"] for name, result in results.items()},
        "linear_probe": {name: result["linear_probe"] for name, result in results.items()},
        "linear_probe_solver": {name: probe_solver(rows) for name, rows in (
            ("trained", len(train)), ("raw_pixels", len(base_train)), ("random_init", len(base_train)))},
        "margin_over_raw_pixels": results["trained"]["knn"][HEADLINE] - results["raw_pixels"]["knn"][HEADLINE],
        "diagnostics": last_quarter_means(records, names),
        "plots": [],
    }
    if subset is not None:
        report["baseline_subset"] = subset
    if plots:
        output.mkdir(parents=True, exist_ok=True)
        if records:
            plot_curves(records, output / "curves.png", names)
            report["plots"].append("curves.png")
        shown = torch.arange(len(test))
        if len(test) > TSNE_MAX_POINTS:
            shown = random_indices(len(test), TSNE_MAX_POINTS, seed)
        plot_tsne(trained[1][shown.to(trained[1].device)], test.labels[shown], test.classes, output / "tsne.png",
                  seed=seed)
        plot_gallery(neighbour_rows(train, test, trained[0], trained[1]), test.classes, output / "neighbors.png",
                     "test queries and their nearest training images (red: another class)")
        report["plots"] += ["tsne.png", "neighbors.png"]
        if method is not None:  # a run (a bare backbone has no method)
            drawn = _false_negative_pictures(run_dir, settings, train, output)
            if drawn == FALSE_NEGATIVES_DRAWN:
                report["plots"].append("false_negatives.png")
            elif drawn is not None:
                report["false_negatives"] = drawn
    output.mkdir(parents=True, exist_ok=True)
    (output / "eval.json").write_text(json.dumps(report, indent=2))
    return report


def format_report(report: dict[str, Any]) -> str:
    """The printed summary: kNN (T = 0.1) per k and the linear probe, for the network and the baselines."""
    ks = [f"k={k}" for k in SWEEP_K]
    lines = [f"{'':12}" + "".join(f"{k:>8}" for k in ks) + f"{'probe':>9}   (kNN T=0.1, accuracy %)"]
    for name, label in (("trained", "trained"), ("raw_pixels", "raw pixels"), ("random_init", "random init")):
        knn = report["knn"][name]
        lines.append(f"{label:12}" + "".join(f"{100 * knn[f'{k},T=0.1']:8.2f}" for k in ks)
                     + f"{100 * report['linear_probe'][name]:9.2f}")
    margin = 100 * report["margin_over_raw_pixels"]
    lines.append(f"kNN {HEADLINE}: trained minus raw pixels = {margin:+.2f} points")
    if "baseline_subset" in report:
        subset = report["baseline_subset"]
        lines.append(f"baselines on a random subset: {subset['train']} training and {subset['test']} test images")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The ``softcontrast`` command line (subcommand ``evaluate``)."""
    parser = argparse.ArgumentParser(prog="softcontrast", description="softcontrast commands")
    commands = parser.add_subparsers(dest="command", required=True)
    ev = commands.add_parser(
        "evaluate", help="kNN sweep, linear probe, baselines and pictures of a finished run",
        description=f"Evaluates frozen features: kNN (k {', '.join(map(str, SWEEP_K))}; "
                    f"T {', '.join(map(str, SWEEP_TEMPERATURES))}), a linear probe, and the raw-pixel and "
                    "random-init baselines under the same protocols; writes eval.json and PNGs.",
    )
    ev.add_argument("run_dir", nargs="?", help="output folder of a finished training run")
    ev.add_argument("--backbone", dest="backbone_path", help="a backbone.pt to evaluate instead of a run")
    ev.add_argument("--dataset", help="dataset source of --backbone (digits | imagefolder:<path> | npz:<path> | hf:<id>)")
    ev.add_argument("--image-size", type=int, default=None, help="with --backbone: the run's --image-size")
    ev.add_argument("--train-subset", type=int, default=None, help="with --backbone: the run's --train-subset")
    ev.add_argument("--arch", default=None,
                    help="with --backbone: the run's --backbone (resnet18 | resnet34 | resnet50 | torchvision:<model> | "
                         "timm:<model>; default: the backbone.json beside it, else resnet18)")
    ev.add_argument("--backbone-kwargs", default=None,
                    help="with --backbone: the run's --backbone-kwargs (JSON keyword arguments of the named model)")
    ev.add_argument("--width", type=int, default=None,
                    help=f"with --backbone: the run's --width (default: {BARE_WIDTH}, or the backbone.json beside it)")
    ev.add_argument("--no-cifar-stem", action="store_true", default=None,
                    help="with --backbone: the run's --no-cifar-stem")
    ev.add_argument("--view-size", type=int, default=None,
                    help="with --backbone: the run's --view-size (default: the examples' default for the dataset)")
    ev.add_argument("--seed", type=int, default=0, help="with --backbone: the run's --seed (random-init baseline)")
    ev.add_argument("--output-dir", default=None, help="default: RUN_DIR/eval (or eval/ beside --backbone)")
    ev.add_argument("--no-plots", action="store_true", help="write eval.json only")
    ev.add_argument("--device", default=None, help="where features are computed and probed (default: cuda if any)")
    ev.add_argument("--num-workers", type=int, default=4, help="loader workers of a streamed dataset")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``softcontrast`` console script; user errors exit with one line and status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if (args.run_dir is None) == (args.backbone_path is None):
            raise ValueError("give either RUN_DIR or --backbone PATH (with --dataset SOURCE), not both or neither")
        if args.backbone_path is not None and args.dataset is None:
            raise ValueError("--backbone needs --dataset SOURCE (the data the backbone was trained on)")
        flags = {"dataset": args.dataset, "image_size": args.image_size, "train_subset": args.train_subset,
                 "backbone": args.arch, "backbone_kwargs": args.backbone_kwargs, "width": args.width,
                 "no_cifar_stem": args.no_cifar_stem,
                 "view_size": args.view_size, "seed": args.seed}
        report = evaluate(args.run_dir, args.backbone_path, flags, args.output_dir, plots=not args.no_plots,
                          progress=sys.stderr.isatty(), device=args.device, num_workers=args.num_workers)
    except USER_ERRORS as error:
        if os.environ.get("SOFTCONTRAST_TRACEBACK") == "1":
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"softcontrast evaluate: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    print(format_report(report))
    written = Path(args.output_dir) if args.output_dir else Path(args.run_dir or Path(args.backbone_path).parent) / "eval"
    print(f"wrote {written / 'eval.json'}" + (f" and {', '.join(report['plots'])}" if report["plots"] else ""))


if __name__ == "__main__":
    main()
