"""A name -> builder registry for networks, in the style of timm's ``register_model``.

A new backbone is one decorated builder function; everything else (configs that name it,
``create_model``, the shape/gradient tests in ``tests/test_models.py``) picks it up from here::

    @register_model("unet2d", kind="image_encoder", test_kwargs={"features": (4, 4, 8, 8, 16, 4)})
    def unet2d(in_channels: int = 1, features=(16, 16, 32, 64, 128, 16), ...) -> BasicUNetEncoder:
        return BasicUNetEncoder(...)

    encoder = create_model("unet2d", in_channels=1)

``test_kwargs`` is the builder's *tiny* preset: keyword arguments that make a network small enough
for a forward/backward pass on a laptop CPU in well under a second. The generated tests build every
registered model with it, so a builder whose defaults are already tiny may leave it empty.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch.nn as nn

__all__ = [
    "MODEL_KINDS",
    "ModelEntry",
    "register_model",
    "create_model",
    "list_models",
    "model_entry",
    "model_test_kwargs",
]

# The roles a registered network can play. A kind is a promise about the builder's return value:
# "image_encoder" builders return an ``ImageEncoder`` (see ``image_encoders.py``), "segmenter"
# builders a segmentation network. Add a kind here when a new role appears; an unknown kind in
# ``register_model`` is almost always a typo, so it raises.
MODEL_KINDS: tuple[str, ...] = ("image_encoder", "segmenter")


@dataclass(frozen=True)
class ModelEntry:
    """One registered builder.

    Attributes:
        name: the registry name (``"vit3d"``).
        kind: one of ``MODEL_KINDS``.
        builder: the function that returns the ``nn.Module``.
        test_kwargs: keyword arguments of a tiny instance for tests (see the module docstring).
    """

    name: str
    kind: str
    builder: Callable[..., nn.Module]
    test_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"a model name must be a non-empty string, got {self.name!r}")
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model {self.name!r}: kind must be one of {list(MODEL_KINDS)}, got {self.kind!r}")
        if not callable(self.builder):
            raise ValueError(f"model {self.name!r}: builder must be callable, got {self.builder!r}")
        # The tiny preset must name real arguments; checking here catches a stale preset at import
        # time instead of in a test run.
        _check_kwargs(self.name, self.builder, dict(self.test_kwargs), what="test_kwargs")


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str, kind: str, test_kwargs: Mapping[str, Any] | None = None
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator that registers a builder function under ``name``.

    Args:
        name: registry name, unique across kinds (configs refer to models by this name).
        kind: one of ``MODEL_KINDS`` (``"image_encoder"``, ``"segmenter"``).
        test_kwargs: keyword arguments of a tiny instance used by the generated tests.

    Returns:
        The decorator; it returns the builder unchanged, so the builder stays callable directly.

    Raises:
        ValueError: ``name`` is already registered, ``kind`` is unknown, or ``test_kwargs`` names an
            argument the builder does not take.
    """

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(
                f"model name {name!r} is already registered (by {_REGISTRY[name].builder.__module__}."
                f"{_REGISTRY[name].builder.__qualname__}); choose another name"
            )
        _REGISTRY[name] = ModelEntry(name=name, kind=kind, builder=builder, test_kwargs=dict(test_kwargs or {}))
        return builder

    return decorator


def list_models(kind: str | None = None) -> list[str]:
    """Sorted names of the registered models, optionally only those of one ``kind``.

    Raises:
        ValueError: ``kind`` is not one of ``MODEL_KINDS``.
    """
    if kind is not None and kind not in MODEL_KINDS:
        raise ValueError(f"kind must be one of {list(MODEL_KINDS)} or None, got {kind!r}")
    return sorted(n for n, e in _REGISTRY.items() if kind is None or e.kind == kind)


def model_entry(name: str) -> ModelEntry:
    """The registry entry of ``name``.

    Raises:
        ValueError: ``name`` is not registered; the message lists the registered names and the
            closest matches.
    """
    if name not in _REGISTRY:
        known = sorted(_REGISTRY)
        close = difflib.get_close_matches(str(name), known, n=2)
        hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
        raise ValueError(f"unknown model {name!r}{hint}; registered models: {known}")
    return _REGISTRY[name]


def model_test_kwargs(name: str) -> dict[str, Any]:
    """A copy of the tiny preset of ``name`` (see ``register_model``)."""
    return dict(model_entry(name).test_kwargs)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with ``kwargs`` passed to its builder.

    Example:
        >>> encoder = create_model("unet2d", in_channels=1, features=(4, 4, 8, 8, 16, 4))
        >>> encoder.feature_stride
        4

    Raises:
        ValueError: unknown ``name`` (the message lists the registered ones).
        TypeError: a keyword the builder does not accept; the message names the model and the
            keywords it does accept.
    """
    entry = model_entry(name)
    _check_kwargs(name, entry.builder, kwargs, what="create_model")
    return entry.builder(**kwargs)


def _check_kwargs(name: str, builder: Callable[..., Any], kwargs: dict[str, Any], what: str) -> None:
    """Bind ``kwargs`` to the builder's signature without calling it.

    Binding first (instead of catching the builder's own ``TypeError``) keeps a genuine
    ``TypeError`` raised deep inside a builder from being mislabelled as a bad argument.
    """
    signature = inspect.signature(builder)
    try:
        signature.bind(**kwargs)
    except TypeError as err:
        accepted = [
            p.name for p in signature.parameters.values() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        ]
        unknown = [k for k in kwargs if k not in signature.parameters]
        detail = f"unknown argument(s) {unknown}" if unknown else str(err)
        error = TypeError(f"{what}: model {name!r}: {detail}; it accepts {accepted}")
        if what == "test_kwargs":
            raise ValueError(str(error)) from err
        raise error from err
