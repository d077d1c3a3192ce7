"""Checkpoints that survive a kill, NaN never saved, and one-line CLI errors.

The kill tests run the real example script in subprocesses (through
``kill_harness.py``, which only chooses the moment) and SIGKILL them.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import free_port
from safetensors.torch import load_file
from test_training import fit, tiny_sce

from softcontrast.checkpoints import (
    MARKER,
    PARTIAL_PREFIX,
    RUN_CONFIG,
    Checkpoint,
    CheckpointMismatchError,
    NoCheckpointError,
    OutputWriteError,
    check_compatible,
    find_resume,
    incomplete_folders,
    list_checkpoints,
    rewind_metrics,
)
from softcontrast.cli import build_parser, resolve, train
from softcontrast.components.backbones import resnet
from softcontrast.errors import USER_ERRORS
from softcontrast.finite import FiniteGuard, NonFiniteError, check_finite_weights
from softcontrast.methods import ContrastiveMethod, MoCoConfig
from softcontrast.methods.registry import _REGISTRY, method_spec, register
from softcontrast.training import make_accelerator

ROOT = Path(__file__).resolve().parent.parent
HARNESS = Path(__file__).resolve().parent / "kill_harness.py"
MOCO = ROOT / "examples" / "moco.py"
NODES = Path(__file__).resolve().parent / "distributed" / "nodes_two_process.py"
# 96 digits, 16 per step: 6 steps per epoch on one process, 12 in all; saves at steps 4, 6, 8, 12.
FLAGS = ["--cpu", "--epochs", "2", "--train-subset", "96", "--batch-size", "16", "--queue-size", "32",
         "--width", "4", "--projector-hidden", "32", "--projector-out", "16", "--log-every", "1",
         "--checkpoint-every", "1", "--checkpoint-every-steps", "4", "--keep-checkpoints", "3"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def steps_of(folder: Path) -> list[int]:
    return [c.global_step for c in list_checkpoints(folder / "checkpoints")]


def logged_losses(output_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert len(steps) == len(set(steps)), f"steps logged twice: {steps}"
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def assert_same_losses(run: dict[int, float], reference: dict[int, float]) -> None:
    assert sorted(run) == sorted(reference)
    for step, loss in reference.items():
        assert abs(run[step] - loss) <= 1e-6, (step, run[step], loss)


def launch(command: list[str], control: Path) -> subprocess.Popen:
    """Starts ``command`` with its output in ``control/output.txt`` (a pipe nobody reads could fill and block it)."""
    control.mkdir(parents=True, exist_ok=True)
    output = open(control / "output.txt", "w")
    return subprocess.Popen(command, env=ENV, stdout=output, stderr=subprocess.STDOUT)


def kill_when_paused(process: subprocess.Popen, control: Path, processes: int = 1, timeout: float = 400) -> None:
    """Waits for the hook to pause the run, then SIGKILLs every training process."""
    deadline = time.monotonic() + timeout
    while not (control / "paused").exists():
        if process.poll() is not None:
            output = (control / "output.txt").read_text()
            raise AssertionError(f"the run ended before the hook paused it:\n{output[-3000:]}")
        if time.monotonic() > deadline:
            process.kill()
            raise AssertionError("the hook never paused the run")
        time.sleep(0.2)
    time.sleep(0.5)  # let the other processes reach their barrier
    for rank in range(processes):
        os.kill(int((control / f"pid_{rank}").read_text()), signal.SIGKILL)
    process.kill()
    process.wait(timeout=60)


def run_to_end(command: list[str]) -> subprocess.CompletedProcess:
    completed = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def harness(control: Path, hook: str, output_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(HARNESS), str(control), hook, str(MOCO), *FLAGS, "--output-dir", str(output_dir),
            *extra]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[int, float]:
    output_dir = tmp_path_factory.mktemp("straight")
    run_to_end([sys.executable, str(MOCO), *FLAGS, "--output-dir", str(output_dir)])
    assert steps_of(output_dir) == [6, 8, 12]  # keep 3 of 4, 6, 8, 12
    return logged_losses(output_dir)


def test_killed_mid_epoch_resumes_with_the_same_losses(tmp_path, uninterrupted):
    output_dir, control = tmp_path / "run", tmp_path / "control"
    process = launch(harness(control, "step:10", output_dir), control)
    kill_when_paused(process, control)
    assert steps_of(output_dir) == [4, 6, 8] and not (output_dir / "backbone.pt").exists()
    resumed = run_to_end([sys.executable, str(MOCO), *FLAGS, "--output-dir", str(output_dir), "--resume", "latest"])
    assert "resuming from" in resumed.stderr and "step_000000008 (step 8; epochs done: 1)" in resumed.stderr
    assert_same_losses(logged_losses(output_dir), uninterrupted)
    assert (output_dir / "backbone.pt").is_file()


def test_killed_while_saving_resumes_from_the_last_complete_checkpoint(tmp_path, uninterrupted):
    output_dir, control = tmp_path / "run", tmp_path / "control"
    process = launch(harness(control, "save:4", output_dir), control)  # the save at step 12
    kill_when_paused(process, control)
    partial = output_dir / "checkpoints" / (PARTIAL_PREFIX + "step_000000012")
    assert (partial / MARKER).is_file() and (partial / "model.safetensors").is_file()
    assert steps_of(output_dir) == [4, 6, 8]
    resumed = run_to_end([sys.executable, str(MOCO), *FLAGS, "--output-dir", str(output_dir), "--resume", "latest"])
    assert "step_000000008 (step 8; epochs done: 1)" in resumed.stderr
    assert_same_losses(logged_losses(output_dir), uninterrupted)
    assert steps_of(output_dir) == [6, 8, 12] and not partial.exists()


@pytest.mark.distributed
def test_two_processes_killed_while_saving_resume_with_the_same_losses(tmp_path):
    # 128 digits, 16 per process: 4 steps per epoch, 8 in all; saves at 3, 4, 6, 8.
    # Shuffle-BN draws from the shared stream, the views from each process's own.
    flags = ["--train-subset", "128", "--checkpoint-every-steps", "3", "--queue-size", "64", "--shuffle-bn",
             "--split-bn-groups", "2"]

    def torchrun(control: Path, hook: str, output_dir: Path, port: int, *extra: str) -> list[str]:
        return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
                *harness(control, hook, output_dir, *flags, *extra)[1:]]

    straight = tmp_path / "straight"
    run_to_end(torchrun(tmp_path / "c0", "none", straight, free_port()))
    killed, control = tmp_path / "killed", tmp_path / "c1"
    process = launch(torchrun(control, "save:4", killed, free_port()), control)  # the save at step 8
    kill_when_paused(process, control, processes=2)
    assert steps_of(killed) == [3, 4, 6]
    # every process's random streams are in every checkpoint
    assert all((c.path / f"random_streams_{rank}.pt").is_file() for c in list_checkpoints(killed / "checkpoints")
               for rank in range(2))
    resumed = run_to_end(torchrun(tmp_path / "c2", "none", killed, free_port(), "--resume", "latest"))
    assert "step_000000006 (step 6; epochs done: 1)" in resumed.stderr
    assert_same_losses(logged_losses(killed), logged_losses(straight))
    assert len(logged_losses(straight)) == 8


@pytest.mark.distributed
def test_node_local_output_dirs_stop_every_process_at_start_with_one_line(tmp_path, run_two_processes):
    run_two_processes(NODES, "dirs", tmp_path)
    for rank in range(2):
        report = json.loads((tmp_path / f"dirs_rank{rank}.json").read_text())
        lines = report["stderr"].strip().splitlines()
        assert report["code"] == 2 and "Traceback" not in report["stderr"], report["stderr"][-2000:]
        assert lines[-1].startswith("moco.py: error: ") and "is not shared: process 1 (host node-1)" in lines[-1]
        assert "point --output-dir at a filesystem all nodes share" in lines[-1]
        assert not (tmp_path / f"node{rank}" / "checkpoints").exists()


@pytest.mark.distributed
def test_write_probes_of_two_nodes_never_collide_even_with_equal_process_ids(tmp_path, run_two_processes):
    run_two_processes(NODES, "probe", tmp_path)
    written = [json.loads((tmp_path / f"probe_rank{rank}.json").read_text()) for rank in range(2)]
    for hosts in ("different", "equal"):
        names = [written[rank][hosts] for rank in range(2)]
        assert all(len(n) == 1 and not n[0].startswith("error") for n in names), names
        assert names[0] != names[1]
    assert list((tmp_path / "shared").iterdir()) == []


def test_every_process_resumes_from_the_checkpoint_the_main_process_chose(tmp_path, run_two_processes):
    """Process 1's listing of the shared directory lags (it sees no checkpoint yet): it
    still resumes from the main process's choice instead of starting fresh."""
    run_two_processes(NODES, "resume", tmp_path)
    chosen = [json.loads((tmp_path / f"resume_rank{rank}.json").read_text())["checkpoint"] for rank in range(2)]
    assert chosen == ["step_000000004", "step_000000004"]


def test_a_failed_save_is_one_clear_line_and_keeps_the_previous_checkpoint(tmp_path):
    """Also the end-to-end check of the CLI: exit status 2, one line, no traceback."""
    output_dir, control = tmp_path / "run", tmp_path / "control"
    control.mkdir()
    # files are limited to 16 KiB after the first save (step 4), as on a full disk
    command = harness(control, "fsize:1", output_dir, "--log-every", "100")
    completed = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 2, completed.stderr[-3000:]
    error = completed.stderr.strip().splitlines()[-1]
    assert "Traceback" not in completed.stderr
    assert "could not write checkpoint" in error and "step_000000006" in error
    assert "the previous checkpoint" in error and "step_000000004 is intact" in error
    assert steps_of(output_dir) == [4]
    assert not [p for p in (output_dir / "checkpoints").iterdir() if p.name.startswith(".")]


def write_checkpoint(folder: Path, step: int, serial: int, settings: dict | None = None, marker: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / RUN_CONFIG).write_text(json.dumps(settings or {}))
    if marker:
        (folder / MARKER).write_text(json.dumps({"epoch": 0, "global_step": step, "serial": serial}))
    return folder


def test_latest_takes_only_complete_checkpoints_and_the_newest_save(tmp_path):
    directory = tmp_path / "checkpoints"
    write_checkpoint(directory / "step_000000004", 4, serial=1)
    write_checkpoint(directory / "step_000000008", 8, serial=2)
    write_checkpoint(directory / "step_000000012", 12, serial=3, marker=False)  # an interrupted in-place write
    write_checkpoint(directory / "epoch_0004", 24, serial=9, marker=False)  # old in-place layout, no progress
    write_checkpoint(directory / (PARTIAL_PREFIX + "step_000000016"), 16, serial=4)
    assert find_resume(tmp_path, "latest").global_step == 8
    assert find_resume(tmp_path, "auto").global_step == 8
    assert sorted(p.name for p in incomplete_folders(directory)) == ["epoch_0004", "step_000000012"]
    # resumed from step 4 and saved step 6 afterwards: latest follows the saves, not the step numbers
    write_checkpoint(directory / "step_000000006", 6, serial=3)
    assert find_resume(tmp_path, "latest").global_step == 6
    with pytest.raises(NoCheckpointError, match="not a softcontrast checkpoint"):
        find_resume(tmp_path, str(directory / "step_000000012"))


def test_auto_starts_fresh_on_an_empty_output_dir_and_latest_refuses(tmp_path):
    assert find_resume(tmp_path / "empty", "auto") is None
    with pytest.raises(NoCheckpointError, match="no checkpoint"):
        find_resume(tmp_path / "empty", "latest")
    result = fit(tiny_sce(), tmp_path / "empty", epochs=1, resume="auto", checkpoint_every_steps=0)
    assert result.epochs_done == 1 and len(result.losses) == 6
    assert steps_of(tmp_path / "empty") == [6]


def test_mid_epoch_checkpoints_resume_exactly_and_only_the_newest_are_kept(tmp_path):
    straight = fit(tiny_sce(), tmp_path / "straight", epochs=2, checkpoint_every=0, checkpoint_every_steps=4,
                   keep_checkpoints=2)
    assert steps_of(tmp_path / "straight") == [8, 12]  # saves at 4, 8, 12; 6 steps per epoch
    assert not [p for p in (tmp_path / "straight" / "checkpoints").iterdir() if p.name.startswith(".")]
    resumed_dir = tmp_path / "resumed" / "checkpoints"
    resumed_dir.mkdir(parents=True)
    shutil.copytree(tmp_path / "straight" / "checkpoints" / "step_000000008", resumed_dir / "step_000000008")
    resumed = fit(tiny_sce(), tmp_path / "resumed", epochs=2, checkpoint_every=0, checkpoint_every_steps=4,
                  keep_checkpoints=2, resume="latest")
    assert resumed.losses == straight.losses[8:]
    assert steps_of(tmp_path / "resumed") == [8, 12]


def test_checkpoints_of_the_old_in_place_layout_resume_and_partial_ones_are_skipped(tmp_path, capsys):
    straight = fit(tiny_sce(), tmp_path / "straight", epochs=2)
    saved = tmp_path / "straight" / "checkpoints"
    old = tmp_path / "old" / "checkpoints"
    shutil.copytree(saved / "step_000000006", old / "epoch_0001", ignore=shutil.ignore_patterns(MARKER))
    shutil.copytree(saved / "step_000000012", old / "epoch_0002", ignore=shutil.ignore_patterns(MARKER, RUN_CONFIG))
    settings = json.loads((old / "epoch_0001" / RUN_CONFIG).read_text())
    del settings["num_processes"], settings["checkpoint_every_steps"], settings["keep_checkpoints"]  # not yet known
    (old / "epoch_0001" / RUN_CONFIG).write_text(json.dumps(settings))
    resumed = fit(tiny_sce(), tmp_path / "old", epochs=2, resume="latest")
    assert resumed.losses == straight.losses[6:]
    err = capsys.readouterr().err
    assert "skipping incomplete checkpoint folder" in err and "epoch_0002" in err
    assert "resuming from" in err and "epoch_0001 (step 6; epochs done: 1)" in err


def poisoned(method: ContrastiveMethod, nan_step: int) -> ContrastiveMethod:
    """``method`` whose loss gains a NaN part at one chosen step (a forward hook; test only)."""
    steps = []

    def poison(module, inputs, output):
        steps.append(None)
        part = torch.zeros((), device=inputs[0].device)
        if len(steps) == nan_step:
            part = part * float("nan")
        output.metrics["loss_poison"] = part
        output.loss = output.loss + part
        return output

    method.register_forward_hook(poison)
    return method


def test_nan_at_a_chosen_step_is_named_and_no_checkpoint_follows_it(tmp_path):
    method = poisoned(tiny_sce(queue_size=32), nan_step=5)
    with pytest.raises(NonFiniteError, match=r"step 5 \(epoch 1\): loss=nan, loss_poison=nan") as caught:
        fit(method, tmp_path, epochs=2, log_every=100, checkpoint_every_steps=2)
    assert "the newest is" in str(caught.value) and "step 4" in str(caught.value)
    assert steps_of(tmp_path) == [2, 4]
    assert not (tmp_path / "backbone.pt").exists()
    for folder in list_checkpoints(tmp_path / "checkpoints"):
        assert all(torch.isfinite(t).all() for t in load_file(folder.path / "model.safetensors").values())


def test_the_guard_names_the_first_bad_step_without_reading_the_device_before(tmp_path):
    accelerator = make_accelerator(cpu=True)
    guard = FiniteGuard("cpu", steps_per_epoch=3)
    guard.check(accelerator)  # nothing observed yet
    guard.observe(1, {"loss": torch.tensor(1.0), "loss_mm": torch.tensor(0.5)})
    guard.check(accelerator)
    guard.observe(2, {"loss": torch.tensor(float("inf")), "loss_mm": torch.tensor(float("inf"))})
    guard.observe(4, {"loss": torch.tensor(float("nan")), "loss_mm": torch.tensor(1.0)})
    with pytest.raises(NonFiniteError, match=r"step 2 \(epoch 1\): loss=inf, loss_mm=inf\. "):
        guard.check(accelerator)
    model = torch.nn.Linear(2, 2)
    check_finite_weights(model, accelerator, 3)
    with torch.no_grad():
        model.bias[1] = float("nan")
    with pytest.raises(NonFiniteError, match=r"after step 3 \(bias\)"):
        check_finite_weights(model, accelerator, 3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host synchronisation is observable on CUDA only")
def test_observing_a_step_does_not_synchronise_with_the_host():
    guard = FiniteGuard("cuda", steps_per_epoch=10)
    parts = {"loss": torch.tensor(1.0, device="cuda"), "loss_mm": torch.tensor(float("nan"), device="cuda")}
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(1, 4):
            guard.observe(step, parts)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    with pytest.raises(NonFiniteError, match="step 1 "):
        guard.check(make_accelerator(cpu=False))


def test_metrics_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 0, "knn_accuracy": 0.1}\n{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.5}\n{"st')
    rewind_metrics(log, 1)
    assert log.read_text() == '{"step": 0, "knn_accuracy": 0.1}\n{"step": 1, "loss": 2.0}\n'


# -- one-line CLI errors ---------------------------------------------------------------------------

TINY = ["--cpu", "--epochs", "1", "--train-subset", "64", "--batch-size", "16", "--queue-size", "32", "--width", "4"]


def user_error(tmp_path: Path, capsys, *flags: str) -> str:
    with pytest.raises(SystemExit) as exit_:
        train("moco", [*TINY, "--output-dir", str(tmp_path / "out"), *flags], prog="moco.py")
    assert exit_.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1].startswith("moco.py: error: ") and "Traceback" not in "\n".join(lines)
    return lines[-1]


def test_user_errors_are_one_line_with_exit_status_2(tmp_path, capsys):
    assert "lr must be > 0" in user_error(tmp_path, capsys, "--lr", "-1")
    assert "keep_checkpoints must be >= 0" in user_error(tmp_path, capsys, "--keep-checkpoints", "-1")
    assert "npz file not found" in user_error(tmp_path, capsys, "--dataset", f"npz:{tmp_path}/none.npz")
    assert "holds no checkpoint" in user_error(tmp_path, capsys, "--resume", "latest")
    assert "not a softcontrast checkpoint" in user_error(tmp_path, capsys, "--resume", str(tmp_path))
    (tmp_path / "file").write_text("")
    assert "cannot write to the output directory" in user_error(tmp_path, capsys, "--output-dir",
                                                                str(tmp_path / "file" / "run"))
    spec = method_spec("moco")
    settings = {**resolve(spec, vars(build_parser(spec).parse_args(TINY))).saved(64), "lr": 0.5}
    write_checkpoint(tmp_path / "out" / "checkpoints" / "step_000000002", 2, 1, settings)
    assert "other settings (lr: checkpoint 0.5, this run 0.3)" in user_error(tmp_path, capsys, "--resume", "latest")


def test_programming_errors_keep_their_traceback(tmp_path):
    def broken_build(config, backbone, setup):
        raise TypeError("a bug")

    register("broken", MoCoConfig, broken_build)
    try:
        with pytest.raises(TypeError, match="a bug"):
            train("broken", [*TINY, "--output-dir", str(tmp_path)])
    finally:
        del _REGISTRY["broken"]


def test_checkpoint_errors_are_the_kinds_the_cli_reports():
    for error in (CheckpointMismatchError, NoCheckpointError, OutputWriteError, NonFiniteError):
        assert issubclass(error, USER_ERRORS)
    assert not issubclass(TypeError, USER_ERRORS) and not issubclass(RuntimeError, USER_ERRORS)


def test_a_methods_state_from_before_the_one_step_redesign_loads_under_todays_names():
    """A checkpoint of the method classes named the memory ``queue`` (``keys`` for MoCo's queue, no view
    indices) and SANE's µ ``target_builder.mu``: it loads into today's method with the same values."""
    torch.manual_seed(0)
    for name, overrides in (("moco", {"queue_size": 8}), ("sane", {"queue_size": 8})):
        method = method_spec(name)(resnet("resnet18", width=4), queue_size=overrides["queue_size"])
        method.memory.enqueue(torch.randn(3, method.memory.embeddings.shape[1]), torch.tensor([4, 5, 6]))
        if name == "sane":
            method.mixed.labels.mu.fill_(0.25)
        old = {key.replace("memory.embeddings", "queue.keys").replace("memory.", "queue.")
               .replace("mixed.labels.mu", "target_builder.mu"): value.clone()
               for key, value in method.state_dict().items() if key != "memory.views"}
        restored = method_spec(name)(resnet("resnet18", width=4), queue_size=overrides["queue_size"])
        restored.load_state_dict(old)
        for key, value in method.state_dict().items():
            assert torch.equal(restored.state_dict()[key], value), key
        assert restored.memory.views.tolist() == [0, 0, 0] + [-1] * 5


def test_settings_of_a_checkpoint_from_before_the_configs_are_compared_in_todays_names(tmp_path):
    folder = tmp_path / "step_000000004"
    folder.mkdir()
    old = {"method": "sce", "tau": 0.1, "no_cifar_stem": False, "crop_min_scale": None, "epochs": 3}
    (folder / RUN_CONFIG).write_text(json.dumps(old))
    checkpoint = Checkpoint(folder, epoch=1, global_step=4, serial=4)
    check_compatible(checkpoint, {"method": "sce", "temperature": 0.1, "cifar_stem": True, "crop_min_scale": 0.8,
                                  "epochs": 3})
    with pytest.raises(CheckpointMismatchError, match="temperature: checkpoint 0.1, this run 0.2"):
        check_compatible(checkpoint, {"method": "sce", "temperature": 0.2, "cifar_stem": True, "epochs": 3})
