"""The method registry: a name → (config dataclass, build).

A method is a preset of the one training step (:class:`~softcontrast.methods.base.ContrastiveMethod`):
a config dataclass whose fields are its hyperparameters (paper defaults, one-line
docs, made with :func:`~softcontrast.settings.setting`) and a ``build(config,
backbone, setup)`` that composes the parts. Registering one gives it command-line
flags, YAML recipes, checkpoints, ``softcontrast train``/``evaluate`` and the
throughput benchmark::

    from softcontrast.methods.registry import register
    register("my-method", MyConfig, build_my_method, "one line on what it changes")
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from softcontrast.components.augment import ViewRecipe
from softcontrast.components.backbones import Backbone, projector_for
from softcontrast.components.bank import EmbeddingBank


def _same_view(recipe: ViewRecipe) -> ViewRecipe:
    return recipe


@dataclass(frozen=True)
class Setup:
    """What a build gets besides its config: the run's choices that are not the method's.

    Attributes:
        projector: the projector head, or ``None`` for the methods' default
            (:func:`~softcontrast.components.backbones.projector_for`).
        view: maps a method's default view recipe to the run's (view size, crop scale,
            flip chosen for the data, or a named recipe); the identity by default. Called
            as ``view(recipe, slot)`` with the view's position (0: query/anchor, 1:
            key/column, ...) by :meth:`view_at`; a function of one argument is called as
            ``view(recipe)`` and treats every view alike.
        global_batch: images per step over all processes (sizes that scale with the
            batch, such as FNC's default memory).
        num_samples: training images (for a dataset-wide bank), if known.
        bank: a dataset-wide embedding bank for false-negative search, if any.
    """

    projector: nn.Module | None = None
    view: Callable[..., ViewRecipe] = _same_view
    global_batch: int = 256
    num_samples: int | None = None
    bank: EmbeddingBank | None = None

    def view_at(self, recipe: ViewRecipe, slot: int) -> ViewRecipe:
        """The run's recipe for a method's view number ``slot`` whose default is ``recipe``.

        Args:
            recipe: the method's default recipe of that view.
            slot: the view's position: 0 the query/anchor view, 1 the key/column view,
                then any further views (a named pair of recipes alternates over them).
        """
        return self.view(recipe, slot) if _takes_slot(self.view) else self.view(recipe)

    def projector_for(self, backbone: Backbone) -> nn.Module:
        """The run's projector, or the default one for ``backbone``."""
        return self.projector if self.projector is not None else projector_for(backbone)


def _takes_slot(view: Callable[..., ViewRecipe]) -> bool:
    """Whether ``view`` takes a second positional argument (the view's slot)."""
    try:
        parameters = list(inspect.signature(view).parameters.values())
    except (TypeError, ValueError):  # no signature to read: call it with the recipe only
        return False
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return True
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return sum(p.kind in positional for p in parameters) >= 2


#: ``build(config, backbone, setup) -> ContrastiveMethod``.
Build = Callable[[Any, Backbone, Setup], nn.Module]


@dataclass(frozen=True)
class MethodSpec:
    """One registered method.

    Attributes:
        name: the registry name (``softcontrast train NAME``).
        config: its config dataclass (fields = hyperparameters).
        build: composes the method from a config, a backbone and a :class:`Setup`.
        summary: one line on what the method changes.
    """

    name: str
    config: type
    build: Build
    summary: str = ""

    def __call__(self, backbone: Backbone, config: Any = None, setup: Setup | None = None, **overrides: Any):
        """Builds the method: ``config`` (default: the config's defaults) with ``overrides``."""
        config = self.config() if config is None else config
        if overrides:
            config = dataclasses.replace(config, **overrides)
        return self.build(config, backbone, setup or Setup())


_REGISTRY: dict[str, MethodSpec] = {}


def register(name: str, config: type, build: Build, summary: str = "") -> MethodSpec:
    """Registers a method under ``name`` (replacing one of the same name) and returns its spec.

    Raises:
        TypeError: ``config`` is not a dataclass.
    """
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"the config of method {name!r} must be a dataclass, got {config!r}")
    spec = MethodSpec(name, config, build, summary)
    _REGISTRY[name] = spec
    return spec


def method_names() -> list[str]:
    """The registered method names, sorted."""
    _load_builtin_methods()
    return sorted(_REGISTRY)


def method_spec(name: str) -> MethodSpec:
    """The registered method ``name``.

    Raises:
        KeyError: no method of that name (the message lists the registered ones).
    """
    _load_builtin_methods()
    if name not in _REGISTRY:
        raise KeyError(f"unknown method {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def load_plugin(source: str) -> None:
    """Imports a user's file (``my_methods.py``) or module (``my_package.methods``), which registers methods."""
    if source.endswith(".py") or Path(source).is_file():
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"--plugin {source}: no such file")
        module_spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[path.stem] = module
        module_spec.loader.exec_module(module)
    else:
        importlib.import_module(source)


def _load_builtin_methods() -> None:
    import softcontrast.methods  # noqa: F401  (registers the built-in methods)
