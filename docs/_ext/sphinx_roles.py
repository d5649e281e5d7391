"""A griffe extension for the docs site: Sphinx roles in docstrings as Markdown code.

actorq's docstrings cross-reference with reST roles (``:class:`~actorq.Job```,
``:meth:`close```, ``:data:`actorq.converter```), which mkdocstrings shows as
written. This turns each into inline code of the name it shows (the last part
after ``~``), and ``double backticks`` into single ones, and a paragraph's closing ``::`` before
a code block into ``:``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|meth|func|attr|data|exc|mod|obj|const):`(~?)([^`]+)`")
_LITERAL = re.compile(r"``([^`]+)``")
_BLOCK = re.compile(r"::(\n\n[ ]{4})")  # reST's "text::" before an indented block


def _name(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def rewrite(text: str) -> str:
    """``text`` with its Sphinx roles and reST literals as Markdown code."""
    return _BLOCK.sub(r":\1", _LITERAL.sub(r"`\1`", _ROLE.sub(_name, text)))


class SphinxRoles(griffe.Extension):
    """Rewrites every docstring as it is loaded."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
