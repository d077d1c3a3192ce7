"""A wheel built from the repository trains a method from another directory, recipes included."""

import json
import os
import shutil
import site
import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--cpu", "--epochs", "1", "--train-subset", "32", "--batch-size", "16", "--queue-size", "32", "--width", "4",
        "--knn-k", "5"]


def clean_env() -> dict[str, str]:
    """The environment without the repository on the path."""
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    return env


def run(command: list, cwd: Path) -> subprocess.CompletedProcess:
    completed = subprocess.run([str(part) for part in command], capture_output=True, text=True, timeout=300, cwd=cwd,
                               env=clean_env())
    assert completed.returncode == 0, (command, completed.stdout[-2000:], completed.stderr[-3000:])
    return completed


@pytest.mark.wheel
def test_an_installed_wheel_trains_outside_the_repository(tmp_path):
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the repository
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "runs", "site", "*.egg-info", "build",
                                                                "__pycache__", ".pytest_cache", "dist", "tests"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist",
         "."], cwd=source)
    (wheel,) = (tmp_path / "dist").glob("softcontrast-*.whl")
    environment = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(environment)
    python = environment / "bin" / "python"
    # The dependencies come from the running environment (itself perhaps a venv): its site-packages
    # go on the new one's path after the new one's own, without running their .pth files (so an
    # editable install of the repository there stays inactive).
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path)
    Path(purelib.stdout.strip(), "reuse_dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", wheel], cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([python, "-c", "import softcontrast; print(softcontrast.__file__)"], cwd=elsewhere).stdout.strip()
    assert Path(where).resolve().is_relative_to(environment.resolve()), where

    script = environment / "bin" / "softcontrast"
    trained = run([script, "train", "sce", *TINY, "--output-dir", elsewhere / "run"], cwd=elsewhere)
    summary = json.loads(trained.stdout.strip().splitlines()[-1])
    assert summary["method"] == "sce" and summary["epochs_done"] == 1
    assert (elsewhere / "run" / "backbone.pt").is_file() and (elsewhere / "run" / "metrics.jsonl").is_file()

    helped = run([python, "-m", "softcontrast", "train", "sce", "--config", "sce_cifar10", "--help"], cwd=elsewhere)
    assert "--temperature" in helped.stdout
    recipe = run([python, "-c", "from softcontrast.config import RECIPES, recipe_names; "
                                "print(recipe_names()); print((RECIPES / 'sce_cifar10.yaml').read_text())"],
                 cwd=elsewhere).stdout
    assert "sce_cifar10-cpu" in recipe and "warmup-epochs: 5" in recipe
