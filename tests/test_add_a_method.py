"""docs/add-a-method.md end to end: a user's method in their own file trains, evaluates and is benchmarked.

The page's ``my_methods.py`` (its first Python block) is written to a scratch folder,
and the page's shell commands run there as written: ``softcontrast train --plugin``,
``softcontrast evaluate`` and the throughput benchmark.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = (ROOT / "docs" / "add-a-method.md").read_text(encoding="utf-8")
BASH_BLOCK = re.compile(r"^```bash[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
MY_METHODS = re.compile(r"MY_METHODS = '''\n(.*?)'''", re.DOTALL)


def page_commands() -> list[list[str]]:
    """The page's shell commands, continuation lines joined, with the commands this interpreter runs."""
    commands = []
    for block in BASH_BLOCK.findall(PAGE):
        words = shlex.split(block.replace("\\\n", " "))
        if words[0] == "softcontrast":
            words = [sys.executable, "-m", "softcontrast", *words[1:]]
        elif words[:2] == ["python", "benchmarks/throughput.py"]:
            words = [sys.executable, str(ROOT / "benchmarks" / "throughput.py"), *words[2:]]
        commands.append(words)
    return commands


def test_the_pages_method_trains_evaluates_and_is_benchmarked_from_its_own_file(tmp_path):
    (tmp_path / "my_methods.py").write_text(MY_METHODS.search(PAGE).group(1))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    train, evaluate, benchmark = page_commands()
    for command in (train, evaluate, benchmark):
        completed = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert completed.returncode == 0, f"{command}\n{completed.stderr[-3000:]}"
    run = tmp_path / "runs" / "smooth"
    assert (run / "backbone.pt").is_file()
    saved = json.loads(next((run / "checkpoints").glob("*/run_config.json")).read_text())
    assert saved["method"] == "smooth" and saved["eps"] == 0.2 and saved["plugins"][0].endswith("my_methods.py")
    report = json.loads((run / "eval" / "eval.json").read_text())
    assert 0 < report["knn"]["trained"]["k=200,T=0.1"] <= 1
    measured = json.loads((tmp_path / "runs" / "throughput.json").read_text())
    assert {"moco", "smooth"} <= {result["contender"] for result in measured["results"]}
