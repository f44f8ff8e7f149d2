"""Griffe extension for the API pages: show Sphinx roles in docstrings as inline code.

The docstrings use Sphinx cross-reference roles (``:class:`~sb3_rmdp.RMDPPPO```), which
mkdocstrings' Sphinx parser leaves as literal text. This turns each role into inline code with the
name Sphinx would show: the last component when the target starts with ``~``, the full target otherwise.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|attr|mod|data|obj|exc|const):`(~?)([^`]+)`")


def _show(match: re.Match[str]) -> str:
    short, target = match.group(1), match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class SphinxRoles(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, loader: Any, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_show, obj.docstring.value)
