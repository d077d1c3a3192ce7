"""YAML config files for command-line flags: ``--config FILE.yaml``.

A config file is a YAML mapping from flag names (``queue-size`` or ``queue_size``) to
values. Its values replace the flags' defaults; flags given on the command line
override the file. An unknown key, a value of the wrong type or a value outside a
flag's choices stops the parser with a message that names the key and what it
accepts. The parsed namespace holds the resolved values, so a run's saved settings
show what it ran with, whichever way each value was given.

An on/off flag (``shuffle-bn: true``) set in a file cannot be switched off on the
command line, since the flag has no ``--no-`` form: edit a copy of the file instead.

Example (``examples/recipes/sce_cifar10.yaml`` with a shorter run)::

    python examples/sce.py --config examples/recipes/sce_cifar10.yaml --epochs 100
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

import yaml

#: Dests that a config file cannot set.
RESERVED = frozenset({"help", "config"})


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
            help="YAML file of flag values (keys are flag names); flags on the command line override it",
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
        """The flags a config file may set, by dest."""
        return {
            action.dest: action
            for action in self._actions
            if action.option_strings and action.dest not in RESERVED and action.dest is not argparse.SUPPRESS
        }

    def config_values(self, path: str | Path) -> dict[str, Any]:
        """The flag values of a config file, checked and converted, by dest.

        Exits through :meth:`error` (status 2, one line) when the file is missing, is
        not a YAML mapping, or has an unknown key or a value of the wrong type.
        """
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except OSError as error:
            self.error(f"--config {path}: cannot read it ({error.strerror or error})")
        except yaml.YAMLError as error:
            self.error(f"--config {path}: not valid YAML ({' '.join(str(error).split())})")
        if loaded is None:
            return {}
        if not isinstance(loaded, dict):
            self.error(f"--config {path}: expected a mapping of flag names to values, got a {type(loaded).__name__}")
        actions = self.settable()
        values = {}
        for key, value in loaded.items():
            dest = str(key).replace("-", "_")
            if dest not in actions:
                valid = ", ".join(sorted(a.option_strings[-1].lstrip("-") for a in actions.values()))
                self.error(f"--config {path}: unknown key {key!r}; valid keys are: {valid}")
            values[dest] = self._config_value(actions[dest], f"--config {path}: {key}", value)
        return values

    def _config_value(self, action: argparse.Action, where: str, value: Any) -> Any:
        if action.nargs == 0:
            if not isinstance(value, bool):
                self.error(f"{where} must be true or false, got {value!r}")
            return value
        if value is None:
            if action.default is None:
                return None
            self.error(f"{where} must not be null (its default is {action.default!r})")
        if action.nargs in ("*", "+") or isinstance(action.nargs, int):
            items = value if isinstance(value, list) else self.error(f"{where} must be a list, got {value!r}")
            return [self._scalar(action, where, item) for item in items]
        return self._scalar(action, where, value)

    def _scalar(self, action: argparse.Action, where: str, value: Any) -> Any:
        kind = action.type or str
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
