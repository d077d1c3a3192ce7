"""Griffe extension: Sphinx roles in docstrings become Markdown code spans.

The package's docstrings are Google style but name other objects with Sphinx roles
(``:class:`ViewRecipe```, ``:meth:`after_optimizer_step```), which Markdown would
show literally. This rewrites ``:role:`target``` to ```target``` (keeping only the
last part of ``~a.b.c``) before mkdocstrings renders the docstring.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|mod|obj|data|exc|const):`~?([^`]+)`")


def strip_roles(text: str) -> str:
    """``:class:`X``` → ```X```."""
    return ROLE.sub(lambda m: f"`{m.group(1)}`", text)


class SphinxRoles(griffe.Extension):
    """Rewrites Sphinx cross-reference roles in every docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        """Called by griffe for every object it loads."""
        if obj.docstring is not None:
            obj.docstring.value = strip_roles(obj.docstring.value)
