"""The evaluation memory benchmark, tiny: its JSON's structure, and positive, finite figures."""

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import evaluation_memory  # noqa: E402


def test_the_benchmark_writes_positive_finite_figures(tmp_path):
    output = tmp_path / "evaluation_memory.json"
    evaluation_memory.main(["--train", "600", "--test", "80", "--dim", "16", "--classes", "4", "--k", "10",
                            "--small-train", "300", "--small-test", "50", "--probe-iterations", "3",
                            "--output", str(output)])
    report = json.loads(output.read_text())
    assert report["sizes"]["train"] == 600 and report["sizes"]["small_train"] == 300
    assert set(report["results"]) == {"knn_chunked", "knn_small_chunked", "knn_small_unchunked", "probe"}
    for result in report["results"].values():
        assert result["seconds"] > 0 and math.isfinite(result["seconds"])
        assert result["peak_increase_mib"] >= 0 and math.isfinite(result["peak_increase_mib"])
        assert 0.25 < result["value"] <= 1  # well above chance (4 classes): the features are structured
    assert report["same_accuracy_small"] is True
    assert all(math.isfinite(value) and value >= 0 for value in report["unchunked_over_chunked"].values())
