"""Command-line flags generated from config dataclasses: one flag per field.

A field made with :func:`~softcontrast.settings.setting` becomes ``--field-name`` (or
``--<metadata["flag"]>``) with the field's doc as help; ``cli=False`` fields get none.
Types: ``int``, ``float``, ``str``; ``bool`` becomes an on/off pair
(``--shuffle-bn``/``--no-shuffle-bn``); ``X | None`` takes ``X``; ``tuple[float, float]``
takes two values. ``choices`` in the metadata restrict the values.

Generated flags default to :data:`argparse.SUPPRESS`: the parsed namespace holds only
the settings a flag (or a config file) gave, so the caller knows which defaults apply.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any, Union


@dataclass(frozen=True)
class Flag:
    """The flag of one config field.

    Attributes:
        field: the dataclass field's name (the namespace's dest).
        name: the flag without dashes (``shuffle-bn``).
        kind: ``int``, ``float``, ``str`` or ``bool`` (of each value of a tuple).
        count: values the flag takes: 1, or the tuple's length.
        optional: whether ``None`` is a valid value.
        default: the field's default.
        doc: the one-line help.
        choices: the valid values, if restricted.
    """

    field: str
    name: str
    kind: type
    count: int
    optional: bool
    default: Any
    doc: str
    choices: tuple | None = None

    @property
    def option(self) -> str:
        """How a message names the flag: ``--top-k``, or ``--shuffle-bn/--no-shuffle-bn``."""
        return f"--{self.name}/--no-{self.name}" if self.kind is bool else f"--{self.name}"


def config_flags(config: type) -> list[Flag]:
    """The flags of a config dataclass's fields, in field order (``cli=False`` fields left out).

    Raises:
        TypeError: a field's type is none of the supported ones.
    """
    hints = typing.get_type_hints(config)
    flags = []
    for item in dataclasses.fields(config):
        if not item.metadata.get("cli", True) or not item.init:
            continue
        kind, count, optional = _kind_of(hints[item.name], f"{config.__name__}.{item.name}")
        default = item.default if item.default is not dataclasses.MISSING else item.default_factory()
        name = item.metadata.get("flag", item.name).replace("_", "-")
        flags.append(Flag(item.name, name, kind, count, optional, default, item.metadata.get("doc", ""),
                          item.metadata.get("choices")))
    return flags


def _kind_of(hint: Any, where: str) -> tuple[type, int, bool]:
    optional = False
    if typing.get_origin(hint) in (Union, types.UnionType):
        inner = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        if len(inner) == 1:
            hint, optional = inner[0], True
    if typing.get_origin(hint) is tuple:
        items = typing.get_args(hint)
        if items and len(set(items)) == 1 and items[0] in (int, float, str):
            return items[0], len(items), optional
    elif hint in (int, float, str, bool):
        return hint, 1, optional
    raise TypeError(f"{where}: settings of type {hint!r} have no command-line flag (mark the field cli=False)")


def add_flags(parser: argparse._ActionsContainer, flags: list[Flag], notes: dict[str, str] | None = None) -> None:
    """Adds one argument per flag to ``parser`` (or an argument group), defaulting to ``SUPPRESS``.

    Args:
        parser: where the arguments go.
        flags: from :func:`config_flags`.
        notes: extra text for a field's help (a data-dependent default), by field name.
    """
    notes = notes or {}
    for flag in flags:
        shown = " ".join(map(str, flag.default)) if isinstance(flag.default, tuple) else flag.default
        default = "none" if shown is None else ("on" if shown is True else "off" if shown is False else shown)
        explained = flag.default is None and ("none" in flag.doc or "default" in flag.doc)
        note = notes.get(flag.field, "")
        suffix = (f" ({note.lstrip('; ')})" if note else "") if explained else f" (default: {default}{note})"
        help_text = f"{flag.doc}{suffix}".replace("%", "%%")
        options: dict[str, Any] = {"dest": flag.field, "default": argparse.SUPPRESS, "help": help_text}
        if flag.kind is bool:
            parser.add_argument(f"--{flag.name}", action=argparse.BooleanOptionalAction, **options)
            continue
        options["type"] = _or_none(flag.kind) if flag.optional and flag.count == 1 else flag.kind
        if flag.count > 1:
            options.update(nargs=flag.count, metavar=tuple("ABCDEFGH"[:flag.count]))
        if flag.choices is not None:
            options["choices"] = flag.choices
        action = parser.add_argument(f"--{flag.name}", **options)
        action.nullable = flag.optional  # a config file may set it to null


def _or_none(kind: type) -> Any:
    """``kind``'s parser that also takes ``none`` (an optional setting set to ``None`` from the command line)."""

    def parse(text: str) -> Any:
        return None if text.strip().lower() == "none" else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its errors
    parse.kind = kind  # a config file's value is checked against the type itself
    return parse
