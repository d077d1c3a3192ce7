"""--config FILE.yaml: defaults from the file, the command line wins, bad files fail clearly;
every recipe in examples/recipes/ parses and builds its method."""

import json
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import softcontrast.cli
from softcontrast.cli import build_parser
from softcontrast.components.backbones import resnet

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "examples" / "recipes").glob("*.yaml"))


def parser_with_method_flags():
    parser = build_parser("test")
    parser.add_argument("--tau", type=float, default=0.1)
    return parser


def write(tmp_path, text: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def test_the_file_sets_defaults_and_the_command_line_overrides_it(tmp_path):
    config = write(tmp_path, "epochs: 7\ntau: 0.3\nqueue-size: 99\nshuffle_bn: true\nweight-decay: 1e-4\n"
                             "final-momentum: null\nprecision: 'no'\n")
    args = parser_with_method_flags().parse_args(["--config", config, "--epochs", "2", "--lr", "0.5"])
    assert (args.epochs, args.tau, args.queue_size, args.shuffle_bn) == (2, 0.3, 99, True)
    assert args.weight_decay == 1e-4 and isinstance(args.weight_decay, float)
    assert args.lr == 0.5 and args.final_momentum is None and args.precision == "no"
    assert args.batch_size == 128 and not hasattr(args, "config")
    assert parser_with_method_flags().parse_args(["--epochs", "2"]).queue_size == 1024


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("queue-sise: 10\n", "unknown key 'queue-sise'; valid keys are: "),
        ("epochs: 2.5\n", "epochs must be int, got 2.5"),
        ("epochs: many\n", "epochs must be int, got 'many'"),
        ("lr: fast\n", "lr must be float, got 'fast'"),
        ("shuffle-bn: 1\n", "shuffle-bn must be true or false, got 1"),
        ("precision: no\n", "quote the value"),
        ("backbone: resnet99\n", "backbone must be one of resnet18, resnet34, resnet50, got 'resnet99'"),
        ("epochs: null\n", "epochs must not be null"),
        ("- epochs\n- 3\n", "expected a mapping of flag names to values, got a list"),
        ("epochs: [3\n", "not valid YAML"),
        ("config: other.yaml\n", "unknown key 'config'"),
    ],
)
def test_bad_files_stop_with_a_message_that_names_the_key(tmp_path, capsys, text, message):
    config = write(tmp_path, text)
    with pytest.raises(SystemExit) as exit_info:
        parser_with_method_flags().parse_args(["--config", config])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in error
    if "unknown key" in message:
        assert "queue-size" in error and "tau" in error and "split-bn-groups" in error


def test_a_missing_file_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        build_parser("test").parse_args(["--config", str(tmp_path / "absent.yaml")])
    assert "absent.yaml: cannot read it" in capsys.readouterr().err


def test_every_recipe_is_for_an_example():
    assert {"moco_v2_cifar10.yaml", "sce_cifar10.yaml"} <= {path.name for path in RECIPES}
    for path in RECIPES:
        assert (ROOT / "examples" / f"{path.stem.split('_')[0]}.py").is_file(), path.name


@pytest.mark.parametrize("recipe", RECIPES, ids=[path.name for path in RECIPES])
def test_every_recipe_parses_and_builds_its_method(recipe, monkeypatch):
    script = ROOT / "examples" / f"{recipe.stem.split('_')[0]}.py"
    captured = {}
    monkeypatch.setattr(softcontrast.cli, "run", lambda name, factory, args: captured.update(
        name=name, factory=factory, args=args))
    monkeypatch.setattr(sys, "argv", [str(script), "--config", str(recipe)])
    runpy.run_path(str(script), run_name="__main__")
    args = captured["args"]
    for key, value in yaml.safe_load(recipe.read_text()).items():
        assert getattr(args, key.replace("-", "_")) == value, key
    args.num_train_samples = 50_000
    backbone = resnet(args.backbone, cifar_stem=not args.no_cifar_stem, width=args.width)
    method = captured["factory"](backbone, args)
    assert sum(p.numel() for p in method.online.backbone.parameters()) == sum(p.numel() for p in backbone.parameters())
    assert (method.shuffle_bn is not None) == args.shuffle_bn
    if args.shuffle_bn:
        assert method.shuffle_bn.groups == args.split_bn_groups
    built = {"queue-size": lambda: method.queue.capacity, "view-size": lambda: method.query_size,
             "momentum": lambda: method.momentum, "tau": lambda: method.temperature,
             "temperature": lambda: method.temperature}
    for key in set(built) & set(yaml.safe_load(recipe.read_text())):
        assert built[key]() == getattr(args, key.replace("-", "_")), key


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
