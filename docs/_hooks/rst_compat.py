"""Griffe extension: render the reST pieces of deis_jax's Google-style docstrings.

The library's docstrings are Google style (parsed by griffe) with a few reStructuredText
constructs that Markdown does not know. This extension rewrites them, in the documentation
build only (the source is untouched), before griffe parses the sections:

* ``.. math::`` blocks become ``$$ ... $$`` blocks and ``:math:`x``` becomes ``$x$``
  (``pymdownx.arithmatex``, rendered by MathJax);
* ``:func:``, ``:class:``, ``:mod:``, ``:meth:``, ``:data:``, ``:attr:`` roles become optional
  cross-references (a link when the target is documented on the site, plain code otherwise);
  short names are looked up in the object's module, aliases (``deis_jax.sample``) resolve to
  where the object is defined;
* a paragraph ending in ``::`` followed by an indented literal block becomes a fenced code
  block;
* the ``Example:`` heading (an admonition in griffe's Google parser, whose ``>>>`` lines would
  be read as Markdown) becomes ``Examples:``, which griffe parses into code blocks.
"""

from __future__ import annotations

import html
import re
import textwrap

import griffe

_ROLE = re.compile(r":(func|class|mod|meth|data|attr|obj):`(~?)([^`]+)`")
_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_SECTION_LIKE = re.compile(r"^\w+:$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _take_block(lines: list[str], start: int, base: int) -> tuple[list[str], int]:
    """The lines after ``start`` indented deeper than ``base`` (blank lines included, trailing
    blank lines excluded), dedented, and the index after them."""
    j = start + 1
    while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
        j += 1
    while j > start + 1 and not lines[j - 1].strip():
        j -= 1
    block = textwrap.dedent("\n".join(lines[start + 1:j])).strip("\n").split("\n")
    return block, j


def _blocks(text: str) -> str:
    """``.. math::`` and ``::`` literal blocks -> ``$$`` and fenced code blocks."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        pad = " " * _indent(line)
        if stripped == ".. math::":
            block, i = _take_block(lines, i, _indent(line))
            out += [pad + "$$"] + [pad + b for b in block] + [pad + "$$"]
            continue
        if stripped.endswith("::") and not stripped.startswith(".."):
            block, j = _take_block(lines, i, _indent(line))
            if any(b.strip() for b in block):
                intro = stripped[:-1]
                if _SECTION_LIKE.match(intro):      # "Example::" must not become a section
                    intro = f"*{intro}*"
                if intro != ":":
                    out += [pad + intro, ""]
                out += [pad + "```python"] + [pad + b for b in block] + [pad + "```"]
                i = j
                continue
        if stripped == "Example:":
            line = pad + "Examples:"
        out.append(line)
        i += 1
    return "\n".join(out)


def _resolve(obj: griffe.Object, name: str) -> str:
    """The path of the object that ``name`` names, seen from ``obj``'s module (best effort)."""
    module = obj if obj.is_module else obj.module
    candidates = [name] if "." in name else []
    scope = obj if obj.is_class or obj.is_module else obj.parent
    while scope is not None:
        candidates.append(f"{scope.path}.{name}")
        scope = scope.parent
    candidates.append(f"{module.path}.{name}")
    for path in candidates:
        try:
            target = module.modules_collection.get_member(path)
        except (KeyError, ValueError, AttributeError):
            continue
        try:
            return target.final_target.path if target.is_alias else target.path
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return target.path
    return name


def _roles(obj: griffe.Object, text: str) -> str:
    def ref(match: re.Match) -> str:
        _, tilde, name = match.groups()
        name = name.strip().removesuffix("()")
        title = name.rsplit(".", 1)[-1] if tilde else name
        identifier = _resolve(obj, name.lstrip("."))
        return (f'<autoref identifier="{html.escape(identifier)}" optional>'
                f"<code>{html.escape(title)}</code></autoref>")

    text = _MATH_ROLE.sub(lambda m: f"${m.group(1)}$", text)
    return _ROLE.sub(ref, text)


class RstCompat(griffe.Extension):
    """Rewrite the reST constructs of every docstring of a package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs) -> None:
        self._visit(pkg, set())

    def _visit(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            obj.docstring.value = _roles(obj, _blocks(obj.docstring.value))
        for member in obj.members.values():
            if not member.is_alias:
                self._visit(member, seen)
