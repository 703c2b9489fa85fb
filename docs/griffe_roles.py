"""Griffe extension for the API reference: the reST in the library's docstrings, shown as Markdown.

The docstrings are prose written for Sphinx; rendered as Markdown three things would come out wrong, so they
are rewritten when griffe loads each object (the library itself is not changed):

- cross-reference roles (``:class:`Transcript```, ``:func:`~geofed_secure.secagg.simulate_aggregation```):
  the role is dropped and its target kept as code (``~`` keeps the last component, as Sphinx does). Nothing is
  turned into a link: many targets are relative names that would not resolve;
- doctest blocks (``>>>`` lines and their output, up to a blank line) become ``pycon`` code blocks (as prose,
  ``[[1.0, 0.7]][0]`` would read as a broken Markdown link);
- a paragraph ending in ``::`` followed by an indented literal block: the block becomes a code block.

Loaded by mkdocstrings (``extensions: [docs/griffe_roles.py]`` in mkdocs.yml).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const|term|ref):`(~?)([^`]+)`")


def strip_roles(text: str) -> str:
    """Replace every ``:role:`target``` in ``text`` by ```target``` (``~a.b.c`` by ```c```)."""

    def code(match: re.Match[str]) -> str:
        target = match.group(2).strip()
        if match.group(1):
            target = target.rsplit(".", 1)[-1]
        return f"`{target}`"

    return _ROLE.sub(code, text)


def fence_blocks(text: str) -> str:
    """Fence doctest blocks and ``::`` literal blocks of a (dedented) docstring as Markdown code blocks."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.lstrip().startswith(">>>"):
            indent = line[: len(line) - len(line.lstrip())]
            block = []
            while i < len(lines) and lines[i].strip():
                block.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i].lstrip())
                i += 1
            out += [f"{indent}```pycon", *(indent + b for b in block), f"{indent}```"]
            continue
        if line.rstrip().endswith("::") and i + 2 < len(lines) and not lines[i + 1].strip():
            indent = len(line) - len(line.lstrip())
            j = i + 2
            block = []
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
                j -= 1
            if block:
                inner = min(len(b) - len(b.lstrip()) for b in block if b.strip())
                head = line.rstrip()[:-2].rstrip()
                out += [head + ":" if head and not head.endswith(":") else head, "", " " * indent + "```"]
                out += [" " * indent + b[inner:] for b in block]
                out += [" " * indent + "```"]
                i = j
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


class ReSTToMarkdown(griffe.Extension):
    """Rewrite each object's docstring once, when griffe creates the object."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = fence_blocks(strip_roles(obj.docstring.value))
