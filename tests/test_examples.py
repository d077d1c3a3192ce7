"""The example scripts run end to end on the embedded data, and the shared flags."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from accelerate.utils import set_seed

from softcontrast.cli import build_parser, resolve
from softcontrast.components.augment import for_image_size, moco_v2_cifar
from softcontrast.components.backbones import resnet
from softcontrast.data import load_source
from softcontrast.evaluation import knn_accuracy
from softcontrast.methods.registry import method_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("script", ["moco", "sce", "fnc", "sane"])
def test_example_trains_and_reports_knn(script, tmp_path):
    queue = [] if script == "fnc" else ["--queue-size", "64"]  # published FNC keeps a view memory, no queue
    command = [sys.executable, str(EXAMPLES / f"{script}.py"), "--epochs", "1", "--train-subset", "128",
               "--batch-size", "32", *queue, "--width", "8", "--output-dir", str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary["method"] == script and summary["epochs_done"] == 1
    assert set(summary["knn_accuracy"]) == {"0", "1"}
    assert "kNN accuracy (random init)" in completed.stdout and "kNN accuracy (raw pixels, baseline)" in completed.stdout
    assert set(summary["baselines"]) == {"raw_pixels", "random_init"}
    assert summary["baselines"]["random_init"] == summary["knn_accuracy"]["0"]
    assert 0.5 < summary["baselines"]["raw_pixels"] <= 1
    # Output to a file (not a terminal): one line per epoch, no progress-bar redraws.
    assert "epoch 1/1: loss" in completed.stdout and "\r" not in completed.stdout + completed.stderr
    assert (tmp_path / "backbone.pt").is_file() and (tmp_path / "metrics.jsonl").is_file()
    assert summary["knn_accuracy"]["0"] == pytest.approx(seeded_random_init_knn(), abs=1e-4)


def seeded_random_init_knn() -> float:
    """kNN accuracy of the network every example builds first under --seed 0."""
    set_seed(0)
    splits = load_source("digits")
    backbone = resnet("resnet18", width=8)
    return knn_accuracy(backbone, splits.train.subset(128, seed=0), splits.test, for_image_size(moco_v2_cifar(), 12))


def views(*argv: str):
    spec = method_spec("moco")
    return resolve(spec, vars(build_parser(spec).parse_args(list(argv))), image_side=32).data.view(moco_v2_cifar())


def test_view_flags_default_to_no_flip_on_digits_only():
    digits = views()
    assert digits.flip_p == 0.0 and digits.crop_scale == (0.8, 1.0) and digits.size == 12
    folder = views("--dataset", "imagefolder:x", "--view-size", "32")
    assert folder.flip_p == 0.5 and folder.crop_scale == (0.2, 1.0) and folder.size == 32
    chosen = views("--flip-p", "0.3", "--crop-min-scale", "0.4")
    assert chosen.flip_p == 0.3 and chosen.crop_scale == (0.4, 1.0)


def test_fnc_variant_moco_trains_fnc_on_moco(tmp_path):
    command = [sys.executable, str(EXAMPLES / "fnc.py"), "--variant", "moco", "--epochs", "1", "--train-subset", "64",
               "--batch-size", "16", "--queue-size", "32", "--width", "4", "--detection-views", "2",
               "--knn-k", "5", "--output-dir", str(tmp_path)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert json.loads(completed.stdout.strip().splitlines()[-1])["method"] == "fnc-moco"
    saved = json.loads(next(tmp_path.rglob("run_config.json")).read_text())
    assert saved["detection_views"] == 2 and saved["queue_size"] == 32 and saved["temperature"] == 0.2
