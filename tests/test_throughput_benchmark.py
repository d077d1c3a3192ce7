"""The throughput benchmark, tiny: our side (every code path the CPU can run), lightly
beside it when installed, the step breakdown, and the docs table made from the JSON."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "docs" / "hooks"))

import benchmark_tables  # noqa: E402
import throughput  # noqa: E402
from softcontrast.data import load_source  # noqa: E402

TINY = ["--dataset", "digits", "--subset", "48", "--widths", "2", "--batch-size", "16", "--queue-size", "32",
        "--rounds", "1", "--steps", "1", "--warmup", "0", "--breakdown-steps", "1", "--device", "cpu"]
RESULTS = ROOT / "benchmarks" / "results"


def tiny_settings(**changes) -> throughput.Settings:
    values = {"width": 2, "variant": "eager", "batch_size": 16, "queue_size": 32, "lr": 0.06, "weight_decay": 5e-4,
              "sgd_momentum": 0.9, "ema": 0.99, "temperature": 0.2, "precision": "fp32",
              "device": torch.device("cpu"), "seed": 0, "search_backend": "torch"}
    return throughput.Settings(**(values | changes))


def run_in_own_process(out: Path, *flags: str) -> dict:
    """Runs the benchmark in a process of its own, so that a crash in a native kernel
    (channels_last, bf16, FAISS) fails this test alone instead of the whole suite."""
    command = [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), *TINY, *flags, "--out", str(out)]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(out.read_text())


def test_our_methods_run_and_report_without_lightly(tmp_path):
    out = tmp_path / "t.json"
    report = run_in_own_process(out, "--no-lightly", "--variants", "eager", "channels_last")
    assert [(r["variant"], r["contender"]) for r in report["results"]] == [
        ("eager", "moco"), ("eager", "sce"), ("channels_last", "moco"), ("channels_last", "sce")]
    for row in report["results"]:
        assert row["images_per_second"] > 0 and row["images_per_cpu_second"] > 0
        assert row["loader_worker_cpu_share"] == 0 and row["peak_memory_mb"] > 0
    assert report["ratios"] == []
    assert [set(b["cpu_ms"]) for b in report["breakdown"]] == [set(throughput.SEGMENTS)] * 4
    assert "GPU figures are still missing" in report["note"]
    assert "/" not in report["settings"]["dataset"] and str(tmp_path) not in report["command"]
    assert out.with_suffix(".md").read_text() == throughput.markdown_table(report)


def test_bf16_autocast_and_fnc_with_faiss_search_run_on_the_cpu(tmp_path):
    report = run_in_own_process(tmp_path / "b.json", "--no-lightly", "--variants", "eager", "--precision", "bf16",
                                "--methods", "moco", "fnc", "--search-backend", "faiss-flat")
    assert [(r["contender"], r["precision"]) for r in report["results"]] == [("moco", "bf16"), ("fnc", "bf16")]
    # The breakdown times every method's own step, published FNC's multi-view step included.
    assert [b["method"] for b in report["breakdown"]] == ["moco", "fnc"]
    assert [set(b["cpu_ms"]) for b in report["breakdown"]] == [set(throughput.SEGMENTS)] * 2


def test_lightly_runs_beside_us_and_its_loader_workers_cpu_is_counted(tmp_path):
    pytest.importorskip("lightly")
    # An epoch of 6 batches, so that the round's batches are made while the round runs.
    longer = ["--subset", "96", "--steps", "2", "--warmup", "1", "--breakdown-steps", "0"]
    report = throughput.main(TINY + longer + ["--variants", "eager", "--workers", "1", "--out", str(tmp_path / "l.json")])
    lightly = next(r for r in report["results"] if r["contender"] == "lightly-moco")
    assert 0 < lightly["loader_worker_cpu_share"] < 1
    assert [r["method"] for r in report["ratios"]] == ["moco", "sce"]
    moco = next(r for r in report["results"] if r["contender"] == "moco")
    ratio = report["ratios"][0]
    assert ratio["per_cpu_second"] == pytest.approx(
        moco["images_per_cpu_second"] / lightly["images_per_cpu_second"], rel=1e-2)
    assert "| 2 | eager | fp32 | moco | **" in (tmp_path / "l.md").read_text()


@pytest.mark.parametrize("method", ["moco", "sce", "fnc"])
def test_the_breakdown_times_the_methods_own_step(method):
    data = load_source("digits").train.subset(48)
    contenders = []
    for _ in range(2):
        torch.manual_seed(0)
        contenders.append(throughput.Ours(method, data, tiny_settings()))
    timed, plain = contenders
    segments = []
    for step in range(2):
        images, ids = next(timed.batches)
        next(plain.batches)
        torch.manual_seed(10 + step)
        timed_loss = timed.train_step(images, ids, segments.append)
        torch.manual_seed(10 + step)
        plain_loss = plain.train_step(images, ids)
        torch.testing.assert_close(timed_loss, plain_loss)
    assert segments == list(throughput.SEGMENTS) * 2
    assert timed.method.clock is None
    for mine, theirs in zip(timed.method.state_dict().values(), plain.method.state_dict().values()):
        torch.testing.assert_close(mine, theirs)


def test_our_methods_are_built_through_the_registry_with_the_shared_settings():
    settings = tiny_settings()
    moco, sce, fnc = (throughput.build_method(name, settings) for name in ("moco", "sce", "fnc"))
    assert (moco.memory.capacity, moco.momentum, moco.temperature) == (32, 0.99, 0.2)
    assert (sce.memory.capacity, sce.momentum, sce.temperature) == (32, 0.99, 0.1)  # SCE keeps its own τ
    assert fnc.memory.capacity == 16 * 16 and len(fnc.views.recipes) == 10 and fnc.temperature == 0.2


def test_bad_sizes_are_refused_with_the_flag_named(capsys):
    with pytest.raises(SystemExit) as exit_info:
        throughput.parse_args(["--batch-size", "64", "--queue-size", "32", "--no-lightly"])
    assert exit_info.value.code == 2
    assert "--queue-size 32 is smaller than --batch-size 64" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host synchronisation is observable on CUDA only")
def test_our_step_does_not_synchronise_with_the_host():
    data = load_source("digits").train.subset(48)
    for method in ("moco", "sce"):
        ours = throughput.Ours(method, data, tiny_settings(device=torch.device("cuda"), precision="bf16"))
        ours.step()
        assert throughput.sync_check(ours) == {"checked": True, "synchronisation_free": True}


def test_the_docs_show_the_table_generated_from_the_committed_json():
    report = json.loads((RESULTS / "throughput_cpu.json").read_text())
    table = (RESULTS / "throughput_cpu.md").read_text()
    assert table == throughput.markdown_table(report)
    page = benchmark_tables.results_markdown(RESULTS)
    assert "### throughput_cpu" in page and table in page
    for row in report["ratios"]:
        assert f"| {row['width']} | {row['variant']} | {row['precision']} | {row['method']} | " \
               f"**{row['per_cpu_second']:.3f}** |" in table
