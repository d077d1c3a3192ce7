"""--config FILE.yaml: defaults from the file, the command line wins, bad files fail clearly;
every packaged recipe parses, holds only what differs from the defaults and builds its method."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from softcontrast.cli import RUN_SECTIONS, build_parser, make_method, resolve
from softcontrast.components.backbones import resnet
from softcontrast.config import RECIPES, recipe_names
from softcontrast.flags import config_flags
from softcontrast.methods.registry import method_spec

ROOT = Path(__file__).resolve().parent.parent
SCE = method_spec("sce")


def write(tmp_path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def settings_of(*argv: str, method: str = "sce"):
    spec = method_spec(method)
    return resolve(spec, vars(build_parser(spec).parse_args(list(argv))))


def test_the_file_sets_defaults_and_the_command_line_overrides_it(tmp_path):
    config = write(tmp_path, "epochs: 7\ntemperature: 0.3\nqueue-size: 99\nshuffle_bn: true\nweight-decay: 1e-4\n"
                             "final-momentum: null\nprecision: 'no'\nsmall-crop-scale: [0.1, 0.2]\ncpu: true\n")
    settings = settings_of("--config", config, "--epochs", "2", "--lr", "0.5", "--no-cpu")
    assert (settings.train.epochs, settings.config.temperature, settings.config.queue_size) == (2, 0.3, 99)
    assert settings.run.shuffle_bn is True and settings.run.cpu is False
    assert settings.train.weight_decay == 1e-4 and isinstance(settings.train.weight_decay, float)
    assert settings.train.lr == 0.5 and settings.config.final_momentum is None and settings.run.precision == "no"
    assert settings.config.small_crop_scale == (0.1, 0.2)
    assert settings.train.batch_size == 128 and settings_of("--epochs", "2").config.queue_size == 1024
    assert settings_of("--config", config, "--no-shuffle-bn").run.shuffle_bn is False


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("queue-sise: 10\n", "unknown key 'queue-sise'; valid keys are: "),
        ("epochs: 2.5\n", "epochs must be int, got 2.5"),
        ("epochs: many\n", "epochs must be int, got 'many'"),
        ("lr: fast\n", "lr must be float, got 'fast'"),
        ("shuffle-bn: 1\n", "shuffle-bn must be true or false, got 1"),
        ("precision: no\n", "quote the value"),
        ("augment: bigger\n", "augment must be one of auto, cifar, imagenet, mocov2-imagenet"),
        ("epochs: null\n", "epochs must not be null"),
        ("small-crop-scale: [0.1]\n", "small-crop-scale must be a list of 2 values"),
        ("- epochs\n- 3\n", "expected a mapping of flag names to values, got a list"),
        ("epochs: [3\n", "not valid YAML"),
        ("config: other.yaml\n", "unknown key 'config'"),
    ],
)
def test_bad_files_stop_with_a_message_that_names_the_key(tmp_path, capsys, text, message):
    config = write(tmp_path, text)
    with pytest.raises(SystemExit) as exit_info:
        build_parser(SCE).parse_args(["--config", config])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error
    if "unknown key" in message:
        assert "queue-size" in error and "temperature" in error and "split-bn-groups" in error


def test_a_missing_file_is_named_with_the_packaged_recipes(tmp_path, capsys):
    with pytest.raises(SystemExit):
        build_parser(SCE).parse_args(["--config", str(tmp_path / "absent.yaml")])
    error = capsys.readouterr().err
    assert "absent.yaml: cannot read it" in error and "sce_cifar10" in error


def test_a_packaged_recipe_is_found_by_name():
    assert {"moco_v2_cifar10", "sce_cifar10", "sce_cifar10-cpu"} <= set(recipe_names())
    settings = settings_of("--config", "sce_cifar10", "--epochs", "30")
    assert settings.data.dataset == "hf:uoft-cs/cifar10" and settings.train.warmup_epochs == 5
    assert settings.train.epochs == 30 and settings.config.queue_size == 4096 and settings.model.width == 64
    assert settings.from_digits == {}


RECIPE_FILES = sorted(Path(str(RECIPES)).glob("*.yaml"))


def method_of(recipe: Path) -> str:
    return recipe.stem.split("_")[0]


def test_every_recipe_is_for_an_example():
    assert {"moco_v2_cifar10.yaml", "sce_cifar10.yaml"} <= {path.name for path in RECIPE_FILES}
    for path in RECIPE_FILES:
        assert (ROOT / "examples" / f"{method_of(path)}.py").is_file(), path.name


@pytest.mark.parametrize("recipe", RECIPE_FILES, ids=[path.name for path in RECIPE_FILES])
def test_every_recipe_holds_only_what_differs_from_the_defaults(recipe):
    spec = method_spec(method_of(recipe))
    parser = build_parser(spec)
    sections = [spec.config, *(section for _, section in RUN_SECTIONS)]
    defaults = {flag.name: flag.default for section in sections for flag in config_flags(section)}
    values = parser.config_values(recipe)
    assert values and recipe.read_text().startswith("#")  # sources in the comments
    for key in yaml.safe_load(recipe.read_text()):
        assert key in defaults, key
        assert values[key.replace("-", "_")] != defaults[key], f"{key} equals its default"


@pytest.mark.parametrize("recipe", RECIPE_FILES, ids=[path.name for path in RECIPE_FILES])
def test_every_recipe_parses_and_builds_its_method(recipe):
    settings = settings_of("--config", recipe.stem, method=method_of(recipe))
    given = build_parser(method_spec(settings.method)).config_values(recipe)
    saved = settings.saved(50_000)
    for dest, value in given.items():
        assert saved[dest] == value, dest
    model = settings.model
    backbone = resnet(model.backbone, cifar_stem=model.cifar_stem, width=model.width)
    method = make_method(settings, backbone, num_samples=50_000)
    assert sum(p.numel() for p in method.online.backbone.parameters()) == sum(p.numel() for p in backbone.parameters())
    assert (method.shuffle_bn is not None) == settings.run.shuffle_bn
    if settings.run.shuffle_bn:
        assert method.shuffle_bn.groups == settings.run.split_bn_groups
    assert method.query_size == settings.data.view_size
    assert method.momentum == settings.config.momentum and method.temperature == settings.config.temperature
    if hasattr(settings.config, "queue_size"):
        assert method.memory.capacity == settings.config.queue_size


def test_a_run_saves_the_settings_it_resolved_from_file_and_flags(tmp_path):
    config = write(tmp_path, "queue-size: 64\nwidth: 4\nbatch-size: 32\nshuffle-bn: true\nsplit-bn-groups: 4\n"
                             "temperature: 0.3\nepochs: 5\n")
    command = [sys.executable, str(ROOT / "examples" / "moco.py"), "--config", config, "--epochs", "1",
               "--train-subset", "64", "--output-dir", str(tmp_path / "run")]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    saved = json.loads(next((tmp_path / "run").rglob("run_config.json")).read_text())
    assert (saved["queue_size"], saved["width"], saved["temperature"], saved["epochs"]) == (64, 4, 0.3, 1)
    assert saved["shuffle_bn"] is True and saved["split_bn_groups"] == 4 and "config" not in saved
    assert saved["method"] == "moco" and saved["view_size"] == 12 and saved["cifar_stem"] is True
    # the first line names the digits defaults the run took; the ones the file gave are not among them
    first = completed.stdout.splitlines()[0]
    assert "digits defaults" in first and "view_size=12" in first and "queue_size" not in first
