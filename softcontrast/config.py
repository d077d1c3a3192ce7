"""YAML config files for command-line flags: ``--config FILE.yaml`` or a packaged recipe.

A config file is a YAML mapping from flag names (``queue-size``) or field names
(``queue_size``) to values. Its values replace the flags' defaults; flags given on the
command line override the file (``--no-shuffle-bn`` switches off a file's
``shuffle-bn: true``). An unknown key, a value of the wrong type or a value outside a
flag's choices stops the parser with a message that names the key and what it accepts.

``--config NAME`` without a file of that name reads the recipe ``NAME.yaml`` shipped in
the package (:data:`RECIPES`, the papers' settings), e.g. ``--config sce_cifar10``::

    softcontrast train sce --config sce_cifar10 --epochs 100
"""

from __future__ import annotations

import argparse
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import yaml

#: Dests that a config file cannot set.
RESERVED = frozenset({"help", "config"})
#: The recipes shipped in the package, by name (``sce_cifar10``): the papers' settings.
RECIPES = resources.files("softcontrast") / "recipes"


def recipe_names() -> list[str]:
    """The names of the packaged recipes, sorted."""
    return sorted(item.name.removesuffix(".yaml") for item in RECIPES.iterdir() if item.name.endswith(".yaml"))


def read_config_text(path: str) -> str:
    """The text of a config file, or of the packaged recipe of that name (``sce_cifar10``).

    Raises:
        OSError: neither a readable file nor a packaged recipe.
    """
    if not Path(path).is_file():
        name = path.removesuffix(".yaml")
        if "/" not in name and name in recipe_names():
            return (RECIPES / f"{name}.yaml").read_text(encoding="utf-8")
    return Path(path).read_text(encoding="utf-8")


class ConfigArgumentParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` with a ``--config FILE.yaml`` flag.

    The file is read when the arguments are parsed, so flags added after
    construction (an example's own hyperparameters) can be set from it too. The
    ``config`` entry itself is removed from the parsed namespace.

    Args:
        *args: passed to :class:`argparse.ArgumentParser`.
        **kwargs: passed to :class:`argparse.ArgumentParser`.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.add_argument(
            "--config", default=None, metavar="FILE.yaml",
            help="YAML file of flag values (keys are flag names), or a packaged recipe by name "
                 "(sce_cifar10); flags on the command line override it",
        )

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Parses ``args`` over the defaults from ``--config`` (when given)."""
        finder = argparse.ArgumentParser(add_help=False)
        finder.add_argument("--config", default=None)
        found, _ = finder.parse_known_args(args)
        namespace = namespace if namespace is not None else argparse.Namespace()
        if found.config is not None:
            for dest, value in self.config_values(found.config).items():
                setattr(namespace, dest, value)
        parsed, extras = super().parse_known_args(args, namespace)
        if hasattr(parsed, "config"):
            del parsed.config
        return parsed, extras

    def settable(self) -> dict[str, argparse.Action]:
        """The flags a config file may set, by key: their dest and their flag name (``_`` for ``-``)."""
        actions = {}
        for action in self._actions:
            if action.option_strings and action.dest not in RESERVED and action.dest is not argparse.SUPPRESS:
                actions[action.dest] = action
                actions[action.option_strings[0].lstrip("-").replace("-", "_")] = action
        return actions

    def config_values(self, path: str | Path) -> dict[str, Any]:
        """The flag values of a config file, checked and converted, by dest.

        Exits through :meth:`error` (status 2, one line) when the file is missing, is
        not a YAML mapping, or has an unknown key or a value of the wrong type.
        """
        try:
            loaded = yaml.safe_load(read_config_text(str(path)))
        except OSError as error:
            self.error(f"--config {path}: cannot read it ({error.strerror or error}; packaged recipes: "
                       f"{', '.join(recipe_names())})")
        except yaml.YAMLError as error:
            self.error(f"--config {path}: not valid YAML ({' '.join(str(error).split())})")
        if loaded is None:
            return {}
        if not isinstance(loaded, dict):
            self.error(f"--config {path}: expected a mapping of flag names to values, got a {type(loaded).__name__}")
        actions = self.settable()
        values = {}
        for key, value in loaded.items():
            action = actions.get(str(key).replace("-", "_"))
            if action is None:
                valid = ", ".join(sorted({a.option_strings[0].lstrip("-") for a in actions.values()}))
                self.error(f"--config {path}: unknown key {key!r}; valid keys are: {valid}")
            values[action.dest] = self._config_value(action, f"--config {path}: {key}", value)
        return values

    def _config_value(self, action: argparse.Action, where: str, value: Any) -> Any:
        if action.nargs == 0:
            if not isinstance(value, bool):
                self.error(f"{where} must be true or false, got {value!r}")
            return value
        if value is None:
            if getattr(action, "nullable", action.default is None):
                return None
            self.error(f"{where} must not be null")
        if action.nargs in ("*", "+") or isinstance(action.nargs, int):
            if not isinstance(value, list) or (isinstance(action.nargs, int) and len(value) != action.nargs):
                count = f"{action.nargs} values" if isinstance(action.nargs, int) else "values"
                self.error(f"{where} must be a list of {count}, got {value!r}")
            items = [self._scalar(action, where, item) for item in value]
            return tuple(items) if isinstance(action.nargs, int) else items
        return self._scalar(action, where, value)

    def _scalar(self, action: argparse.Action, where: str, value: Any) -> Any:
        kind = getattr(action.type, "kind", action.type) or str  # the value type of an optional flag's parser
        if isinstance(value, bool):
            hint = " (YAML reads yes/no/on/off as booleans: quote the value)" if kind is str else ""
            self.error(f"{where} must be {getattr(kind, '__name__', 'a value')}, got {value!r}{hint}")
        if kind is float and isinstance(value, (int, float)):
            converted: Any = float(value)
        elif kind is int and isinstance(value, int):
            converted = value
        elif isinstance(value, str):
            try:
                converted = kind(value)
            except (TypeError, ValueError):
                self.error(f"{where} must be {getattr(kind, '__name__', 'a value')}, got {value!r}")
        else:
            self.error(f"{where} must be {getattr(kind, '__name__', 'a value')}, got {value!r}")
        if action.choices is not None and converted not in action.choices:
            choices = ", ".join(map(str, action.choices))
            self.error(f"{where} must be one of {choices}, got {converted!r}")
        return converted
