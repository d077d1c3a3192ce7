"""The Accelerate training loop: schedules, checkpoints with exact resume, logging, export."""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, set_seed
from torch import nn

from softcontrast.checkpoints import (
    CheckpointMismatchError,  # noqa: F401  (raised by fit; imported from here)
    CheckpointStore,
    prepare_output_dir,
    resume_checkpoint,
    rewind_metrics,
)
from softcontrast.components.augment import ViewRecipe
from softcontrast.components.cpu_bf16 import refuse_cpu_bf16_hazards
from softcontrast.components.named_backbones import SPEC_FILE, network_state, save_spec
from softcontrast.data import ImageSource, ImageTensorDataset, TrainingBatches
from softcontrast.evaluation import knn_accuracy, step_diagnostics
from softcontrast.finite import (
    FiniteGuard,
    NonFiniteError,
    check_finite_weights,
    loss_parts,
)
from softcontrast.methods.base import ContrastiveMethod
from softcontrast.optim import LR_SCALINGS, OPTIMIZERS, make_optimizer, scaled_lr
from softcontrast.settings import SettingError, check_choice, setting

METRICS_FILE = "metrics.jsonl"


def make_accelerator(
    mixed_precision: str = "no", cpu: bool | None = None, log_with: str | None = None, project_dir: str | None = None
) -> Accelerator:
    """An :class:`Accelerator` for contrastive training.

    DDP does not broadcast buffers (the queue is kept identical by gathered
    enqueues; each momentum encoder keeps its own batch-norm statistics).

    Args:
        mixed_precision: ``no``, ``fp16`` or ``bf16``.
        cpu: force the CPU (default: when no GPU is visible).
        log_with: an Accelerate tracker such as ``tensorboard``.
        project_dir: where trackers write.
    """
    if mixed_precision not in ("no", "fp16", "bf16"):
        raise ValueError(f"mixed_precision must be 'no', 'fp16' or 'bf16', got {mixed_precision!r}")
    return Accelerator(
        mixed_precision=mixed_precision,
        cpu=not torch.cuda.is_available() if cpu is None else cpu,
        log_with=log_with,
        project_dir=project_dir,
        kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)],
    )


@dataclass
class TrainConfig:
    """Settings of a training run: the optimizer, the schedule, checkpoints and the kNN monitor.

    The kNN monitor runs before training, every ``knn_every`` epochs and after training, on
    every process (each embeds its shard with ``num_workers`` loader workers), against a fixed
    seeded subset of ``knn_test_subset`` test images.

    Each field's doc is its command-line flag's help (:func:`~softcontrast.settings.setting`).
    The seed sets the weights and data order (the same on every process) and the method's
    random streams: augmentations per process (from the seed and the process index),
    shuffle-BN and mixup permutations shared by all. NaN and infinity are caught at every
    step on the device; the check is read when logging and before any save, and the losses
    of the steps since the last logging point are read then, in one go (between logging
    points a step never waits for the host).
    """

    epochs: int = setting(100, "total epochs (sets the schedules)")
    batch_size: int = setting(256, "images per process per step")
    optimizer: str = setting("sgd", "the optimizer: sgd (with momentum) | adamw | lars", choices=OPTIMIZERS)
    lr: float = setting(0.06, "base learning rate, scaled to the global batch by --lr-scaling (linear and "
                              "sqrt-per-256: the rate at a global batch of 256)")
    lr_scaling: str = setting(
        "linear", "how the lr follows the global batch B: linear (lr × B/256) | sqrt-batch (lr × √B, SimCLR's and "
        "FNC's code) | sqrt-per-256 (lr × √(B/256)) | none", choices=LR_SCALINGS)
    weight_decay: float = setting(5e-4, "weight decay")
    exclude_norm_bias: bool = setting(
        False, "no weight decay (and no LARS trust ratio) for the norm layers' scales and shifts and all biases")
    sgd_momentum: float = setting(0.9, "momentum of SGD and LARS", cli=False)
    lars_trust_coefficient: float = setting(1e-3, "LARS trust coefficient η (with --optimizer lars)")
    warmup_epochs: float = setting(0.0, "epochs of linear warm-up before the per-step cosine decay")
    seed: int = setting(0, "seed of the weights, the data order and the method's random streams")
    output_dir: str = setting("runs/default", "where checkpoints, metrics and the exported backbone go", cli=False)
    checkpoint_every: int = setting(1, "epochs between checkpoints (0: only at the end)")
    checkpoint_every_steps: int = setting(
        0, "also save every this many optimizer steps (0: never); resuming from one continues mid-epoch exactly")
    keep_checkpoints: int = setting(3, "complete checkpoints kept after each save (0: all)")
    stop_after_epochs: int | None = setting(None, "stop this invocation after this many epochs (resume later)")
    knn_every: int = setting(0, "epochs between kNN evaluations (0: before and after training only)")
    knn_k: int = setting(200, "neighbours of the kNN monitor")
    knn_test_subset: int | None = setting(
        10_000, "test images of the kNN monitor: a fixed random subset of the test split, drawn with the seed "
                "(none: all)")
    knn_temperature: float = setting(0.1, "temperature of the kNN monitor", cli=False)
    log_every: int = setting(10, "steps between logged metrics")
    resume: str | None = setting(
        None, "checkpoint folder; 'latest' (newest complete one, error if none); 'auto' (latest if any, else fresh)")
    resident_data: bool = setting(True, "hold an in-memory dataset on the training device", cli=False)
    num_workers: int = setting(4, "loader workers for streamed image folders")
    decode_on: str = setting(
        "workers", "where streamed JPEG images are decoded: workers (the loader workers, on the CPU) | device "
        "(batched on the training device: nvJPEG on a GPU)", choices=("workers", "device"))
    compile: bool = setting(False, "torch.compile the online and momentum encoders")
    label_diagnostics: bool = setting(
        True, "when the training split has labels, log how each step's target treats same-class columns "
              "(never used for training)", cli=False)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise SettingError("epochs", f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise SettingError("batch_size", f"batch_size must be >= 1, got {self.batch_size}")
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("lr_scaling", self.lr_scaling, LR_SCALINGS)
        if not self.lr > 0:
            raise SettingError("lr", f"lr must be > 0, got {self.lr}")
        if not self.lars_trust_coefficient > 0:
            raise SettingError("lars_trust_coefficient",
                               f"lars_trust_coefficient must be > 0, got {self.lars_trust_coefficient}")
        if self.warmup_epochs < 0 or self.warmup_epochs > self.epochs:
            raise SettingError("warmup_epochs", f"warmup_epochs must lie in [0, epochs], got {self.warmup_epochs}")
        if self.log_every < 1:
            raise SettingError("log_every", f"log_every must be >= 1, got {self.log_every}")
        if self.checkpoint_every < 0:
            raise SettingError("checkpoint_every", f"checkpoint_every must be >= 0, got {self.checkpoint_every}")
        if self.checkpoint_every_steps < 0:
            raise SettingError("checkpoint_every_steps",
                               f"checkpoint_every_steps must be >= 0, got {self.checkpoint_every_steps}")
        if self.knn_test_subset is not None and self.knn_test_subset < 1:
            raise SettingError("knn_test_subset", "knn_test_subset must be >= 1 (or none for the whole test split), "
                                                  f"got {self.knn_test_subset}")
        if self.keep_checkpoints < 0:
            raise SettingError("keep_checkpoints",
                               f"keep_checkpoints must be >= 0 (0 keeps all), got {self.keep_checkpoints}")


@dataclass
class TrainResult:
    """Outcome of :meth:`Trainer.fit`.

    Attributes:
        knn: kNN test accuracy by epoch (0 = before training), when a test split exists.
        losses: the loss of every step run by this invocation.
        epochs_done: epochs completed, counting resumed ones.
        wall_seconds: training time of this invocation (without evaluation).
        images_per_second: training throughput (global images) of this invocation.
    """

    knn: dict[int, float] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)
    epochs_done: int = 0
    wall_seconds: float = 0.0
    images_per_second: float = 0.0


def warmup_cosine(step: int, total_steps: int, warmup_steps: int) -> float:
    """Learning-rate factor: linear warm-up to 1, then cosine decay to 0 per step."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(total_steps - warmup_steps, 1)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Sets the learning rate of every parameter group of ``optimizer``."""
    for group in optimizer.param_groups:
        group["lr"] = lr


class _Progress:
    """Position in training, saved with every checkpoint."""

    def __init__(self) -> None:
        self.epoch = 0
        self.global_step = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "global_step": self.global_step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.global_step = state["epoch"], state["global_step"]


class Trainer:
    """Trains a :class:`ContrastiveMethod` with Hugging Face Accelerate.

    Args:
        method: the method to train.
        config: run settings.
        accelerator: defaults to :func:`make_accelerator` (fp32).
        run_config: every setting of the run (method hyperparameters included);
            saved with checkpoints and compared on resume.
    """

    def __init__(
        self,
        method: ContrastiveMethod,
        config: TrainConfig,
        accelerator: Accelerator | None = None,
        run_config: dict[str, Any] | None = None,
    ):
        self.method, self.config = method, config
        self.accelerator = accelerator or make_accelerator()
        self.run_config = {**asdict(config), **(run_config or {}), "num_processes": self.accelerator.num_processes}
        self.output_dir = Path(config.output_dir)
        self.progress = _Progress()
        self.checkpoints = CheckpointStore(self.output_dir, self.accelerator, self.run_config, config.keep_checkpoints,
                                           per_process={"random_streams": method.streams})

    def _check_sizes(self, num_samples: int) -> None:
        global_batch = self.config.batch_size * self.accelerator.num_processes
        self.method.check_global_batch(global_batch)
        if global_batch > num_samples:
            raise ValueError(f"global batch {global_batch} exceeds the {num_samples} training images: lower the batch size")

    def _base_lr(self) -> float:
        """The peak learning rate: ``lr`` scaled to the global batch by ``lr_scaling``."""
        return scaled_lr(self.config.lr, self.config.batch_size * self.accelerator.num_processes,
                         self.config.lr_scaling)

    def _optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        config = self.config
        return make_optimizer(model, config.optimizer, self._base_lr(), config.weight_decay,
                              momentum=config.sgd_momentum, exclude_norm_bias=config.exclude_norm_bias,
                              trust_coefficient=config.lars_trust_coefficient)

    def monitor_test_split(self, test: "ImageTensorDataset | ImageSource") -> "ImageTensorDataset | ImageSource":
        """The kNN monitor's test images: ``knn_test_subset`` of them drawn with the seed (the same
        at every evaluation of the run), or the whole split when it is not larger."""
        size = self.config.knn_test_subset
        return test if size is None or size >= len(test) else test.subset(size, seed=self.config.seed)

    def _evaluate(self, train, test, recipe: ViewRecipe) -> float:
        """The kNN monitor, run by every process together: each embeds its shard of both splits with
        ``num_workers`` loader workers, the features are gathered, and every process gets the accuracy."""
        return knn_accuracy(
            self.method.online.backbone,
            train,
            test,
            recipe,
            k=self.config.knn_k,
            temperature=self.config.knn_temperature,
            device=self.accelerator.device,
            num_workers=self.config.num_workers,
            shard=True,
        )

    def _check_finite(self, guard: FiniteGuard, weights: bool = False) -> None:
        """Raises if a loss part (or, with ``weights``, a weight) went non-finite; every save checks first."""
        try:
            guard.check(self.accelerator)
            if weights:
                check_finite_weights(self.method, self.accelerator, self.progress.global_step)
        except NonFiniteError as error:
            kept = self.checkpoints.complete()
            where = f"the newest is {kept[-1].describe()}" if kept else "there is none"
            raise NonFiniteError(f"{error} No checkpoint was written after it; {where}.") from None

    def _save(self, guard: FiniteGuard) -> Path:
        """Saves a checkpoint after checking loss and weights (a checkpoint never holds NaN)."""
        self._check_finite(guard, weights=True)
        return self.checkpoints.save(self.progress.epoch, self.progress.global_step)

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with open(self.output_dir / METRICS_FILE, "a") as log:
                log.write(json.dumps(record) + "\n")
        self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record.get("step"))

    def fit(
        self,
        train: "ImageTensorDataset | ImageSource",
        test: "ImageTensorDataset | ImageSource | None" = None,
    ) -> TrainResult:
        """Trains, monitoring kNN accuracy on ``test`` when given.

        Returns:
            The kNN accuracies, losses, and throughput of this invocation.

        Raises:
            NonFiniteError: the loss or the weights became NaN or infinite (names the
                first bad step and loss part; no checkpoint is written after it).
            CheckpointMismatchError: ``resume`` points at a run with other settings.
            NoCheckpointError: ``resume`` names no complete checkpoint.
            OutputWriteError: the output directory or a checkpoint cannot be written, or the
                processes do not share the output directory.
        """
        config, accelerator = self.config, self.accelerator
        self._check_sizes(len(train))
        if accelerator.device.type == "cpu" and accelerator.mixed_precision == "bf16":
            refuse_cpu_bf16_hazards(self.method.online, {crop.size for crop in self.method.crop_plan()})
        set_seed(config.seed)
        self.method.streams.reset(config.seed, accelerator.process_index, accelerator.device)
        prepare_output_dir(self.output_dir)
        batches = TrainingBatches(
            train,
            config.batch_size,
            accelerator.device,
            accelerator.process_index,
            accelerator.num_processes,
            config.seed,
            config.resident_data,
            config.num_workers,
            crops=self.method.crop_plan(),
            decode_on=config.decode_on,
        )
        steps_per_epoch = len(batches)
        total_steps = steps_per_epoch * config.epochs
        warmup_steps = int(config.warmup_epochs * steps_per_epoch)
        method = self.method
        # SyncBatchNorm on several GPUs when method.sync_bn is on (--sync-bn); gloo/CPU has none.
        method.use_sync_bn(accelerator.device, accelerator.num_processes)
        method.use_channels_last(accelerator.device)
        if config.compile:
            method.online = torch.compile(method.online)
            method.target_encoder = torch.compile(method.target_encoder)
        # The learning rate, like the EMA momentum and µ, is a function of the global step (saved
        # with every checkpoint): Accelerate would step a prepared scheduler once per process.
        base_lr = self._base_lr()

        def lr_at(step: int) -> float:
            return base_lr * warmup_cosine(step, total_steps, warmup_steps)

        model, optimizer = accelerator.prepare(method, self._optimizer(method))
        self.method = accelerator.unwrap_model(model)
        diagnostic_labels = None
        if config.label_diagnostics and (train.labels >= 0).any():
            diagnostic_labels = train.labels.to(accelerator.device)
        accelerator.register_for_checkpointing(self.progress)
        if accelerator.log_with and accelerator.trackers == []:
            accelerator.init_trackers("softcontrast", config={k: str(v) for k, v in self.run_config.items()})

        checkpoint = resume_checkpoint(self.output_dir, config.resume)
        if checkpoint is not None:
            self.checkpoints.load(checkpoint)
            if accelerator.is_main_process:
                rewind_metrics(self.output_dir / METRICS_FILE, self.progress.global_step)
        guard = FiniteGuard(accelerator.device, steps_per_epoch)

        result = TrainResult()
        eval_recipe = self.method.query_view
        if test is not None:
            test = self.monitor_test_split(test)
        if test is not None and self.progress.global_step == 0:
            result.knn[0] = self._evaluate(train, test, eval_recipe)
            self._log({"epoch": 0, "step": 0, "knn_accuracy": result.knn[0]})

        last_epoch = config.epochs
        if config.stop_after_epochs is not None:
            last_epoch = min(config.epochs, self.progress.epoch + config.stop_after_epochs)
        start_time, images_seen = time.perf_counter(), 0
        losses: list[torch.Tensor] = []  # on the device until the next logging point
        for epoch in range(self.progress.epoch, last_epoch):
            bar = _progress_bar(accelerator, steps_per_epoch, f"epoch {epoch + 1}/{config.epochs}")
            epoch_start = time.perf_counter()
            epoch_loss, epoch_steps = torch.zeros((), device=accelerator.device), 0  # this process's, on the device
            model.train()
            for images, ids in batches.epoch(epoch, self.progress.global_step - epoch * steps_per_epoch):
                with accelerator.autocast():
                    output = model(images, ids)
                accelerator.backward(output.loss)
                set_learning_rate(optimizer, lr_at(self.progress.global_step))
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                self.method.after_optimizer_step(self.progress.global_step, total_steps)
                self.progress.global_step += 1
                images_seen += ids.shape[0] * accelerator.num_processes
                losses.append(output.loss.detach())
                epoch_loss += output.loss.detach().float()
                epoch_steps += 1
                guard.observe(self.progress.global_step, loss_parts(output.loss, output.metrics))
                if self.progress.global_step % config.log_every == 0 or self.progress.global_step == total_steps:
                    self._check_finite(guard)
                    result.losses += _read_and_clear(losses)
                    metrics = {**output.metrics, **step_diagnostics(output, diagnostic_labels)}
                    self._log_step(metrics, epoch, lr_at(self.progress.global_step), total_steps, bar)
                bar.update(1)
                if self._step_checkpoint_due() and self.progress.global_step % steps_per_epoch:
                    self._save(guard)
            bar.close()
            self.progress.epoch = epoch + 1
            if bar.disable and accelerator.is_main_process:
                mean_loss = f"{epoch_loss.item() / epoch_steps:.4f}" if epoch_steps else "-"
                print(f"epoch {self.progress.epoch}/{config.epochs}: loss {mean_loss}, "
                      f"{time.perf_counter() - epoch_start:.1f} s", flush=True)
            if test is not None and config.knn_every and self.progress.epoch % config.knn_every == 0:
                result.knn[self.progress.epoch] = self._evaluate(train, test, eval_recipe)
                self._log({"epoch": self.progress.epoch, "step": self.progress.global_step,
                           "knn_accuracy": result.knn[self.progress.epoch]})
            if (config.checkpoint_every and self.progress.epoch % config.checkpoint_every == 0) or (
                self.progress.epoch == last_epoch or self._step_checkpoint_due()
            ):
                self._save(guard)
        result.losses += _read_and_clear(losses)
        result.wall_seconds = time.perf_counter() - start_time
        result.images_per_second = images_seen / max(result.wall_seconds, 1e-9)
        result.epochs_done = self.progress.epoch
        if self.progress.epoch == config.epochs:
            self._check_finite(guard, weights=True)
            if test is not None and config.epochs not in result.knn:
                result.knn[config.epochs] = self._evaluate(train, test, eval_recipe)
                self._log({"epoch": config.epochs, "step": self.progress.global_step,
                           "knn_accuracy": result.knn[config.epochs]})
            self.export_backbone()
        accelerator.end_training()
        return result

    def _step_checkpoint_due(self) -> bool:
        every = self.config.checkpoint_every_steps
        return bool(every) and self.progress.global_step % every == 0

    def _log_step(self, metrics: dict, epoch: int, lr: float, total_steps: int, bar) -> None:
        values = {name: float(value) for name, value in metrics.items()}
        step = self.progress.global_step
        record = {"epoch": epoch + 1, "step": step, "lr": lr,
                  "momentum": self.method.momentum_at(step, total_steps), **values}
        self._log(record)
        bar.set_postfix(loss=f"{values['loss']:.4f}")

    def export_backbone(self, path: str | Path | None = None) -> Path:
        """Saves the online backbone's weights (default ``output_dir/backbone.pt``) and its spec beside them.

        The weights are the wrapped model's own ``state_dict`` (no ``network.`` prefix), so they load
        into the plain torchvision or timm model; ``backbone.json`` (a
        :class:`~softcontrast.components.named_backbones.BackboneSpec`) is written when the backbone
        carries a spec (every backbone built by name does).
        """
        path = Path(path or self.output_dir / "backbone.pt")
        if self.accelerator.is_main_process:
            backbone = self.method.online.backbone
            torch.save(network_state(backbone), path)
            if getattr(backbone, "spec", None) is not None:
                save_spec(backbone.spec, path.with_name(SPEC_FILE))
        self.accelerator.wait_for_everyone()
        return path


def _read_and_clear(losses: list[torch.Tensor]) -> list[float]:
    """The values of ``losses`` (scalars on the device) in one host read; empties the list."""
    values = torch.stack(losses).float().tolist() if losses else []
    losses.clear()
    return values


def _progress_bar(accelerator: Accelerator, total: int, description: str):
    """A progress bar on a terminal; disabled (one line per epoch instead) when output goes to a file."""
    from tqdm.auto import tqdm

    on_terminal = sys.stdout.isatty() and sys.stderr.isatty()
    return tqdm(total=total, desc=description, disable=not (accelerator.is_main_process and on_terminal), leave=False)
