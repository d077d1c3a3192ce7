"""Flags generated from config dataclasses, field → flag errors, the digits defaults and `softcontrast train`."""

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from softcontrast.cli import build_parser, flag_names, resolve, train
from softcontrast.components.augment import CIFAR_MEAN, IMAGENET_MEAN, IMAGENET_STD, moco_v2_cifar, sce_weak
from softcontrast.run_settings import SIZE_SETTINGS
from softcontrast.methods.moco import build_moco
from softcontrast.methods.registry import _REGISTRY, method_spec, register
from softcontrast.settings import SettingError, setting

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--cpu", "--epochs", "1", "--train-subset", "32", "--batch-size", "16", "--width", "4", "--knn-k", "5"]


@dataclass
class ToyConfig:
    """A toy method's settings."""

    queue_size: int = setting(48, "keys in the toy queue")
    temperature: float = setting(0.25, "τ of the toy loss")
    momentum: float = setting(0.9, "EMA momentum")
    final_momentum: float | None = setting(None, "momentum at the end; none keeps it constant")
    symmetric: bool = setting(False, "both view orders")
    toy_mode: str = setting("a", "which toy", choices=("a", "b"))
    toy_range: tuple[float, float] = setting((0.1, 0.9), "a toy interval")
    use_extra: bool = setting(True, "keep the extra part", flag="extra")
    hidden: int = setting(3, "not a flag", cli=False)

    def __post_init__(self):
        if self.temperature <= 0:
            raise SettingError("temperature", f"toy temperature must be > 0, got {self.temperature}")


def build_toy(config, backbone, setup):
    return build_moco(config, backbone, setup)


@pytest.fixture
def toy():
    spec = register("toy", ToyConfig, build_toy, "a toy method")
    yield spec
    del _REGISTRY["toy"]


def test_config_fields_become_flags_with_their_docs(toy, capsys):
    with pytest.raises(SystemExit):
        build_parser(toy).parse_args(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "--temperature TEMPERATURE τ of the toy loss (default: 0.25)" in shown
    assert "--toy-mode {a,b} which toy (default: a)" in shown
    assert "--toy-range A B a toy interval (default: 0.1 0.9)" in shown
    assert "--extra, --no-extra keep the extra part (default: on)" in shown
    assert "--queue-size QUEUE_SIZE keys in the toy queue (default: 48; 1024 on digits)" in shown
    assert "--hidden" not in shown and "--use-extra" not in shown
    settings = resolve(toy, vars(build_parser(toy).parse_args(["--no-extra", "--toy-range", "0.2", "0.3",
                                                               "--dataset", "npz:x"])), image_side=32)
    assert settings.config == ToyConfig(use_extra=False, toy_range=(0.2, 0.3))


def test_a_config_file_sets_a_registered_config(toy, tmp_path, capsys):
    recipe = tmp_path / "toy.yaml"
    recipe.write_text("toy-mode: b\nextra: false\ntoy_range: [0.3, 0.4]\nqueue-size: 7\n")
    settings = resolve(toy, vars(build_parser(toy).parse_args(["--config", str(recipe), "--queue-size", "9"])))
    assert (settings.config.toy_mode, settings.config.use_extra, settings.config.toy_range) == ("b", False, (0.3, 0.4))
    assert settings.config.queue_size == 9
    recipe.write_text("toy-mode: c\n")
    with pytest.raises(SystemExit):
        build_parser(toy).parse_args(["--config", str(recipe)])
    assert "toy-mode must be one of a, b, got 'c'" in capsys.readouterr().err


def test_a_refused_setting_names_its_flag(toy, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        train("toy", [*TINY, "--temperature", "-1", "--output-dir", str(tmp_path)], prog="toy")
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "toy: error: toy temperature must be > 0, got -1.0 (set with --temperature)")
    with pytest.raises(SystemExit):
        train("toy", [*TINY, "--warmup-epochs", "3", "--output-dir", str(tmp_path)], prog="toy")
    assert capsys.readouterr().err.strip().endswith("(set with --warmup-epochs)")
    assert flag_names(method_spec("sane"))["use_p"] == "--p/--no-p"
    assert flag_names(method_spec("sce"))["cifar_stem"] == "--cifar-stem/--no-cifar-stem"


def test_a_config_field_that_is_a_run_setting_is_refused():
    @dataclass
    class Clashing:
        seed: int = setting(1, "a seed")

    with pytest.raises(TypeError, match="seed"):
        build_parser(register("clash", Clashing, build_toy))
    del _REGISTRY["clash"]


#: What the examples resolved on digits with no flags before the settings moved into dataclasses.
DIGITS_TODAY = {
    "width": 16, "epochs": 60, "batch_size": 128, "lr": 0.3, "weight_decay": 5e-4, "warmup_epochs": 0.0,
    "view_size": 12, "projector_layers": 1, "projector_hidden": 512, "projector_out": 128, "crop_min_scale": 0.8,
    "flip_p": 0.0, "knn_k": 200, "knn_every": 0, "log_every": 10, "num_workers": 4, "checkpoint_every": 5,
    "keep_checkpoints": 3, "seed": 0, "backbone": "resnet18", "cifar_stem": True, "split_bn_groups": 8,
    "shuffle_bn": False, "precision": "no", "optimizer": "sgd",
}
METHODS_TODAY = {
    "moco": {"queue_size": 1024, "momentum": 0.99, "temperature": 0.2},
    "sce": {"queue_size": 1024, "momentum": 0.99, "temperature": 0.1, "lam": 0.5, "tau_m": 0.05},
    "fnc": {"momentum": 0.999, "temperature": 0.1, "support_views": 8, "top_k": 10, "memory_size": None},
    "fnc-moco": {"queue_size": 1024, "momentum": 0.99, "temperature": 0.2, "detection_views": 4},
}


@pytest.mark.parametrize("name", sorted(METHODS_TODAY))
def test_the_digits_defaults_are_todays(name):
    spec = method_spec(name)
    saved = resolve(spec, vars(build_parser(spec).parse_args([]))).saved()
    for key, value in {**DIGITS_TODAY, **METHODS_TODAY[name]}.items():
        assert saved[key] == value, key
    assert saved["output_dir"] == f"runs/{name}"
    elsewhere = resolve(spec, vars(build_parser(spec).parse_args(["--dataset", "npz:x"])), image_side=32).saved()
    assert (elsewhere["width"], elsewhere["view_size"], elsewhere["epochs"], elsewhere["flip_p"]) == (64, 32, 100, None)


def softcontrast(*argv, cwd=ROOT, env=None):
    return subprocess.run([sys.executable, "-m", "softcontrast", *map(str, argv)], capture_output=True, text=True,
                          timeout=300, cwd=cwd, env=env)


def test_softcontrast_train_lists_the_methods_and_their_flags():
    listed = softcontrast("train", "--help")
    assert listed.returncode == 0 and all(name in listed.stdout for name in ("moco", "sce", "fnc-moco", "sane"))
    flags = softcontrast("train", "sane", "--help")
    assert flags.returncode == 0 and "--no-p" in flags.stdout and "τ′ in (0, 1]" in flags.stdout
    unknown = softcontrast("train", "nope")
    assert unknown.returncode == 2 and "unknown method 'nope'; registered: fnc, fnc-moco" in unknown.stderr


def test_softcontrast_train_runs_a_plugin_method(tmp_path):
    plugin = tmp_path / "my_methods.py"
    plugin.write_text(
        "from dataclasses import dataclass\n"
        "from softcontrast.methods.moco import MoCoConfig, build_moco\n"
        "from softcontrast.methods.registry import register\n"
        "from softcontrast.settings import setting\n\n"
        "@dataclass\nclass WarmMoCo(MoCoConfig):\n    temperature: float = setting(0.5, 'a warmer τ')\n\n"
        "register('warm-moco', WarmMoCo, build_moco, 'MoCo at τ 0.5')\n")
    completed = softcontrast("train", "warm-moco", "--plugin", plugin, *TINY, "--queue-size", "32",
                             "--output-dir", tmp_path / "run", cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads(completed.stdout.strip().splitlines()[-1])
    assert summary["method"] == "warm-moco" and summary["epochs_done"] == 1
    saved = json.loads(next((tmp_path / "run").rglob("run_config.json")).read_text())
    assert saved["temperature"] == 0.5 and saved["queue_size"] == 32
    assert (tmp_path / "run" / "backbone.pt").is_file()


def test_the_defaults_follow_the_image_size():
    spec = method_spec("moco")

    def resolved(side, *argv):
        return resolve(spec, vars(build_parser(spec).parse_args(["--dataset", "npz:x", *argv])), image_side=side)

    small = resolved(32)
    assert (small.data.view_size, small.model.cifar_stem, small.data.augment, small.model.projector_hidden) == (
        32, True, "cifar", 512)
    assert small.data.view(moco_v2_cifar()).mean == CIFAR_MEAN
    large = resolved(375)
    assert (large.data.view_size, large.model.cifar_stem, large.data.augment, large.model.projector_hidden) == (
        224, False, "imagenet", 2048)
    assert "ImageNet defaults (375 px" in large.size_note and set(large.from_size) == set(SIZE_SETTINGS)
    view = large.data.view(moco_v2_cifar())
    assert (view.size, view.mean, view.blur_p, view.jitter) == (224, IMAGENET_MEAN, 0.5, moco_v2_cifar().jitter)
    weak = large.data.view(sce_weak())
    assert weak.blur_p == 0 and weak.std == IMAGENET_STD  # a weak view stays weak
    chosen = resolved(375, "--view-size", "96", "--cifar-stem")
    assert (chosen.data.view_size, chosen.model.cifar_stem, chosen.data.augment) == (96, True, "imagenet")
    assert set(chosen.from_size) == {"augment", "projector_hidden"}
    with pytest.raises(SettingError, match="images of 96 px lie between") as refused:
        resolved(96, "--view-size", "64")
    assert refused.value.name == "cifar_stem" and "--augment" in str(refused.value)
    given = resolved(96, "--view-size", "64", "--no-cifar-stem", "--augment", "cifar")
    assert (given.model.cifar_stem, given.model.projector_hidden) == (False, 512)


def test_a_run_on_large_photos_says_which_defaults_it_chose_and_is_evaluated(tmp_path):
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    for split, count in (("train", 4), ("test", 2)):
        for label in ("a", "b"):
            (tmp_path / "photos" / split / label).mkdir(parents=True)
            for i in range(count):
                Image.fromarray(photos[(i + len(label)) % 2][50 * i:50 * i + 150, 40 * i:40 * i + 200]).save(
                    tmp_path / "photos" / split / label / f"{i}.jpg", quality=90)
    run = softcontrast("train", "moco", "--dataset", f"imagefolder:{tmp_path / 'photos'}", "--view-size", "32",
                       "--cpu", "--epochs", "1", "--batch-size", "4", "--queue-size", "8", "--width", "4",
                       "--projector-hidden", "16", "--projector-out", "8", "--num-workers", "1", "--knn-k", "3",
                       "--output-dir", tmp_path / "run")
    assert run.returncode == 0, run.stderr[-3000:]
    first = run.stdout.splitlines()[0]
    assert "ImageNet defaults (150 px" in first and first.endswith("cifar_stem=False, augment=imagenet")
    saved = json.loads(next((tmp_path / "run").rglob("run_config.json")).read_text())
    assert (saved["view_size"], saved["cifar_stem"], saved["augment"], saved["projector_hidden"]) == (
        32, False, "imagenet", 16)
    evaluated = softcontrast("evaluate", tmp_path / "run", "--output-dir", tmp_path / "eval")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert (report["train_images"], report["test_images"], report["view_size"]) == (8, 4, 32)
    assert {"tsne.png", "neighbors.png"} <= set(report["plots"])


def test_an_optional_setting_takes_none_on_the_command_line():
    spec = method_spec("moco")
    parser = build_parser(spec)
    assert vars(parser.parse_args(["--knn-test-subset", "none"])) == {"knn_test_subset": None}
    assert vars(parser.parse_args(["--knn-test-subset", "500"])) == {"knn_test_subset": 500}
    with pytest.raises(SystemExit):
        parser.parse_args(["--epochs", "none"])  # not optional
    assert resolve(spec, vars(parser.parse_args(["--knn-test-subset", "None"])), image_side=32).train.knn_test_subset is None
