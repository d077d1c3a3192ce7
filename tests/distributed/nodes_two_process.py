"""Run with torchrun --nproc_per_node 2: two processes that play two nodes.

Each process takes the host name ``node-<rank>``. ``<mode> <out> [folders]`` writes
``<out>/<mode>_rank{r}.json``:

* ``dirs``: the MoCo example with a node-local output directory per process
  (``<out>/node<rank>``): the exit status and what it printed on stderr;
* ``probe``: ``prepare_output_dir`` on one shared directory with equal process ids,
  on different and then on equal host names: the files each process wrote;
* ``resume``: ``resume_checkpoint(auto)`` on a shared directory with one checkpoint
  that process 1 does not see yet (a stale listing): the checkpoint each process got;
* ``listing <folder> <empty folder>``: ``imagefolder:<folder>`` loaded on both
  processes: how often each process listed a folder under it (``os.scandir``), and
  what it loaded; then the error each process raised for a folder without images.
"""

import contextlib
import io
import json
import os
import runpy
import sys
from pathlib import Path
from unittest import mock

import torch.distributed as dist
from accelerate import Accelerator

from softcontrast import checkpoints
from softcontrast.checkpoints import OutputWriteError, prepare_output_dir, resume_checkpoint
from softcontrast.data import DataSourceError, load_source

ROOT = Path(__file__).resolve().parents[2]
RANK = int(os.environ["RANK"])
TINY = ["--cpu", "--epochs", "1", "--train-subset", "64", "--batch-size", "16", "--queue-size", "32",
        "--width", "4", "--projector-hidden", "16", "--projector-out", "8"]


def node_local_output_dirs(out: Path) -> dict:
    sys.argv = ["moco.py", *TINY, "--output-dir", str(out / f"node{RANK}")]
    stderr, code = io.StringIO(), 0
    with contextlib.redirect_stderr(stderr):
        try:
            runpy.run_path(str(ROOT / "examples" / "moco.py"), run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code
    return {"code": code, "stderr": stderr.getvalue()}


def probes(out: Path) -> dict:
    Accelerator(cpu=True)
    written: dict[str, list[str]] = {}
    original = Path.write_bytes
    for hosts in ("different", "equal"):
        names = written[hosts] = []

        def write_bytes(path: Path, data: bytes, names: list[str] = names) -> int:
            names.append(path.name)
            return original(path, data)

        host = f"node-{RANK}" if hosts == "different" else "node"
        with mock.patch("os.getpid", return_value=4242), mock.patch("socket.gethostname", return_value=host), \
                mock.patch.object(Path, "write_bytes", write_bytes):
            try:
                prepare_output_dir(out / "shared")
            except OutputWriteError as error:
                names.append(f"error: {error}")
    return written


def resume(out: Path) -> dict:
    Accelerator(cpu=True)
    if RANK == 0:
        saved = out / "shared" / checkpoints.CHECKPOINT_DIR / "step_000000004"
        saved.mkdir(parents=True)
        (saved / checkpoints.RUN_CONFIG).write_text("{}")
        (saved / checkpoints.MARKER).write_text(json.dumps({"epoch": 1, "global_step": 4, "serial": 1}))
    dist.barrier()
    stale = mock.patch.object(checkpoints, "list_checkpoints", return_value=[]) if RANK == 1 else contextlib.nullcontext()
    with stale:
        chosen = resume_checkpoint(out / "shared", "auto")
    return {"checkpoint": None if chosen is None else chosen.path.name}


def listing(folder: Path, empty_folder: Path) -> dict:
    Accelerator(cpu=True)
    calls = {"scandir": 0}
    original = os.scandir

    def counted(path=".", *args, **kwargs):
        if Path(path).is_relative_to(folder):
            calls["scandir"] += 1
        return original(path, *args, **kwargs)

    with mock.patch.object(os, "scandir", counted):
        train = load_source(f"imagefolder:{folder}").train
        try:
            load_source(f"imagefolder:{empty_folder}")
            empty = "loaded"
        except DataSourceError as error:
            empty = str(error)
    return {"calls": calls, "labels": train.labels.tolist(), "classes": train.classes,
            "pixels": train.images.sum().item(), "empty": empty}


def main(mode: str, out: Path, *rest: str) -> None:
    with mock.patch("socket.gethostname", return_value=f"node-{RANK}"):
        if mode == "dirs":
            result = node_local_output_dirs(out)
        elif mode == "probe":
            result = probes(out)
        elif mode == "resume":
            result = resume(out)
        else:
            result = listing(Path(rest[0]), Path(rest[1]))
    (out / f"{mode}_rank{RANK}.json").write_text(json.dumps(result))
    if dist.is_initialized():  # a finished training run has closed it
        dist.barrier()  # no process leaves while another still talks to it
        dist.destroy_process_group()
    # Leave without C++ static destructors: under load, gloo's threads sometimes abort the
    # interpreter's exit ("terminate called without an active exception") after all is done.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]), *sys.argv[3:])
