"""The revision-against-revision step-time benchmark, tiny: one round of MoCo v2, HEAD against the working
tree, and one of SCE from a revision before the method registry (built by class name there)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

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


def revision_before_the_registry() -> str | None:
    """The last revision without the method registry (its methods are classes), if the history holds it."""
    added = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "-1", "--",
                            "softcontrast/methods/registry.py"], cwd=ROOT, capture_output=True, text=True)
    if added.returncode != 0 or not added.stdout.strip():
        return None
    parent = subprocess.run(["git", "rev-parse", "--verify", "--quiet", f"{added.stdout.strip()}^"], cwd=ROOT,
                            capture_output=True, text=True)
    return parent.stdout.strip() or None


def test_a_revision_from_before_the_registry_is_timed_too(tmp_path):
    before = revision_before_the_registry()
    if before is None:
        pytest.skip("the history holds no revision from before the method registry")
    report = step_time_revisions.main(["--before", before, "--methods", "sce", "--rounds", "1", "--steps", "1",
                                       "--warmup", "0", "--batch-size", "8", "--size", "8", "--width", "4"])
    (row,) = report["results"]
    assert row["method"] == "sce" and row["before_median_step_s"] > 0 and row["after_median_step_s"] > 0
