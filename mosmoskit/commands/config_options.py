"""Command-line options generated from a config dataclass, shared by ``pretrain`` and ``finetune``.

One option per field (``--name-with-dashes`` or ``--name_with_underscores``), its type from the
annotation, its help from the class docstring, so a command line cannot drift from its config.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import types
import typing
from typing import Any

__all__ = ["add_config_arguments", "config_from_args", "field_help"]


def _plain(text: str) -> str:
    """Docstring text as one help line: no reST backticks, no line breaks, ``%`` escaped for argparse."""
    text = re.sub(r"``([^`]*)``", r"\1", text)
    text = re.sub(r":\w+:`~?([^`]*)`", r"\1", text)
    return " ".join(text.split()).replace("%", "%%")


def field_help(cls: type) -> dict[str, str]:
    """Help text per field, read from the class docstring.

    Two forms are understood: an entry ``name: text`` (or ``a, b, c: text`` for several fields,
    continued on more-indented lines), and a field named inside a sentence and followed by a
    parenthesis, ``name (text)``. Fields described neither way get no text.
    """
    doc = cls.__doc__ or ""
    names = [f.name for f in dataclasses.fields(cls)]
    found: dict[str, str] = {}
    entry = re.compile(r"^(\s+)([a-z_][a-z0-9_]*(?:,\s*[a-z_][a-z0-9_]*)*):\s+(.*)$")
    lines = doc.splitlines()
    for i, line in enumerate(lines):
        match = entry.match(line)
        if not match:
            continue
        indent, keys, text = len(match.group(1)), match.group(2), [match.group(3)]
        for more in lines[i + 1:]:
            if not more.strip() or len(more) - len(more.lstrip()) <= indent:
                break
            text.append(more.strip())
        for key in re.split(r",\s*", keys):
            if key in names:
                found.setdefault(key, _plain(" ".join(text)))
    flat = " ".join(doc.split())
    for name in names:
        if name in found:
            continue
        # "name (text)" with at most one nested parenthesis inside the text
        match = re.search(rf"\b{re.escape(name)} \(((?:[^()]|\([^()]*\))*)\)", flat)
        if match:
            found[name] = _plain(match.group(1))
    return found


def _argument_kwargs(name: str, annotation: Any) -> dict[str, Any]:
    """argparse keywords for a field's annotation; raises TypeError for one the CLI cannot express."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return _argument_kwargs(name, options[0])
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if annotation in (int, float, str):
        return {"type": annotation, "metavar": annotation.__name__.upper()}
    if origin in (tuple, list) and args:
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            item, nargs = args[0], "+"
        elif len(set(args)) == 1:
            item, nargs = args[0], len(args)
        else:
            raise TypeError(f"field {name!r}: a tuple of mixed types {annotation} has no command-line form")
        if item not in (int, float, str):
            raise TypeError(f"field {name!r}: tuples of {item} have no command-line form")
        return {"type": item, "nargs": nargs, "metavar": item.__name__.upper()}
    raise TypeError(f"field {name!r}: type {annotation} has no command-line form; extend _argument_kwargs")


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, title: str | None = None) -> None:
    """One option per field of the dataclass ``cls``, generated from its annotations and docstring.

    ``--name-with-dashes`` and ``--name_with_underscores`` both work; the destination is the field
    name. Options left out are absent from the parsed namespace (default ``SUPPRESS``), so the
    dataclass's own defaults apply and ``__post_init__`` validates the result.

    Raises:
        TypeError: a field type the command line cannot express (so a new field cannot be
            silently skipped).
    """
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    group = parser.add_argument_group(title or f"{cls.__name__} fields")
    for f in dataclasses.fields(cls):
        text = helps.get(f.name, "")
        if f.default is not dataclasses.MISSING:
            shown = " ".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
            text = f"{text} (default: {shown})" if text else f"default: {shown}"
        elif f.default_factory is dataclasses.MISSING:
            text = f"{text} (required)" if text else "required"
        flags = [f"--{f.name.replace('_', '-')}"] + ([f"--{f.name}"] if "_" in f.name else [])
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        group.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS, help=text, required=required,
                           **_argument_kwargs(f.name, hints[f.name]))


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Build ``cls`` from the options given on the command line (others keep their defaults).

    Raises:
        ValueError: a value the config refuses (its message names the field).
    """
    from mosmoskit.config import config_from_dict

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return config_from_dict(cls, given, source="command line")
