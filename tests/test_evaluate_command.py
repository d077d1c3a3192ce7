"""``softcontrast evaluate`` on a tiny finished FNC run: eval.json, PNGs, and one-line errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def test_evaluate_writes_every_field_and_picture(fnc_run):
    completed = evaluate(fnc_run, "--output-dir", fnc_run / "eval")
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads((fnc_run / "eval" / "eval.json").read_text())
    settings = {f"k={k},T={t}" for k in (1, 5, 20, 50, 200) for t in (0.05, 0.1)}
    assert report["method"] == "fnc" and report["epochs_done"] == 1 and report["train_images"] == 128
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


def test_evaluate_a_bare_backbone_with_its_flags(fnc_run, tmp_path):
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


def test_evaluate_refuses_a_backbone_whose_flags_do_not_match(fnc_run, tmp_path):
    completed = evaluate("--backbone", fnc_run / "backbone.pt", "--dataset", "digits", "--width", 16,
                         "--output-dir", tmp_path)
    assert completed.returncode == 2
    lines = completed.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not fit --arch resnet18 --width 16" in lines[0]
