"""Command-line flags and the run shared by the example scripts.

Every example accepts ``--config FILE.yaml`` (see :mod:`softcontrast.config`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields, replace
from typing import Any, Callable

from accelerate.utils import set_seed

from softcontrast.components.augment import ViewRecipe
from softcontrast.components.backbones import Backbone, resnet
from softcontrast.components.shuffle_bn import ShuffleBatchNorm
from softcontrast.config import ConfigArgumentParser
from softcontrast.data import DATA_DEFAULTS, load_source
from softcontrast.errors import USER_ERRORS
from softcontrast.evaluation import baseline_knn, random_init_backbone
from softcontrast.methods.base import ContrastiveMethod
from softcontrast.training import TrainConfig, TrainResult, Trainer, make_accelerator

MethodFactory = Callable[[Backbone, argparse.Namespace], ContrastiveMethod]


def build_parser(description: str, **defaults: Any) -> ConfigArgumentParser:
    """The flags every example accepts; ``defaults`` overrides their defaults.

    ``--config FILE.yaml`` sets any flag from a file (the example's own flags too);
    the command line overrides the file.

    The built-in defaults fit the embedded ``digits`` data on two CPU cores in a
    few minutes (narrow ResNet-18; on digits 12×12 views, gentle crops and a linear
    projector: see :data:`DATA_DEFAULTS`).
    """
    parser = ConfigArgumentParser(description=description)
    add = parser.add_argument
    add("--dataset", default="digits", help="digits | imagefolder:<path> | npz:<path> | hf:<id>")
    add("--train-subset", type=int, default=None, help="train on this many random training images")
    add("--image-size", type=int, default=None, help="resize images to this side (default: the source's)")
    add("--view-size", type=int, default=None,
        help="side of the augmented views (default: 12 for digits, else 16)")
    add("--crop-min-scale", type=float, default=None,
        help="smallest crop area of the random resized crop (default: 0.8 for digits, else the recipe's)")
    add("--flip-p", type=float, default=None,
        help="horizontal flip probability (default: 0 for digits, whose mirror images are other symbols; "
             "else the recipe's)")
    add("--backbone", default="resnet18", choices=["resnet18", "resnet34", "resnet50"])
    add("--width", type=int, default=16, help="channels of the first ResNet stage (64 = standard)")
    add("--no-cifar-stem", action="store_true", help="use the ImageNet stem (7×7 conv + max-pool)")
    add("--projector-hidden", type=int, default=512)
    add("--projector-out", type=int, default=128)
    add("--projector-layers", type=int, default=None,
        help="linear layers of the projector (default: 1, a linear map, for digits; else 2)")
    add("--queue-size", type=int, default=1024)
    add("--momentum", type=float, default=0.99, help="EMA momentum of the key encoder")
    add("--final-momentum", type=float, default=None, help="momentum at the end (cosine schedule)")
    add("--symmetric", action="store_true", help="average the loss over both view orders")
    add("--epochs", type=int, default=60)
    add("--batch-size", type=int, default=128, help="images per process per step")
    add("--optimizer", default="sgd", choices=["sgd", "adamw"])
    add("--lr", type=float, default=0.3, help="learning rate for a global batch of 256 (scaled linearly)")
    add("--weight-decay", type=float, default=5e-4)
    add("--warmup-epochs", type=float, default=0.0)
    add("--precision", default="no", choices=["no", "fp16", "bf16"], help="mixed precision")
    add("--cpu", action="store_true", help="train on the CPU even if a GPU is visible")
    add("--channels-last", action="store_true")
    add("--compile", action="store_true", help="torch.compile the encoders")
    add("--shuffle-bn", action="store_true",
        help="shuffle-BN for the momentum encoder: across processes, or split-BN on one process")
    add("--split-bn-groups", type=int, default=8,
        help="batch-norm groups of the global batch under --shuffle-bn (a multiple of the process count)")
    add("--seed", type=int, default=0)
    add("--output-dir", default=None, help="default: runs/<method>")
    add("--checkpoint-every", type=int, default=5, help="epochs between checkpoints")
    add("--checkpoint-every-steps", type=int, default=0, help="also save every this many steps (0: never)")
    add("--keep-checkpoints", type=int, default=3, help="complete checkpoints kept (0: all)")
    add("--stop-after-epochs", type=int, default=None, help="stop after this many epochs (resume later)")
    add("--resume", default=None,
        help="checkpoint folder; 'latest' (newest complete one, error if none); 'auto' (latest if any, else fresh)")
    add("--knn-every", type=int, default=0, help="epochs between kNN evaluations (0: before and after)")
    add("--knn-k", type=int, default=200)
    add("--log-every", type=int, default=10)
    add("--num-workers", type=int, default=4, help="loader workers for streamed image folders")
    add("--tensorboard", action="store_true", help="also log to TensorBoard in the output dir")
    parser.set_defaults(**defaults)
    return parser


def resolve_data_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fills the flags left unset whose defaults depend on the dataset (:data:`DATA_DEFAULTS`).

    On the embedded 8×8 digits the views are 12 pixels (8 lets the backbone learn
    less, 16 costs twice as much) and the projector is linear, which leaves the
    class structure in the backbone features that the kNN monitor reads (with a
    2-layer projector the backbone trails raw pixels within the few-minute budget).
    """
    on_digits = args.dataset == "digits"
    for name, (digits, other) in DATA_DEFAULTS.items():
        if getattr(args, name, None) is None:
            setattr(args, name, digits if on_digits else other)
    return args


def run(method_name: str, factory: MethodFactory, args: argparse.Namespace) -> TrainResult:
    """Loads the data, builds backbone and method, trains, and prints kNN accuracy with its baselines."""
    resolve_data_defaults(args)
    output_dir = args.output_dir or f"runs/{method_name}"
    accelerator = make_accelerator(
        args.precision, cpu=args.cpu or None, log_with="tensorboard" if args.tensorboard else None,
        project_dir=output_dir,
    )
    set_seed(args.seed)
    splits = load_source(args.dataset, args.image_size)
    if args.train_subset is not None:
        splits.train = splits.train.subset(args.train_subset, seed=args.seed)
    backbone = resnet(args.backbone, cifar_stem=not args.no_cifar_stem, width=args.width)
    args.num_train_samples = len(splits.train)
    method = factory(backbone, args)
    if args.shuffle_bn and method.shuffle_bn is None:
        raise ValueError(f"--shuffle-bn is set but the {method_name} example does not pass it to its method")
    config_names = {f.name for f in fields(TrainConfig)}
    values = {**vars(args), "output_dir": output_dir, "knn_k": args.knn_k,
              "mixed_precision": args.precision}
    config = TrainConfig(**{k: v for k, v in values.items() if k in config_names})
    trainer = Trainer(method, config, accelerator, run_config={"method": method_name, **vars(args)})
    result = trainer.fit(splits.train, splits.test)
    if accelerator.is_main_process:
        baselines = run_baselines(args, splits.train, splits.test, result, method.query_augment.recipe,
                                  config.knn_temperature, accelerator.device)
        summary = {
            "method": method_name,
            "dataset": args.dataset,
            "epochs_done": result.epochs_done,
            "knn_accuracy": {str(k): round(v, 4) for k, v in result.knn.items()},
            "baselines": {name: round(v, 4) for name, v in baselines.items()},
            "final_loss": round(result.losses[-1], 4) if result.losses else None,
            "train_seconds": round(result.wall_seconds, 1),
            "images_per_second": round(result.images_per_second, 1),
        }
        for epoch, accuracy in sorted(result.knn.items()):
            label = "random init" if epoch == 0 else f"epoch {epoch}"
            print(f"kNN accuracy ({label}): {100 * accuracy:.2f}%")
        if "raw_pixels" in baselines:
            print(f"kNN accuracy (raw pixels, baseline): {100 * baselines['raw_pixels']:.2f}%")
        print(json.dumps(summary))
    return result


def run_baselines(args: argparse.Namespace, train, test, result: TrainResult, recipe: ViewRecipe,
                  temperature: float, device) -> dict[str, float]:
    """kNN accuracy of the raw pixels and of the random-init network, under the monitor's protocol.

    The random-init accuracy is the run's epoch-0 kNN when this invocation measured it
    (a fresh start), else the seeded untrained backbone is built and measured. Empty
    without a test split.
    """
    if test is None:
        return {}
    if 0 in result.knn:
        untrained = None
    else:
        untrained = random_init_backbone(args.backbone, not args.no_cifar_stem, args.width, args.seed)
    baselines = baseline_knn(train, test, untrained, recipe, args.knn_k, temperature, device)
    return {"raw_pixels": baselines["raw_pixels"], "random_init": baselines.get("random_init", result.knn.get(0))}


def main(method_name: str, factory: MethodFactory, parser: argparse.ArgumentParser,
         argv: list[str] | None = None) -> TrainResult:
    """Parses the flags and runs; a user error ends the process with one line on stderr and status 2.

    User errors are :data:`USER_ERRORS`; any other exception (a programming error)
    keeps its traceback, and so does every error when the environment variable
    ``SOFTCONTRAST_TRACEBACK=1`` is set.
    """
    args = parser.parse_args(argv)
    try:
        return run(method_name, factory, args)
    except USER_ERRORS as error:
        if os.environ.get("SOFTCONTRAST_TRACEBACK") == "1":
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        print(f"{parser.prog}: error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def shuffle_bn_of(args: argparse.Namespace) -> ShuffleBatchNorm | None:
    """The momentum encoder's shuffle-BN chosen by ``--shuffle-bn`` and ``--split-bn-groups``."""
    return ShuffleBatchNorm(args.split_bn_groups) if args.shuffle_bn else None


def views_of(args: argparse.Namespace, *recipes: ViewRecipe) -> list[ViewRecipe]:
    """The recipes at ``args.view_size``, with the crop scale and flip chosen by the flags."""
    resolve_data_defaults(args)
    on_digits = args.dataset == "digits"
    crop_min = args.crop_min_scale if args.crop_min_scale is not None else (0.8 if on_digits else None)
    flip_p = args.flip_p if args.flip_p is not None else (0.0 if on_digits else None)
    resized = []
    for recipe in recipes:
        recipe = replace(recipe, size=args.view_size)
        if crop_min is not None:
            recipe = replace(recipe, crop_scale=(crop_min, recipe.crop_scale[1]))
        if flip_p is not None:
            recipe = replace(recipe, flip_p=flip_p)
        resized.append(recipe)
    return resized
