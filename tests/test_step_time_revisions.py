"""The revision-against-revision step-time benchmark, tiny: one round of MoCo v2, HEAD against the working tree."""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import step_time_revisions  # noqa: E402


def test_two_trees_are_timed_side_by_side_and_reported_as_a_ratio(tmp_path):
    out = tmp_path / "r.json"
    report = step_time_revisions.main(["--before", "HEAD", "--methods", "moco", "--rounds", "1", "--steps", "1",
                                       "--warmup", "0", "--batch-size", "8", "--size", "8", "--width", "4",
                                       "--out", str(out)])
    assert json.loads(out.read_text()) == report
    (row,) = report["results"]
    assert row["method"] == "moco" and row["before_median_step_s"] > 0 and row["after_median_step_s"] > 0
    assert row["ratio_after_over_before"] > 0
    assert report["before"] == "HEAD" and report["after"] == "working tree"
