"""Typed, frozen configs that notebooks, the CLI and checkpoints share.

A run is described by one frozen dataclass (``PretrainConfig``, ...). Its field names are the
notebook's papermill parameters and the CLI's options, so one name means one thing everywhere. This
module turns plain dicts (papermill parameters, JSON from a checkpoint, CLI namespaces) into such a
dataclass and back, refusing unknown names and wrong types with a message that says what to change.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any, Mapping, TypeVar

__all__ = ["config_from_dict", "config_to_dict", "describe_fields", "check_choice", "check_positive"]

C = TypeVar("C")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-able dict of a config dataclass (tuples become lists)."""
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def config_from_dict(cls: type[C], values: Mapping[str, Any], source: str = "parameters") -> C:
    """Build ``cls`` from ``values``, rejecting unknown names and values of the wrong type.

    Args:
        cls: a dataclass type.
        values: name -> value (missing names take the dataclass defaults).
        source: what the values are (a notebook, a checkpoint path), for messages.

    Raises:
        ValueError: an unknown name (with the closest known names) or a value whose type does not
            match the field's annotation; validation errors of ``cls.__post_init__`` pass through.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in values if k not in fields]
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, list(fields), n=2)
            hints.append(f"{name!r}" + (f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""))
        raise ValueError(
            f"{source}: unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(hints)}; "
            f"known: {sorted(fields)}"
        )
    hints_by_name = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(value, hints_by_name[name], f"{source}: parameter {name!r}")
    return cls(**kwargs)


def describe_fields(cls: type) -> dict[str, str]:
    """Field name -> type as text, for documentation and notebook parameter checks."""
    hints = typing.get_type_hints(cls)
    return {f.name: _type_name(hints[f.name]) for f in dataclasses.fields(cls)}


def check_choice(name: str, value: Any, choices: typing.Iterable[Any]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def check_positive(name: str, value: float, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` > 0 (or >= 0)."""
    if value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"{name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


def check_phantom_grid(shape: typing.Sequence[Any], spacing: typing.Sequence[Any], spatial_dims: int) -> None:
    """Raise ``ValueError`` unless a phantom grid is empty (the generator's default) or fits ``spatial_dims``.

    Args:
        shape: voxels per axis: empty, or ``spatial_dims`` positive integers.
        spacing: mm per axis: empty, or ``spatial_dims`` positive finite numbers.
        spatial_dims: 2 or 3.
    """
    dims = spatial_dims
    if shape and (len(shape) != dims or any(isinstance(s, bool) or int(s) != s or s < 1 for s in shape)):
        raise ValueError(f"phantom_shape must be empty or {dims} positive integers for spatial_dims={dims}, "
                         f"got {list(shape)}")
    if spacing and (len(spacing) != dims or not all(math.isfinite(float(v)) and float(v) > 0 for v in spacing)):
        raise ValueError(f"phantom_spacing must be empty or {dims} positive numbers (mm) for spatial_dims={dims}, "
                         f"got {list(spacing)}")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; allow int -> float and list -> tuple."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return _coerce(value, option, where)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(f"{where} must be {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    if tp is type(None):
        if value is None:
            return None
        raise ValueError(f"{where} must be None, got {value!r}")
    if origin is typing.Literal:
        if value in args:
            return value
        raise ValueError(f"{where} must be one of {list(args)}, got {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list/tuple, got {value!r} ({type(value).__name__})")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(v, args[0], where) for v in value]
        elif origin is tuple and args:
            if len(args) != len(value):
                raise ValueError(f"{where} must have {len(args)} items, got {len(value)}: {value!r}")
            items = [_coerce(v, a, where) for v, a in zip(value, args)]
        else:
            items = list(value)
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where} must be a number, got {value!r} ({type(value).__name__})")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ValueError(f"{where} must be an integer, got {value!r} ({type(value).__name__})")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be True or False, got {value!r} ({type(value).__name__})")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where} must be a string, got {value!r} ({type(value).__name__})")
        return value
    return value
