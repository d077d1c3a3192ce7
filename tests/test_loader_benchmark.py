"""The loader benchmark, tiny: its ImageNet-like photo folders, and one round of every loader
with a report of positive, finite figures and the docs table made from it."""

import json
import math
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import loader  # noqa: E402
import photos  # noqa: E402


def test_photo_folders_are_imagenet_sized_jpegs_in_class_folders_and_repeat_with_the_seed(tmp_path):
    files = photos.write_imagenet_like_folder(tmp_path / "a", count=6, classes=3, seed=1)
    again = photos.write_imagenet_like_folder(tmp_path / "b", count=6, classes=3, seed=1)
    assert sorted(p.parent.name for p in files) == ["class_00"] * 2 + ["class_01"] * 2 + ["class_02"] * 2
    for path in files:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and image.size in ((500, 375), (375, 500))
            assert image.convert("L").getextrema()[1] - image.convert("L").getextrema()[0] > 100  # a photo, not flat
    assert [p.read_bytes() for p in files] == [p.read_bytes() for p in again]
    different = photos.write_imagenet_like_folder(tmp_path / "c", count=6, classes=3, seed=2)
    assert [p.read_bytes() for p in files] != [p.read_bytes() for p in different]
    with pytest.raises(ValueError, match="count=0"):
        photos.write_imagenet_like_folder(tmp_path / "d", count=0)


def test_one_tiny_round_reports_every_loader_with_positive_finite_figures(tmp_path):
    out = tmp_path / "loader.json"
    report = loader.main(["--images", "6", "--classes", "2", "--rounds", "1", "--batch-size", "4", "--out", str(out)])
    assert json.loads(out.read_text()) == report
    names = [loader.TORCHVISION, loader.OURS, loader.OURS_NO_DRAFT,
             f"{loader.OURS_PREPARED} jpeg", f"{loader.OURS_PREPARED} pixels"]
    assert all(report["prepared"][fmt]["available"] for fmt in ("jpeg", "pixels")), report["prepared"]
    assert [(r["views"], r["loader"]) for r in report["results"]] == [(v, n) for v in (2, 1) for n in names]
    assert [(r["views"], r["loader"]) for r in report["ratios"]] == [(v, n) for v in (2, 1) for n in names[1:]]
    for row in report["results"] + report["ratios"]:
        numbers = [value for key, value in row.items() if key not in ("views", "loader")]
        assert numbers and all(math.isfinite(x) and x > 0 for x in numbers)
    assert report["settings"]["mean_file_kb"] > 0 and report["machine"]["torch_threads"] == 1
    assert str(tmp_path) not in report["command"] and report["command"].endswith("--out loader.json")
    assert out.with_suffix(".md").read_text() == loader.markdown_table(report)


def test_bad_sizes_are_refused_with_the_flag_named(capsys):
    with pytest.raises(SystemExit):
        loader.parse_args(["--rounds", "0"])
    assert "--rounds must be at least 1, got 0" in capsys.readouterr().err


def test_the_committed_results_match_their_table_and_the_docs():
    results = ROOT / "benchmarks" / "results"
    report = json.loads((results / "loader_cpu.json").read_text())
    table = loader.markdown_table(report)
    assert (results / "loader_cpu.md").read_text() == table
    assert table in (ROOT / "docs" / "benchmarks.md").read_text()
