"""The trainer end to end on tiny data: learning, exact resume, clear errors."""

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from softcontrast.checkpoints import list_checkpoints
from softcontrast.components.augment import for_image_size
from softcontrast.components.backbones import resnet
from softcontrast.data import ImageTensorDataset, load_source
from softcontrast.methods import ContrastiveMethod, Setup, method_names, method_spec
from softcontrast.training import CheckpointMismatchError, TrainConfig, Trainer, make_accelerator, warmup_cosine

SCHEDULES_SCRIPT = Path(__file__).parent / "distributed" / "schedules_two_process.py"


def tiny_data(n=48, size=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    return ImageTensorDataset(images, torch.arange(n) % 3, ["a", "b", "c"])


def tiny_method(name, size=16, width=8, **overrides) -> ContrastiveMethod:
    """Registered method ``name`` on a width-``width`` ResNet-18, every default view recipe at ``size`` px."""
    torch.manual_seed(0)
    setup = Setup(view=lambda recipe: for_image_size(recipe, size))
    return method_spec(name)(resnet("resnet18", width=width), setup=setup, **overrides)


def tiny_sce(queue_size=32):
    return tiny_method("sce", queue_size=queue_size)


def fit(method, tmp_path, data=None, test=None, **overrides):
    config = TrainConfig(**{"epochs": 2, "batch_size": 8, "output_dir": str(tmp_path), "log_every": 1,
                            "checkpoint_every": 1, **overrides})
    return Trainer(method, config, make_accelerator(cpu=True)).fit(data or tiny_data(), test)


def test_training_lowers_the_loss_on_digits(tmp_path):
    splits = load_source("digits", 16)
    train = splits.train.subset(256)
    method = tiny_method("moco", queue_size=128)
    result = fit(method, tmp_path, train, splits.test.subset(64), epochs=6, batch_size=32, lr=0.1)
    first, last = sum(result.losses[4:8]) / 4, sum(result.losses[-4:]) / 4
    assert last < first - 0.1, (first, last)
    assert set(result.knn) == {0, 6}
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == list(range(1, 49))
    assert (tmp_path / "backbone.pt").is_file()
    exported = torch.load(tmp_path / "backbone.pt")
    assert torch.equal(exported["conv1.weight"], method.online.backbone.network.conv1.weight)  # the model's own keys
    assert json.loads((tmp_path / "backbone.json").read_text())["name"] == "resnet18"


def test_resume_continues_with_the_same_loss_sequence(tmp_path):
    straight = fit(tiny_sce(), tmp_path / "straight", epochs=3)
    first = fit(tiny_sce(), tmp_path / "split", epochs=3, stop_after_epochs=1)
    assert first.epochs_done == 1 and not (tmp_path / "split" / "backbone.pt").exists()
    second = fit(tiny_sce(), tmp_path / "split", epochs=3, resume="latest")
    assert second.epochs_done == 3
    assert first.losses + second.losses == straight.losses
    assert (tmp_path / "split" / "backbone.pt").is_file()


def test_lars_run_resumes_with_the_same_loss_sequence(tmp_path):
    """LARS with its momentum buffers in the checkpoint, norm and bias excluded, sqrt lr scaling."""
    options = dict(epochs=2, optimizer="lars", exclude_norm_bias=True, lr_scaling="sqrt-per-256", lr=2.0,
                   weight_decay=1e-4)
    straight = fit(tiny_sce(), tmp_path / "straight", **options)
    first = fit(tiny_sce(), tmp_path / "split", stop_after_epochs=1, **options)
    second = fit(tiny_sce(), tmp_path / "split", resume="latest", **options)
    assert first.losses + second.losses == straight.losses
    assert all(math.isfinite(loss) for loss in straight.losses)
    sgd = fit(tiny_sce(), tmp_path / "sgd", **{**options, "optimizer": "sgd"})
    assert sgd.losses[0] == straight.losses[0] and sgd.losses[1:] != straight.losses[1:]


def test_each_epoch_line_gives_the_mean_loss_of_its_steps_between_logging_points(tmp_path, capsys):
    """With fewer steps per epoch than ``log_every`` no metric is logged in the first epoch; its
    line still reports the mean of its own steps' losses, not a missing value."""
    result = fit(tiny_sce(), tmp_path, epochs=2, log_every=100)  # 6 steps per epoch
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    printed = [float(line.split("loss ")[1].split(",")[0]) for line in lines]
    assert len(printed) == 2 and len(result.losses) == 12
    assert printed == pytest.approx([sum(result.losses[:6]) / 6, sum(result.losses[6:]) / 6], abs=1e-4)


def test_resume_from_another_config_is_refused(tmp_path):
    fit(tiny_sce(), tmp_path, epochs=2, stop_after_epochs=1)
    with pytest.raises(CheckpointMismatchError, match="lr"):
        fit(tiny_sce(), tmp_path, epochs=2, resume="latest", lr=0.5)


def test_resume_without_checkpoint_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        fit(tiny_sce(), tmp_path, resume="latest")
    with pytest.raises(FileNotFoundError, match="not a softcontrast checkpoint"):
        fit(tiny_sce(), tmp_path, resume=str(tmp_path))


def test_queue_smaller_than_the_global_batch_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"queue_size 4 is smaller than one block of the global batch \(8 images"):
        fit(tiny_sce(queue_size=4), tmp_path)


def test_nan_loss_stops_with_a_clear_error_and_keeps_checkpoints(tmp_path):
    method = tiny_sce()
    fit(method, tmp_path, epochs=3, stop_after_epochs=1)
    with torch.no_grad():
        method.online.projector.layers[0].weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="loss is not finite at step"):
        fit(method, tmp_path / "nan", epochs=3)
    assert [c.global_step for c in list_checkpoints(tmp_path / "checkpoints")] == [6]


@pytest.mark.parametrize(
    "overrides, message",
    [({"epochs": 0}, "epochs"), ({"lr": -1.0}, "lr"), ({"optimizer": "lamb"}, "optimizer"),
     ({"warmup_epochs": 5, "epochs": 2}, "warmup")],
)
def test_bad_train_settings_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**overrides)


def test_bad_precision_is_named():
    with pytest.raises(ValueError, match="mixed_precision"):
        make_accelerator("fp8")


def test_warmup_then_cosine_schedule():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0, abs=1e-12)
    assert not math.isnan(warmup_cosine(0, 1, 0))


def test_metrics_also_go_to_tensorboard(tmp_path):
    accelerator = make_accelerator(cpu=True, log_with="tensorboard", project_dir=str(tmp_path / "tb"))
    config = TrainConfig(epochs=1, batch_size=8, output_dir=str(tmp_path), log_every=1)
    Trainer(tiny_sce(), config, accelerator).fit(tiny_data())
    events = list((tmp_path / "tb").rglob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    assert "loss" in accumulator.Tags()["scalars"]
    assert len(accumulator.Scalars("loss")) == 6


@pytest.mark.distributed
def test_schedules_advance_once_per_global_step_on_two_processes(tmp_path, run_two_processes):
    """lr (with warm-up), EMA momentum and SANE's µ, step by step: 2 processes × 8 images = 1 process × 16."""
    sys.path.insert(0, str(SCHEDULES_SCRIPT.parent))
    from schedules_two_process import train

    run_two_processes(SCHEDULES_SCRIPT, tmp_path / "two")
    train(tmp_path / "one", 1)

    def schedules(run):
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["lr"], r["momentum"], r["mu"]) for r in records if "loss" in r]

    one, two = schedules(tmp_path / "one"), schedules(tmp_path / "two")
    assert [r[0] for r in one] == list(range(1, 9))
    assert len({r[1] for r in one}) > 4 and len({r[2] for r in one}) > 4 and len({r[3] for r in one}) > 4
    assert [r[0] for r in two] == [r[0] for r in one]
    assert [x for r in two for x in r[1:]] == pytest.approx([x for r in one for x in r[1:]], rel=1e-12)


@pytest.mark.parametrize("name", method_names())
def test_every_registered_method_is_the_one_step(name):
    """No preset overrides the step: every method is a ContrastiveMethod and a whole step runs through it."""
    method = tiny_method(name, size=8, width=4, **({"queue_size": 16} if "queue_size" in _fields(name) else {}))
    assert type(method) is ContrastiveMethod
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    output = method(images, torch.arange(4))
    output.loss.backward()
    method.after_optimizer_step(0, 10)
    assert torch.isfinite(output.loss)
    assert method.memory.filled.item() == min(method.memory.capacity, method.block_size(4))


def _fields(name):
    return {field.name for field in dataclasses.fields(method_spec(name).config)}


@pytest.mark.parametrize(
    "name, overrides, diagnostics",
    [("fnc", {"support_views": 1, "memory_size": 32, "threshold": 0.0}, {"false_negatives_per_row"}),
     ("sce", {"queue_size": 32}, {"same_class_negatives", "same_class_target_mass", "cancelled_precision"})],
)
def test_the_trainer_logs_the_step_diagnostics(tmp_path, name, overrides, diagnostics):
    """The step's diagnostics come from ``step_diagnostics`` at every logging point: FNC's detected false
    negatives (also without labels), SCE's label diagnostics (with the training labels)."""
    fit(tiny_method(name, **overrides), tmp_path, epochs=1, checkpoint_every=0)
    records = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert [r["step"] for r in records] == list(range(1, 7))
    for record in records:
        assert diagnostics <= set(record), sorted(record)
    if name == "fnc":
        assert any(r["false_negatives_per_row"] > 0 for r in records)
    fit(tiny_method(name, **overrides), tmp_path / "unlabelled", epochs=1, checkpoint_every=0,
        label_diagnostics=False)
    unlabelled = [json.loads(line) for line in (tmp_path / "unlabelled" / "metrics.jsonl").read_text().splitlines()]
    logged = set().union(*map(set, unlabelled))
    assert ("false_negatives_per_row" in logged) == (name == "fnc")
    assert "same_class_negatives" not in logged and "cancelled_precision" not in logged
