"""Runs an example script with one fault hook, so a test can kill or starve it at a chosen moment.

Usage::

    python tests/kill_harness.py CONTROL_DIR HOOK SCRIPT [flags...]

(also as the script of ``torchrun``). Each process writes its pid to
``CONTROL_DIR/pid_<rank>`` on start. HOOK is one of:

* ``none`` – no hook.
* ``step:N`` – after the updates of optimizer step N (1-based) write
  ``CONTROL_DIR/paused`` and sleep until killed (mid-epoch, between steps).
* ``save:N`` – in the N-th checkpoint save, after every file is in the partial
  folder and before its rename, write ``CONTROL_DIR/paused`` and sleep until killed.
* ``fsize:N`` – after the N-th checkpoint save, limit files to 16 KiB
  (``RLIMIT_FSIZE``, as on a full disk: writes fail with ``EFBIG``).

The training itself runs unchanged: the hooks wrap one function each.
"""

import os
import resource
import runpy
import signal
import sys
import time
from pathlib import Path

import softcontrast.checkpoints as checkpoints
from softcontrast.methods.base import ContrastiveMethod


def pause(control: Path) -> None:
    (control / "paused").write_text(str(os.getpid()))
    while True:
        time.sleep(1)


def install(control: Path, hook: str) -> None:
    kind, _, count = hook.partition(":")
    if kind == "none":
        return
    target = int(count)
    if kind == "step":
        original_step = ContrastiveMethod.after_optimizer_step

        def after_optimizer_step(self, step, total_steps):
            original_step(self, step, total_steps)
            if step + 1 == target:
                pause(control)

        ContrastiveMethod.after_optimizer_step = after_optimizer_step
        return
    original_publish = checkpoints.publish
    saves = 0

    def publish(partial, final):
        nonlocal saves
        saves += 1
        if kind == "save" and saves == target:
            pause(control)
        original_publish(partial, final)
        if kind == "fsize" and saves == target:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (16 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    checkpoints.publish = publish


def main() -> None:
    control, hook, script, *flags = sys.argv[1:]
    control = Path(control)
    control.mkdir(parents=True, exist_ok=True)
    (control / f"pid_{os.environ.get('RANK', '0')}").write_text(str(os.getpid()))
    install(control, hook)
    sys.argv = [script, *flags]
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
