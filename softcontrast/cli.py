"""``softcontrast train NAME``: any registered method, with flags generated from its settings.

Every flag comes from a dataclass field (:mod:`softcontrast.flags`): the method's config
(from the registry, :mod:`softcontrast.methods.registry`), :class:`~softcontrast.training.TrainConfig`
and the run's :class:`~softcontrast.run_settings.DataSettings`,
:class:`~softcontrast.run_settings.ModelSettings` and :class:`~softcontrast.run_settings.RunSettings`.
``--config FILE.yaml`` (or a packaged recipe's name) sets any of them; the command line
overrides the file. On the embedded digits data, the settings neither gave take
:data:`~softcontrast.run_settings.DIGITS_DEFAULTS`; elsewhere the fields' defaults apply.

A method registered in the user's own file trains the same way: ``--plugin my_methods.py``
(a file, or an importable module) is imported before the method is looked up, and the
file calls :func:`~softcontrast.methods.registry.register`::

    softcontrast train my-method --plugin my_methods.py --epochs 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Sequence

from accelerate.utils import set_seed

from softcontrast.components.augment import ViewRecipe
from softcontrast.components.named_backbones import build_backbone
from softcontrast.config import ConfigArgumentParser
from softcontrast.data import load_source
from softcontrast.errors import USER_ERRORS
from softcontrast.evaluation import baseline_knn, random_init_backbone
from softcontrast.flags import Flag, add_flags, config_flags
from softcontrast.methods.registry import (
    MethodSpec,
    load_plugin,
    method_names,
    method_spec,
)
from softcontrast.run_settings import (
    DIGITS_DEFAULTS,
    RUN_SECTIONS,
    Settings,
    make_method,
    resolve,
)
from softcontrast.settings import SettingError
from softcontrast.training import Trainer, TrainResult, make_accelerator


def build_parser(spec: MethodSpec, prog: str | None = None, description: str | None = None) -> ConfigArgumentParser:
    """The flags of method ``spec``: its config's, then the run's (:data:`RUN_SECTIONS`).

    Raises:
        TypeError: a field of the method's config has the name of one of the run's settings.
    """
    parser = ConfigArgumentParser(prog=prog, description=description or f"Train {spec.name}: {spec.summary}")
    run_fields = {f.name for _, section in RUN_SECTIONS for f in fields(section)}
    method_flags = config_flags(spec.config)
    taken = sorted(run_fields & {flag.field for flag in method_flags})
    if taken:
        raise TypeError(f"method {spec.name!r}: config fields {', '.join(taken)} are run settings; rename them")
    add_flags(parser.add_argument_group(f"{spec.name} settings"), method_flags, _digits_notes(method_flags))
    for title, section in RUN_SECTIONS:
        flags = config_flags(section)
        add_flags(parser.add_argument_group(f"{title} settings"), flags, _digits_notes(flags))
    return parser


def _digits_notes(flags: list[Flag]) -> dict[str, str]:
    return {flag.field: f"; {DIGITS_DEFAULTS[flag.field]} on digits" for flag in flags if flag.field in DIGITS_DEFAULTS}


def flag_names(spec: MethodSpec) -> dict[str, str]:
    """How each setting of method ``spec`` is given on the command line, by field: ``--top-k``."""
    sections = [spec.config, *(section for _, section in RUN_SECTIONS)]
    return {flag.field: flag.option for section in sections for flag in config_flags(section)}


def train(method_name: str, argv: Sequence[str] | None = None, prog: str | None = None,
          description: str | None = None, plugins: Sequence[str] = ()) -> TrainResult:
    """Parses the flags of the registered method ``method_name``, trains it and reports kNN accuracy.

    A user error (:data:`~softcontrast.errors.USER_ERRORS`) ends the process with one
    line on stderr, ``prog: error: message`` (``(set with --flag)`` added when a setting
    was refused), and status 2. Any other exception (a programming error) keeps its
    traceback, and so does every error when ``SOFTCONTRAST_TRACEBACK=1`` is set.

    Args:
        method_name: a registered method (:func:`~softcontrast.methods.registry.method_names`).
        argv: the flags (default: ``sys.argv[1:]``).
        prog: the program's name in messages (default: the script's).
        description: the text of ``--help`` (default: the method's summary).
        plugins: the files or modules that registered the method (saved with the run, so that
            ``softcontrast evaluate`` can rebuild it).
    """
    spec = method_spec(method_name)
    parser = build_parser(spec, prog, description)
    given = vars(parser.parse_args(argv))
    try:
        return run(resolve(spec, given, plugins=tuple(plugins)))
    except USER_ERRORS as error:
        if os.environ.get("SOFTCONTRAST_TRACEBACK") == "1":
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        option = flag_names(spec).get(getattr(error, "name", None)) if isinstance(error, SettingError) else None
        print(f"{parser.prog}: error: {message}" + (f" (set with {option})" if option else ""),
              file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def run(settings: Settings) -> TrainResult:
    """Loads the data, builds backbone and method, trains, and prints kNN accuracy with its baselines."""
    data, model, config = settings.data, settings.model, settings.train
    accelerator = make_accelerator(settings.run.precision, cpu=settings.run.cpu or None,
                                   log_with="tensorboard" if settings.run.tensorboard else None,
                                   project_dir=config.output_dir)
    if accelerator.is_main_process and settings.from_digits:
        chosen = ", ".join(f"{name}={value}" for name, value in settings.from_digits.items())
        print(f"{settings.method} on digits, digits defaults (a flag or --config overrides each): {chosen}", flush=True)
    if accelerator.is_main_process and settings.from_size:
        chosen = ", ".join(f"{name}={value}" for name, value in settings.from_size.items())
        print(f"{settings.method} on {data.dataset}, {settings.size_note} (a flag or --config overrides each): "
              f"{chosen}", flush=True)
    set_seed(config.seed)
    splits = load_source(data.dataset, data.image_size, settings.train.num_workers)
    if data.train_subset is not None:
        splits.train = splits.train.subset(data.train_subset, seed=config.seed)
    backbone = build_backbone(model.backbone_spec())
    method = make_method(settings, backbone, accelerator.num_processes, len(splits.train))
    trainer = Trainer(method, config, accelerator, run_config=settings.saved(len(splits.train)))
    result = trainer.fit(splits.train, splits.test)
    if accelerator.is_main_process:
        recipe = method.query_view
        baselines = run_baselines(settings, splits.train, splits.test, result, recipe, accelerator.device)
        summary = {
            "method": settings.method,
            "dataset": data.dataset,
            "epochs_done": result.epochs_done,
            "knn_accuracy": {str(k): round(v, 4) for k, v in result.knn.items()},
            "baselines": {name: round(v, 4) if isinstance(v, float) else v for name, v in baselines.items()},
            "final_loss": round(result.losses[-1], 4) if result.losses else None,
            "train_seconds": round(result.wall_seconds, 1),
            "images_per_second": round(result.images_per_second, 1),
        }
        for epoch, accuracy in sorted(result.knn.items()):
            label = "random init" if epoch == 0 else f"epoch {epoch}"
            print(f"kNN accuracy ({label}): {100 * accuracy:.2f}%")
        if "raw_pixels" in baselines:
            subset = baselines.get("subset")
            on = f", on {subset['train']} train / {subset['test']} test images" if subset else ""
            print(f"kNN accuracy (raw pixels, baseline{on}): {100 * baselines['raw_pixels']:.2f}%")
        print(json.dumps(summary))
    return result


def run_baselines(settings: Settings, train, test, result: TrainResult, recipe: ViewRecipe,
                  device) -> dict[str, float]:
    """kNN accuracy of the raw pixels and of the random-init network, under the monitor's protocol.

    The random-init accuracy is the run's epoch-0 kNN when this invocation measured it
    (a fresh start), else the seeded untrained backbone is built and measured. Above the
    baselines' size limits they are measured on a seeded random subset, named under
    ``subset`` (:func:`~softcontrast.evaluation.baselines.baseline_knn`). Empty without a
    test split.
    """
    if test is None:
        return {}
    model, config = settings.model, settings.train
    untrained = None if 0 in result.knn else random_init_backbone(model.backbone_spec(), seed=config.seed)
    baselines = baseline_knn(train, test, untrained, recipe, config.knn_k, config.knn_temperature, device,
                             seed=config.seed, num_workers=config.num_workers)
    chosen = {"raw_pixels": baselines["raw_pixels"], "random_init": baselines.get("random_init", result.knn.get(0))}
    if "raw_pixels_subset" in baselines:
        chosen["subset"] = baselines["raw_pixels_subset"]
    return chosen


def train_command(argv: Sequence[str]) -> None:
    """``softcontrast train [--plugin FILE_OR_MODULE ...] NAME [flags]``."""
    front = argparse.ArgumentParser(
        prog="softcontrast train", add_help=False, allow_abbrev=False,
        description="Train a registered method; `softcontrast train NAME --help` lists its flags.",
    )
    front.add_argument("--plugin", action="append", default=[], metavar="FILE_OR_MODULE",
                       help="a Python file or module that registers methods (repeatable)")
    known, rest = front.parse_known_args(argv)
    try:
        for source in known.plugin:
            load_plugin(source)
    except (ImportError, FileNotFoundError) as error:
        front.error(" ".join(str(error).split()))
    if not rest or rest[0] in ("-h", "--help"):
        front.print_help()
        print("\nmethods:")
        for name in method_names():
            print(f"  {name:<10} {method_spec(name).summary}")
        raise SystemExit(0 if rest else 2)
    name, flags = rest[0], rest[1:]
    if name not in method_names():
        front.error(f"unknown method {name!r}; registered: {', '.join(method_names())} (--plugin adds yours)")
    plugins = [str(Path(source).resolve()) if Path(source).is_file() else source for source in known.plugin]
    train(name, flags, prog=f"softcontrast train {name}", plugins=plugins)


def main(argv: Sequence[str] | None = None) -> None:
    """The ``softcontrast`` command: ``train NAME [flags]``, ``evaluate RUN_DIR`` or ``prepare SOURCE OUT --size S``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "train":
        train_command(argv[1:])
    elif argv and argv[0] == "evaluate":
        from softcontrast.evaluation.command import main as evaluate

        evaluate(argv)
    elif argv and argv[0] == "prepare":
        from softcontrast.prepare_command import main as prepare

        prepare(argv[1:])
    else:
        print("usage: softcontrast {train,evaluate,prepare} ...\n\n"
              "  train NAME [flags]   train a registered method (softcontrast train --help lists them)\n"
              "  evaluate RUN_DIR     kNN sweep, linear probe, baselines and pictures of a finished run\n"
              "  prepare SOURCE OUT --size S   write a dataset once into memory-mapped files (prepared:OUT)",
              file=sys.stdout if argv[:1] in (["-h"], ["--help"]) else sys.stderr)
        raise SystemExit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
