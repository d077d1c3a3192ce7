"""The reproduction benchmark's summary, table and method specs, and the docs hook that shows them."""

import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "docs" / "hooks"))

import benchmark_tables  # noqa: E402
import reproduce  # noqa: E402


def runs():
    values = {"moco": [0.50, 0.52, 0.54], "sce": [0.60, 0.61, 0.62], "sane": [0.53, 0.55, 0.57]}
    return [
        {"method": name, "seed": seed, "knn_k200_t0.1": v, "knn_k50_t0.05": v - 0.01, "linear_probe": v + 0.1,
         "train_seconds": 10.0 + seed}
        for name, accuracies in values.items() for seed, v in enumerate(accuracies)
    ]


def test_summary_gives_mean_and_sample_std_and_compares_with_the_first_method():
    moco, sce, sane = reproduce.summarize(runs())
    assert moco["knn_k200_t0.1"]["mean"] == pytest.approx(0.52)
    assert moco["knn_k200_t0.1"]["std"] == pytest.approx(statistics.stdev([0.50, 0.52, 0.54]))
    assert moco["knn_k200_t0.1"]["n"] == 3 and moco["seeds"] == [0, 1, 2]
    assert sce["vs_moco"]["knn_k200_t0.1"]["difference"] == pytest.approx(0.09)
    assert sce["vs_moco"]["knn_k200_t0.1"]["beyond_spread"]
    assert sane["vs_moco"]["linear_probe"]["difference"] == pytest.approx(0.03)
    assert not sane["vs_moco"]["linear_probe"]["beyond_spread"]
    assert "vs_moco" not in moco


def test_the_table_shows_percent_mean_and_std_per_method():
    table = reproduce.markdown_table(reproduce.summarize(runs())).splitlines()
    assert table[0].startswith("| method | seeds | kNN k 200, T 0.1 | kNN k 50, T 0.05 | linear probe |")
    assert table[2].startswith("| moco | 3 | 52.00 ± 2.00 | 51.00 ± 2.00 | 62.00 ± 2.00 | 11 ± 1 |")
    assert len(table) == 5


def test_method_specs_name_registered_method_recipe_and_flags():
    spec = reproduce.parse_method("sce-long=sce_cifar10.yaml:--epochs 3 --lam 0.4")
    assert (spec["registered"], spec["recipe"].name, spec["flags"]) == ("sce", "sce_cifar10.yaml", ["--epochs", "3", "--lam", "0.4"])
    assert reproduce.parse_method("moco=")["recipe"] is None
    assert reproduce.parse_method("fnc-moco-eliminate=")["registered"] == "fnc-moco"
    assert reproduce.parse_method("fnc-attract=")["registered"] == "fnc"
    with pytest.raises(ValueError, match="'simclr' names no registered method"):
        reproduce.parse_method("simclr=x.yaml")
    with pytest.raises(ValueError, match="recipe missing.yaml not found"):
        reproduce.parse_method("moco=missing.yaml")


def test_the_docs_show_a_results_file_with_its_own_table_and_chart(tmp_path):
    (tmp_path / "plain.json").write_text('{"benchmark": "x", "speed": 2.5}')
    (tmp_path / "table.json").write_text('{"benchmark": "y", "runs": [{"a": 1}]}')
    (tmp_path / "table.md").write_text("| method | kNN |\n|---|---|\n| moco | 50.00 ± 1.00 |\n")
    (tmp_path / "table.png").write_bytes(b"\x89PNG")
    markdown = benchmark_tables.results_markdown(tmp_path)
    assert "| speed | 2.5 |" in markdown
    assert "| moco | 50.00 ± 1.00 |" in markdown and "| a |" not in markdown
    assert "![table](benchmark-results/table.png)" in markdown and "plain.png" not in markdown


def test_false_negative_precision_is_reported_for_fnc_only():
    base = {"knn_k200_t0.1": 0.5, "knn_k50_t0.05": 0.5, "linear_probe": 0.5, "cancelled_precision": 0.3}
    summary = reproduce.summarize([{**base, "method": "sce", "seed": 0}, {**base, "method": "fnc-attract", "seed": 0}])
    assert "cancelled_precision" not in summary[0] and summary[1]["cancelled_precision"]["mean"] == 0.3
    assert reproduce.markdown_table(summary).splitlines()[2] == "| sce | 1 | 50.00 ± 0.00 | 50.00 ± 0.00 | 50.00 ± 0.00 | – |"
