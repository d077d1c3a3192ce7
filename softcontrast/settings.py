"""Hyperparameters as dataclass fields, and the error that names one.

Every setting of a run lives in one dataclass field with its default and a one-line
doc (:func:`setting`). The command line, YAML recipes and saved run settings are
generated from these fields (:mod:`softcontrast.cli`), so a default is written once.

A part that refuses a value raises :class:`SettingError` naming the field; the command
line adds the flag that sets it.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any, Mapping


class SettingError(ValueError):
    """A setting outside its range, naming the setting (a config field).

    Args:
        name: the config field (``top_k``), which the command line maps to its flag.
        message: what was wrong and what to do.
    """

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


def setting(default: Any, doc: str, **metadata: Any) -> Any:
    """A config field with its default and one-line doc (the flag's help).

    Args:
        default: the default value (a list or tuple default is copied per instance).
        doc: one line saying what the setting does.
        **metadata: extra metadata: ``flag`` (the flag's name when it differs from the
            field's), ``cli=False`` (a Python-only field, no flag).
    """
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc, **metadata})
    return field(default=default, metadata={"doc": doc, **metadata})


def check_choice(name: str, value: Any, choices: tuple, owner: str = "") -> None:
    """Raises a :class:`SettingError` naming the choices when ``value`` is not one of them."""
    if value not in choices:
        prefix = f"{owner} " if owner else ""
        raise SettingError(name, f"{prefix}{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


#: Settings saved by runs from before the settings were generated from configs: old name → new name.
RENAMED_SETTINGS = {"tau": "temperature"}
#: Old on/off flags saved under their negation: old name → new name (value negated).
NEGATED_SETTINGS = {"no_p": "use_p", "no_q": "use_q", "no_mixup": "mixup", "no_cifar_stem": "cifar_stem"}


#: Settings added after runs were saved, with the value those runs trained with.
ADDED_SETTINGS = {
    "augment": "cifar",
    "lr_scaling": "linear",
    "exclude_norm_bias": False,
    "lars_trust_coefficient": 1e-3,
    "projector_last_bn": "none",
    "projector_hidden_bn": True,
    "predictor_hidden": None,
    "predictor_last_bias": True,
    "sync_bn": True,
}


#: Saved values renamed since, by setting: the old value and today's name of what it meant.
RENAMED_VALUES = {
    # ``sqrt`` meant lr × √(B/256); SimCLR's and FNC's square root is lr × √B (``sqrt-batch``).
    "lr_scaling": {"sqrt": "sqrt-per-256"},
}


def upgrade_settings(saved: Mapping[str, Any]) -> dict[str, Any]:
    """Saved settings in today's names: :data:`RENAMED_SETTINGS`, :data:`NEGATED_SETTINGS`,
    :data:`ADDED_SETTINGS`, :data:`RENAMED_VALUES`, and FNC's ``variant: moco`` as the method
    ``fnc-moco`` (its ``support_views`` as ``detection_views``)."""
    values = dict(saved)
    for name, renamed in RENAMED_VALUES.items():
        if isinstance(values.get(name), str) and values[name] in renamed:
            values[name] = renamed[values[name]]
    for name, value in ADDED_SETTINGS.items():
        values.setdefault(name, value)
    if values.get("method") == "fnc" and values.get("variant") == "moco":
        values["method"] = "fnc-moco"
        if "support_views" in values and "detection_views" not in values:
            values["detection_views"] = values.pop("support_views")
    for old, new in RENAMED_SETTINGS.items():
        if old in values and new not in values:
            values[new] = values.pop(old)
    for old, new in NEGATED_SETTINGS.items():
        if old in values and new not in values:
            values[new] = not values.pop(old)
    return values
