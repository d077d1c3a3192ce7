"""``softcontrast evaluate`` on tiny finished FNC runs: eval.json, PNGs, the method rebuilt through
the registry from the run's settings (old runs' names too), and one-line errors."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from softcontrast.components.backbones import projector_for, resnet
from softcontrast.data import load_source
from softcontrast.evaluation import command
from softcontrast.methods import Setup, method_spec
from softcontrast.run_settings import saved_settings
from softcontrast.training import TrainConfig, Trainer, make_accelerator

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TINY = ["--epochs", "1", "--train-subset", "128", "--batch-size", "32", "--width", "8"]


def evaluate(*args):
    command = [sys.executable, "-m", "softcontrast.evaluation.command", "evaluate", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def fnc_run(tmp_path_factory):
    """A finished 1-epoch FNC run; threshold -1 makes FNC detect false negatives in every row."""
    output = tmp_path_factory.mktemp("fnc")
    command = [sys.executable, str(EXAMPLES / "fnc.py"), *TINY, "--threshold", "-1", "--output-dir", str(output)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return output


def registry_run(output: Path, name: str, **overrides) -> Path:
    """A finished 1-epoch run of registry method ``name`` trained in this process, its settings
    saved as the command line saves them (the registry name, the config's fields, the run's fields)."""
    spec = method_spec(name)
    config = spec.config(**overrides)
    run = {"backbone": "resnet18", "width": 8, "cifar_stem": True, "projector_hidden": 32, "projector_out": 16,
           "projector_layers": 2, "view_size": 12, "crop_min_scale": 0.8, "flip_p": 0.0, "dataset": "digits",
           "train_subset": 128}
    torch.manual_seed(0)
    backbone = resnet("resnet18", cifar_stem=True, width=8)
    views = saved_settings(run).data.view
    setup = Setup(projector=projector_for(backbone, 32, 16, 2), view=views, global_batch=32)
    method = spec(backbone, config, setup)
    train_config = TrainConfig(epochs=1, batch_size=32, output_dir=str(output), log_every=1, checkpoint_every=1)
    splits = load_source("digits")
    trainer = Trainer(method, train_config, make_accelerator(cpu=True),
                      run_config={"method": name, **dataclasses.asdict(config), **run})
    trainer.fit(splits.train.subset(128, seed=0), splits.test)
    return output


@pytest.fixture(scope="module")
def registry_fnc_run(tmp_path_factory):
    """A finished 1-epoch run of published FNC built through the registry; threshold -1 detects
    false negatives in every row."""
    return registry_run(tmp_path_factory.mktemp("fnc"), "fnc", threshold=-1.0, memory_size=256, support_views=1)


@pytest.fixture(scope="module", params=["fnc", "fnc-moco"])
def detecting_run(request, tmp_path_factory):
    """A finished 1-epoch run of either FNC; threshold -1 detects false negatives in every row."""
    if request.param == "fnc":
        return request.getfixturevalue("registry_fnc_run")
    return registry_run(tmp_path_factory.mktemp("fnc-moco"), "fnc-moco", threshold=-1.0, queue_size=64,
                        detection_views=2)


def test_evaluate_writes_every_field_and_picture(fnc_run):
    check_every_field_and_picture(fnc_run, "fnc")


def test_evaluate_rebuilds_the_method_through_the_registry_and_draws_its_detections(detecting_run):
    check_every_field_and_picture(detecting_run, json.loads(next(detecting_run.rglob("run_config.json")).read_text())
                                  ["method"])


def check_every_field_and_picture(fnc_run: Path, method: str) -> None:
    completed = evaluate(fnc_run, "--output-dir", fnc_run / "eval")
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads((fnc_run / "eval" / "eval.json").read_text())
    settings = {f"k={k},T={t}" for k in (1, 5, 20, 50, 200) for t in (0.05, 0.1)}
    assert report["method"] == method and report["epochs_done"] == 1 and report["train_images"] == 128
    for name in ("trained", "raw_pixels", "random_init"):
        assert set(report["knn"][name]) == settings
        assert 0 <= report["linear_probe"][name] <= 1
    margin = report["knn"]["trained"]["k=200,T=0.1"] - report["knn"]["raw_pixels"]["k=200,T=0.1"]
    assert report["margin_over_raw_pixels"] == pytest.approx(margin)
    assert set(report["diagnostics"]) == {"same_class_negatives", "same_class_target_mass", "cancelled_precision"}
    assert report["plots"] == ["curves.png", "tsne.png", "neighbors.png", "false_negatives.png"]
    for picture in report["plots"]:
        assert (fnc_run / "eval" / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "raw pixels" in completed.stdout and "random init" in completed.stdout
    assert report["linear_probe_solver"] == dict.fromkeys(("trained", "raw_pixels", "random_init"), "sklearn")
    assert "baseline_subset" not in report and "random subset" not in completed.stdout


def test_baselines_above_their_limits_are_measured_on_a_seeded_subset(registry_fnc_run, tmp_path):
    whole = command.evaluate(registry_fnc_run, output_dir=tmp_path / "whole", plots=False, progress=False)
    cut = command.evaluate(registry_fnc_run, output_dir=tmp_path / "cut", plots=False, progress=False,
                           baseline_limits=(64, 100))
    assert cut["baseline_subset"] == {"train": 64, "test": 100}
    assert cut["knn"]["trained"] == whole["knn"]["trained"]  # the network is measured on the whole splits
    assert cut["knn"]["raw_pixels"] != whole["knn"]["raw_pixels"]
    assert json.loads((tmp_path / "cut" / "eval.json").read_text())["baseline_subset"] == cut["baseline_subset"]
    assert "baselines on a random subset: 64 training and 100 test images" in command.format_report(cut)


def test_evaluate_a_bare_backbone_with_its_flags(registry_fnc_run, tmp_path):
    fnc_run = registry_fnc_run
    completed = evaluate("--backbone", fnc_run / "backbone.pt", "--dataset", "digits", "--width", 8,
                         "--view-size", 12, "--train-subset", 128, "--output-dir", tmp_path, "--no-plots")
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["plots"] == [] and report["view_size"] == 12
    assert evaluate(fnc_run, "--output-dir", tmp_path / "run", "--no-plots").returncode == 0
    run = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert report["knn"] == run["knn"] and report["linear_probe"] == run["linear_probe"]


def test_evaluate_refuses_a_folder_that_is_not_a_run(tmp_path):
    completed = evaluate(tmp_path)
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a finished run" in lines[0] and "backbone.pt" in lines[0]


def test_evaluate_refuses_a_backbone_whose_flags_do_not_match(registry_fnc_run, tmp_path):
    fnc_run = registry_fnc_run
    completed = evaluate("--backbone", fnc_run / "backbone.pt", "--dataset", "digits", "--width", 16,
                         "--output-dir", tmp_path)
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not fit --arch resnet18 --width 16" in lines[0]


def test_the_detected_false_negatives_come_from_the_real_step():
    """The gallery's flags are the step's ``targets.found`` over its columns' sample ids."""
    settings = {"method": "fnc-moco", "width": 4, "batch_size": 8, "queue_size": 16, "threshold": -1.0,
                "detection_views": 2, "projector_layers": 2, "projector_hidden": 16, "projector_out": 8}
    method = command.method_from_settings(settings)
    method.train()
    images = load_source("digits").train.images[:8]
    ids = torch.arange(8)
    method.memory.enqueue(torch.nn.functional.normalize(torch.randn(16, 8), dim=1), torch.arange(100, 116))
    found, column_ids = command.detected_columns(method, images, ids)
    assert found.shape == column_ids.shape == (8, 1 + 16)
    assert found.any(dim=1).all() and not found[:, 0].any()  # column 0 is the image's own key
    assert (column_ids[:, 0] == ids).all() and (column_ids[:, 1:] >= 100).all()
    assert found.sum(dim=1).max() <= method.targets.top_k
    assert command.detected_columns(command.method_from_settings({"method": "sce", "width": 4, "queue_size": 16}),
                                    images, ids) is None


def test_old_runs_settings_are_mapped_onto_the_registry():
    old = {"method": "fnc", "variant": "moco", "tau": 0.3, "support_views": 3, "no_cifar_stem": True, "width": 4,
           "momentum": None, "queue_size": 64, "top_k": 5, "dataset": "digits", "view_size": 10,
           "crop_min_scale": None, "flip_p": None, "projector_layers": None}
    resolved = saved_settings(old)
    config = resolved.config
    assert resolved.method == "fnc-moco"
    assert (config.temperature, config.detection_views, config.queue_size, config.top_k) == (0.3, 3, 64, 5)
    assert config.momentum == method_spec("fnc-moco").config().momentum  # unset (None) in an old run: the default
    model = resolved.model
    assert (model.backbone, model.width, model.cifar_stem) == ("resnet18", 4, False)
    model = saved_settings({"cifar_stem": False, "width": 8}).model
    assert (model.backbone, model.width, model.cifar_stem) == ("resnet18", 8, False)
    method = command.method_from_settings(old)
    assert method.temperature == 0.3 and method.detection_views == 2 and method.memory.capacity == 64
    assert (method.query_view.size, method.query_view.crop_scale[0], method.query_view.flip_p) == (10, 0.8, 0.0)
    sane = saved_settings({"method": "sane", "tau": 0.5, "no_p": True, "no_mixup": True}).config
    assert (sane.temperature, sane.use_p, sane.use_q, sane.mixup) == (0.5, False, True, False)
    published = saved_settings({"method": "fnc", "variant": "paper", "support_views": 2, "tau": None,
                                "memory_size": None}).config
    assert (published.support_views, published.temperature, published.memory_size) == (2, 0.1, None)
