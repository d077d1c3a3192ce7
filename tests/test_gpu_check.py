"""The one-shot GPU check, tiny on the CPU: every section runs (or records why not) and the JSON holds
every method's finite losses, the FAISS comparison, the throughput figures and the SCE recipe's kNN."""

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402
from softcontrast.methods import method_names  # noqa: E402

SECTIONS = {"methods", "faiss", "throughput", "sce_recipe"}


def tiny_cifar(root: Path) -> Path:
    """A CIFAR-10-shaped image folder: train/ and test/, two classes of 16-px PNGs."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 16), ("test", 8)):
        for label in ("cat", "dog"):
            folder = root / split / label
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.png")
    return root


def test_tiny_run_writes_every_section(tmp_path):
    out = tmp_path / "gpu_check.json"
    threads = torch.get_num_threads()
    try:
        returned = gpu_check.main(["--tiny", "--cifar", str(tiny_cifar(tmp_path / "cifar")), "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    report = json.loads(out.read_text())
    assert report == json.loads(json.dumps(returned))
    assert report["benchmark"] == "gpu_check" and report["tiny"] is True
    assert set(report["sections"]) == SECTIONS
    assert str(tmp_path) not in out.read_text()  # machine paths are not recorded
    for name, section in report["sections"].items():
        assert section["status"] == "done", (name, section.get("error"))

    methods = report["sections"]["methods"]
    assert {(r["method"], r["variant"]) for r in methods["results"]} == {
        (name, variant) for name in method_names() for variant in ("eager", "compile")}
    for row in methods["results"]:
        assert row["status"] == "done" and row["steps"] == 3, row
        assert row["losses_finite"] and math.isfinite(row["last_loss"]) and row["images_per_second"] > 0
    assert methods["all_losses_finite"] is True
    assert methods["sync_check"].startswith("skipped:") and "CUDA" in methods["sync_check"]

    faiss = report["sections"]["faiss"]
    assert faiss["detection_agrees"] and faiss["equal_to_torch"] and faiss["same_neighbours_share"] == 1.0
    assert faiss["gpu_search"].startswith("skipped:")

    throughput = report["sections"]["throughput"]
    assert set(throughput["configurations"]) == {"resnet18_cifar", "resnet50_224px"}
    for config in throughput["configurations"].values():
        assert config["status"] == "done"
        assert {"moco", "sce"} <= set(config["images_per_second"])
        assert all(speed > 0 for speed in config["images_per_second"].values())
        if throughput["lightly"] == "lightly imported":
            assert set(config["ratio_to_lightly"]) == {"moco", "sce"}
            assert all(ratio > 0 for ratio in config["ratio_to_lightly"].values())
        else:
            assert throughput["lightly"].startswith("skipped lightly") and config["ratio_to_lightly"] == {}

    recipe = report["sections"]["sce_recipe"]
    assert recipe["epochs_done"] == recipe["epochs"] == 1 and recipe["losses_finite"]
    assert 0.0 <= recipe["knn_accuracy"] <= 1.0 and set(recipe["knn_accuracy_by_epoch"]) == {"0", "1"}
    assert "--config sce_cifar10" in recipe["command"] and "<path>" in recipe["command"]


def test_without_data_or_time_each_section_records_why_it_did_not_run(tmp_path):
    no_time = gpu_check.main(["--tiny", "--minutes", "0.01", "--out", str(tmp_path / "none.json")])
    assert set(no_time["sections"]) == SECTIONS
    for section in no_time["sections"].values():
        assert section["status"] == "skipped" and section["skip_reason"] == "skipped: the run's deadline was reached"
    assert json.loads((tmp_path / "none.json").read_text())["sections"] == no_time["sections"]

    args = gpu_check.parse_args(["--tiny"])
    clock = gpu_check.Clock(1.0)
    skipped = gpu_check.check_sce_recipe(args, gpu_check.Sizes.of(True, None), clock, {})
    assert skipped == {"status": "skipped",
                       "skip_reason": "skipped: no data (give --cifar PATH, a CIFAR-10 image folder)"}


def test_a_failing_section_is_recorded_and_the_run_goes_on():
    clock = gpu_check.Clock(1.0)
    record = gpu_check.run_section("broken", 30.0, clock, lambda: {"value": 1 / 0})
    assert record["status"] == "error" and record["error"].startswith("ZeroDivisionError")
    assert record["seconds"] >= 0 and record["traceback"]
    refused = gpu_check.run_section("refused", 30.0, clock, lambda: sys.exit(2))
    assert refused["status"] == "error" and refused["error"].startswith("SystemExit")
