"""Checkpoints that survive a kill: atomic saves, complete-only listing, resume, pruning.

A checkpoint is the Accelerate state (model with its queue, optimizer, scaler,
every process's random states, the trainer's position, which sets every schedule),
every process's own objects (``<name>_<process>.pt``: the method's random streams)
plus the run's settings. It is written into a hidden folder ``checkpoints/.partial-step_NNNNNNNNN``
beside its final place; the last file written is ``checkpoint.json``, and only then
is the folder renamed to ``checkpoints/step_NNNNNNNNN`` (one atomic rename). A run
killed at any moment therefore leaves every ``step_*`` folder either complete or
absent; a folder without ``checkpoint.json`` is skipped. (Earlier versions wrote
``checkpoints/epoch_NNNN`` in place, ``run_config.json`` last: such a folder counts
as complete when that file exists, and is older than any new save.)

``checkpoint.json`` records the epoch and global step the state belongs to, and a
save serial: ``latest`` is the most recently saved complete checkpoint, so a run
resumed from an older checkpoint never jumps back to the abandoned newer ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from accelerate import Accelerator

from softcontrast.components.distributed import gather_objects, on_main_process, rank
from softcontrast.settings import upgrade_settings

CHECKPOINT_DIR = "checkpoints"
RUN_CONFIG = "run_config.json"
MARKER = "checkpoint.json"
PARTIAL_PREFIX = ".partial-"
DELETING_PREFIX = ".deleting-"

#: Run settings that may change between a checkpoint and its resumption.
RESUMABLE_KEYS = frozenset({
    "resume", "output_dir", "stop_after_epochs", "log_every", "knn_every", "knn_test_subset", "num_workers", "decode_on",
    "checkpoint_every", "checkpoint_every_steps", "keep_checkpoints",
})

_NAME = re.compile(r"^step_(\d+)$")
#: Epoch-end checkpoints of earlier versions, written in place: complete once ``run_config.json`` exists.
_LEGACY_NAME = re.compile(r"^epoch_(\d+)$")
_PROGRESS_FILE = "custom_checkpoint_0.pkl"


class Stateful(Protocol):
    """Anything with ``state_dict`` and ``load_state_dict``."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def per_process_file(folder: Path, name: str, process_index: int) -> Path:
    """Where process ``process_index`` keeps its object ``name`` in checkpoint ``folder``."""
    return folder / f"{name}_{process_index}.pt"


class CheckpointMismatchError(ValueError):
    """A checkpoint written by a run with other settings."""


class NoCheckpointError(FileNotFoundError):
    """``resume`` names no complete checkpoint."""


class OutputWriteError(OSError):
    """The output directory, or a checkpoint in it, cannot be written."""


@dataclass(frozen=True)
class Checkpoint:
    """A complete checkpoint on disk.

    Attributes:
        path: its folder.
        epoch: epochs finished when it was saved.
        global_step: optimizer steps taken when it was saved.
        serial: save order within the output directory (higher is newer).
    """

    path: Path
    epoch: int
    global_step: int
    serial: int

    def describe(self) -> str:
        """``<path> (step S; epochs done: E)``."""
        return f"{self.path} (step {self.global_step}; epochs done: {self.epoch})"


def checkpoint_name(global_step: int) -> str:
    """Folder name of the checkpoint at ``global_step`` (names sort by step)."""
    return f"step_{global_step:09d}"


def read_checkpoint(path: str | Path) -> Checkpoint | None:
    """The checkpoint in folder ``path``, or ``None`` if the folder is not a complete one."""
    path = Path(path)
    if not (path / RUN_CONFIG).is_file():
        return None
    try:
        if _LEGACY_NAME.match(path.name) and not (path / MARKER).exists():
            progress = torch.load(path / _PROGRESS_FILE, weights_only=True)
            return Checkpoint(path, int(progress["epoch"]), int(progress["global_step"]), 0)
        marker = json.loads((path / MARKER).read_text())
        return Checkpoint(path, int(marker["epoch"]), int(marker["global_step"]), int(marker["serial"]))
    except (OSError, ValueError, KeyError, TypeError, RuntimeError):
        return None


def list_checkpoints(directory: str | Path) -> list[Checkpoint]:
    """The complete checkpoints in ``directory``, oldest save first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [read_checkpoint(entry) for entry in directory.iterdir()
             if (_NAME.match(entry.name) or _LEGACY_NAME.match(entry.name)) and entry.is_dir()]
    return sorted((c for c in found if c is not None), key=lambda c: (c.serial, c.global_step))


def incomplete_folders(directory: str | Path) -> list[Path]:
    """Folders in ``directory`` that look like checkpoints but are not complete (skipped on resume)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return sorted(
        entry for entry in directory.iterdir()
        if entry.is_dir() and (entry.name.startswith(("epoch_", "step_")) and read_checkpoint(entry) is None)
    )


def resume_checkpoint(output_dir: str | Path, resume: str | None) -> Checkpoint | None:
    """:func:`find_resume` chosen by the main process and handed to every process.

    Every process resumes from the same checkpoint even when a node's view of the
    shared directory lags behind (a stale listing cache); called by all processes
    together. Raises what :func:`find_resume` raises, on every process.
    """
    return on_main_process(lambda: find_resume(output_dir, resume))


def find_resume(output_dir: str | Path, resume: str | None) -> Checkpoint | None:
    """The checkpoint a run resumes from.

    Args:
        output_dir: the run's output directory.
        resume: ``None`` (start fresh), ``latest`` (the newest complete checkpoint;
            an error when there is none), ``auto`` (the newest complete checkpoint,
            else start fresh) or a checkpoint folder.

    Returns:
        The checkpoint, or ``None`` to start fresh.

    Raises:
        NoCheckpointError: ``latest`` finds no complete checkpoint, or the folder is
            not a complete checkpoint.
    """
    if resume is None:
        return None
    directory = Path(output_dir) / CHECKPOINT_DIR
    if resume in ("latest", "auto"):
        complete = list_checkpoints(directory)
        if complete:
            return complete[-1]
        if resume == "auto":
            return None
        raise NoCheckpointError(
            f"resume=latest but {directory} holds no checkpoint (only complete ones count): "
            "start without --resume, or use --resume auto to start fresh when there is none"
        )
    checkpoint = read_checkpoint(resume)
    if checkpoint is None:
        raise NoCheckpointError(
            f"{resume} is not a softcontrast checkpoint (no {MARKER} and {RUN_CONFIG}; an interrupted save "
            f"leaves none): check the path, or use --resume latest"
        )
    return checkpoint


def check_compatible(checkpoint: Checkpoint, run_config: dict[str, Any]) -> None:
    """Refuses a checkpoint whose saved settings differ from ``run_config``.

    Settings in :data:`RESUMABLE_KEYS` may differ, and settings the checkpoint does
    not record (added by a later version) are not compared. Settings of an earlier
    version are compared in today's names (:func:`~softcontrast.settings.upgrade_settings`).

    Raises:
        CheckpointMismatchError: names each differing setting.
    """
    saved = json.loads((checkpoint.path / RUN_CONFIG).read_text())
    from_settings_of_old = "plugins" not in saved  # written before the settings came from the configs
    saved = upgrade_settings(saved)
    different = {
        key: (saved.get(key), value)
        for key, value in json.loads(json.dumps(run_config, default=str)).items()
        if key not in RESUMABLE_KEYS and key in saved and saved[key] != value
        and not (from_settings_of_old and saved[key] is None)  # there None was "the default", resolved later
    }
    if different:
        described = ", ".join(f"{k}: checkpoint {a!r}, this run {b!r}" for k, (a, b) in sorted(different.items()))
        raise CheckpointMismatchError(
            f"checkpoint {checkpoint.path} was written with other settings ({described}); "
            "resume with the same settings or use a new output directory"
        )


def prepare_output_dir(output_dir: str | Path) -> Path:
    """Creates ``output_dir``, checks that every process can write in it and that all share it.

    Called by every process together. Each process writes a probe file named by its
    host, rank, process id and a random token (so processes of different machines
    or containers never collide); then every process looks for the main process's
    probe. Checkpoints are published by the main process alone, so all processes
    must see one directory: on several nodes it must lie on a filesystem they share.
    An error is raised on every process, never on one alone.

    Raises:
        OutputWriteError: a process cannot create or write the directory, or the
            processes see different directories (node-local disks).
    """
    output_dir = Path(output_dir)
    host = socket.gethostname()
    probe = output_dir / f".write-test-{host}-{rank()}-{os.getpid()}-{secrets.token_hex(8)}"
    problem = None
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
    except OSError as error:
        problem = f"cannot write to the output directory {output_dir} ({error.strerror or error})"
    reports = gather_objects((problem, host, probe.name))
    failed = [(r, report) for r, report in enumerate(reports) if report[0] is not None]
    if problem is None and (rank() != 0 or failed):
        _discard(probe)
    if failed:
        process, (cause, its_host, _) = failed[0]
        where = f" on process {process} (host {its_host})" if len(reports) > 1 else ""
        raise OutputWriteError(f"{cause}{where}: choose another --output-dir")
    # The main probe's name is new to every host, so no cached lookup can hide it.
    seen = gather_objects((output_dir / reports[0][2]).is_file())
    if rank() == 0:
        _discard(probe)
    blind = [f"{process} (host {reports[process][1]})" for process, saw in enumerate(seen) if not saw]
    if blind:
        raise OutputWriteError(
            f"the output directory {output_dir} is not shared: process {', '.join(blind)} does not see the files "
            f"the main process (host {reports[0][1]}) writes there, so it would never see a checkpoint; "
            "point --output-dir at a filesystem all nodes share"
        )
    return output_dir


def rewind_metrics(path: str | Path, global_step: int) -> None:
    """Drops records after ``global_step`` from a ``metrics.jsonl`` (a resumed run logs them again)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) > global_step:
                continue
        except ValueError:
            continue  # a line cut short by a kill
        kept.append(line)
    partial = path.with_name(path.name + ".partial")
    partial.write_text("".join(line + "\n" for line in kept))
    os.replace(partial, path)


class CheckpointStore:
    """Saves, lists and prunes the checkpoints of one run, on every process.

    Every method that writes is called on all processes together (it holds
    barriers); only the main process writes shared files and publishes, so the
    output directory must be one that every process sees (:func:`prepare_output_dir`
    checks this at the start of training).

    Args:
        output_dir: the run's output directory (checkpoints go to ``output_dir/checkpoints``).
        accelerator: the run's accelerator (its registered objects are saved).
        run_config: the run's settings, saved beside the state and compared on resume.
        keep: complete checkpoints kept after each save (0 keeps all).
        per_process: objects that differ between processes (such as random
            streams), by name: each process saves and restores its own.
    """

    def __init__(self, output_dir: str | Path, accelerator: Accelerator, run_config: dict[str, Any], keep: int = 3,
                 per_process: Mapping[str, Stateful] | None = None):
        if keep < 0:
            raise ValueError(f"keep_checkpoints must be >= 0 (0 keeps all), got {keep}")
        self.directory = Path(output_dir) / CHECKPOINT_DIR
        self.accelerator, self.run_config, self.keep = accelerator, run_config, keep
        self.per_process = dict(per_process or {})

    def complete(self) -> list[Checkpoint]:
        """The complete checkpoints, oldest save first."""
        return list_checkpoints(self.directory)

    def load(self, checkpoint: Checkpoint) -> None:
        """Checks the settings of ``checkpoint`` and loads it into the accelerator's objects.

        Raises:
            CheckpointMismatchError: the checkpoint was written with other settings.
        """
        check_compatible(checkpoint, self.run_config)
        if self.accelerator.is_main_process:
            for folder in incomplete_folders(self.directory):
                _say(f"skipping incomplete checkpoint folder {folder}")
            _say(f"resuming from {checkpoint.describe()}")
        self.accelerator.load_state(str(checkpoint.path))
        for name, obj in self.per_process.items():
            path = per_process_file(checkpoint.path, name, self.accelerator.process_index)
            if path.is_file():
                obj.load_state_dict(torch.load(path, weights_only=True))
            elif self.accelerator.is_main_process:
                _say(f"{checkpoint.path} holds no {path.name} (written by an earlier version): "
                     f"{name} start again from the run's seed")

    def save(self, epoch: int, global_step: int) -> Path:
        """Writes the accelerator's state atomically, then prunes old checkpoints.

        Args:
            epoch: epochs finished (recorded in ``checkpoint.json``).
            global_step: optimizer steps taken (names the folder).

        Returns:
            The folder of the new checkpoint.

        Raises:
            OutputWriteError: a file could not be written (the new checkpoint is
                discarded; earlier ones are untouched).
        """
        accelerator = self.accelerator
        final = self.directory / checkpoint_name(global_step)
        partial = self.directory / (PARTIAL_PREFIX + final.name)
        # (main process only?, action); after each phase every process learns whether any failed,
        # so the main process publishes only what every process has written
        phases = [
            (True, lambda: _clear(partial, self.directory)),
            (False, lambda: self._save_state(partial)),
            (True, lambda: self._publish(partial, final, epoch, global_step)),
        ]
        error: BaseException | None = None
        for main_only, action in phases:
            if accelerator.is_main_process or not main_only:
                error = _attempt(action)
            if self._any_failed(error):
                break
        else:
            if accelerator.is_main_process:
                self.prune()
            accelerator.wait_for_everyone()
            return final
        previous = self.complete()
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        kept = f"the previous checkpoint {previous[-1].path} is intact" if previous else "no earlier checkpoint exists"
        cause = (error.strerror or error) if isinstance(error, OSError) else (error or "failed on another process")
        raise OutputWriteError(
            f"could not write checkpoint {final} ({cause}); {kept}. "
            "Free disk space or choose another --output-dir"
        ) from error

    def _save_state(self, folder: Path) -> None:
        self.accelerator.save_state(str(folder))
        for name, obj in self.per_process.items():
            torch.save(obj.state_dict(), per_process_file(folder, name, self.accelerator.process_index))

    def _publish(self, partial: Path, final: Path, epoch: int, global_step: int) -> None:
        serial = max((c.serial for c in self.complete()), default=0) + 1
        (partial / RUN_CONFIG).write_text(json.dumps(self.run_config, indent=2, default=str))
        (partial / MARKER).write_text(json.dumps({"epoch": epoch, "global_step": global_step, "serial": serial}))
        _sync_folder(partial)
        publish(partial, final)

    def _any_failed(self, error: BaseException | None) -> bool:
        flag = torch.tensor([error is not None], dtype=torch.int64, device=self.accelerator.device)
        return bool(self.accelerator.gather(flag).any())

    def prune(self) -> None:
        """Deletes all but the ``keep`` newest complete checkpoints, and leftovers of killed saves."""
        stale = [e for e in self.directory.iterdir() if e.name.startswith((PARTIAL_PREFIX, DELETING_PREFIX))]
        complete = self.complete()
        old = [c.path for c in complete[: -self.keep]] if self.keep else []
        for folder in old + stale:
            _remove(folder)


def publish(partial: Path, final: Path) -> None:
    """Renames the finished folder ``partial`` to ``final`` (replacing an older ``final``)."""
    if final.exists():
        _remove(final)
    os.replace(partial, final)
    _sync_folder(final.parent)


def _remove(folder: Path) -> None:
    """Deletes ``folder``, first renaming it so that a kill mid-delete leaves no half checkpoint."""
    doomed = folder if folder.name.startswith(DELETING_PREFIX) else folder.with_name(DELETING_PREFIX + folder.name)
    if doomed != folder:
        if doomed.exists():
            shutil.rmtree(doomed)
        os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _clear(partial: Path, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    if partial.exists():
        shutil.rmtree(partial)


def _discard(file: Path) -> None:
    """Deletes ``file`` if it can (a probe left behind harms nothing; an error here would desert the other processes)."""
    with contextlib.suppress(OSError):
        file.unlink()


def _sync_folder(folder: Path) -> None:
    """Flushes the files of ``folder`` and the folder itself to disk."""
    for file in folder.iterdir():
        if file.is_file():
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _attempt(action) -> BaseException | None:
    """Runs ``action``; returns what it raised (torch and safetensors raise more than ``OSError`` on a full disk)."""
    try:
        action()
    except Exception as error:
        return error
    return None


def _say(message: str) -> None:
    print(f"softcontrast: {message}", file=sys.stderr, flush=True)
