"""The data-memory benchmark, tiny: every case runs at two scales and the JSON holds finite, positive figures."""

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import data_memory  # noqa: E402


def test_tiny_run_writes_every_case_at_two_scales(tmp_path):
    out = tmp_path / "memory.json"
    data_memory.main(["--folder-scales", "8", "16", "--hf-scales", "8", "12", "--distinct", "4", "--classes", "2",
                      "--batches", "1", "--batch-size", "4", "--workers", "1", "--out", str(out)])
    result = json.loads(out.read_text())
    assert set(result["runs"]) == {"imagefolder", "torchvision_imagefolder", "hf"}
    assert [run["images"] for run in result["runs"]["imagefolder"]] == [8, 16]
    assert [run["images"] for run in result["runs"]["torchvision_imagefolder"]] == [8, 16]
    assert [run["images"] for run in result["runs"]["hf"]] == [8, 12]
    for case in ("imagefolder", "hf"):
        for run in result["runs"][case]:
            assert run["images_cropped"] == 4 and len(run["worker_peak_rss"]) == 1
            assert run["main_peak_rss"] >= run["main_baseline_rss"] > 0 and min(run["worker_peak_rss"]) > 0
    assert [run["source"] for run in result["runs"]["hf"]] == ["HFImages", "HFImages"]
    assert all(math.isfinite(v) for figures in result["growth"].values() for v in figures.values())
    listing = result["large_folder_listing_rss_over_baseline"]  # a tiny listing may not add a page
    assert set(listing) >= {"torchvision"} and all(math.isfinite(v) and v >= 0 for v in listing.values())


def test_generated_images_are_distinct_photo_jpegs():
    jpegs = data_memory.photo_jpegs(5)
    assert len(set(jpegs)) == 5 and all(j[:2] == b"\xff\xd8" for j in jpegs)
