"""The trigger registry: a trigger name maps to a frozen dataclass whose fields are its parameters.

Triggers are built from a name and a flat parameter dict, as read from a YAML attack config::

    trigger = get_trigger("badnets", colour=[255, 0, 0], position="bottom_right")
    poisoned = trigger.apply(image, np.random.default_rng(seed))

Adding an attack is one new module in ``bye.attacks.triggers`` that defines a frozen dataclass
subclass of :class:`Trigger` decorated with ``@register_trigger("name")``, plus one import line
in ``bye/attacks/__init__.py``.

The contract every trigger keeps (checked for all registered triggers in tests/test_triggers.py):

* any PIL image comes in; an RGB image of the same size goes out (other modes are converted to
  RGB first);
* the output is a new image, the input is never modified;
* all per-sample randomness comes from the ``rng`` argument, so the same generator state gives
  byte-identical output. Patterns that must be the same for every poisoned sample (blended noise,
  the WaNet warp field) come from the trigger's own ``pattern_seed`` field instead.
"""

from __future__ import annotations

import abc
import dataclasses
import inspect
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import numpy as np
from PIL import Image

__all__ = ["Trigger", "available_triggers", "get_trigger", "register_trigger"]


class Trigger(abc.ABC):
    """Base class of every image trigger.

    Concrete triggers are frozen dataclasses: their fields are their parameters, all with
    defaults, so ``get_trigger(name, **yaml_params)`` can build one and instances are hashable
    and safe to share between workers.
    """

    #: The registry name, set by :func:`register_trigger`.
    name: ClassVar[str] = ""

    @abc.abstractmethod
    def apply(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        """Return a poisoned copy of ``image``.

        ``image`` may have any mode; the result is a new RGB image of the same size. ``rng`` is
        the only source of per-sample randomness (triggers without any ignore it).
        """

    def __call__(self, image: Image.Image, rng: np.random.Generator) -> Image.Image:
        return self.apply(image, rng)


_REGISTRY: dict[str, type[Trigger]] = {}

T = TypeVar("T", bound=type[Trigger])


def register_trigger(name: str) -> Callable[[T], T]:
    """Class decorator: register a trigger class under ``name``.

    The class must be a concrete subclass of :class:`Trigger`, a *frozen* dataclass, and give
    every field a default. Put it above ``@dataclass(frozen=True)``. Registering a second class
    under a taken name raises ``ValueError`` (re-running the same module, e.g. on reload, is
    allowed).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"trigger name must be a non-empty string, got {name!r}")

    def decorator(cls: T) -> T:
        if not (isinstance(cls, type) and issubclass(cls, Trigger)):
            raise TypeError(f"@register_trigger({name!r}) needs a subclass of Trigger, got {cls!r}")
        if inspect.isabstract(cls):
            raise TypeError(f"trigger {cls.__qualname__} does not implement apply()")
        if not dataclasses.is_dataclass(cls) or not cls.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            raise TypeError(
                f"trigger {cls.__qualname__} must be a frozen dataclass: "
                "put @register_trigger above @dataclass(frozen=True)"
            )
        no_default = [
            f.name for f in dataclasses.fields(cls)
            if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        if no_default:
            raise TypeError(f"trigger {cls.__qualname__} fields need defaults: {no_default}")
        existing = _REGISTRY.get(name)
        if existing is not None and (existing.__module__, existing.__qualname__) != (
            cls.__module__, cls.__qualname__
        ):
            raise ValueError(
                f"trigger name {name!r} is already registered to "
                f"{existing.__module__}.{existing.__qualname__}"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def available_triggers() -> list[str]:
    """The registered trigger names, sorted."""
    return sorted(_REGISTRY)


def trigger_parameters(name: str) -> dict[str, Any]:
    """The parameters of trigger ``name`` and their defaults (``ValueError`` if unknown)."""
    cls = _lookup(name)
    return {
        f.name: (f.default if f.default is not dataclasses.MISSING else f.default_factory())  # type: ignore[misc]
        for f in dataclasses.fields(cls)
        if f.init
    }


def get_trigger(name: str, **params: Any) -> Trigger:
    """Build the trigger registered as ``name`` with ``params`` overriding its defaults.

    Raises ``ValueError`` for an unknown name (listing the known ones), for a parameter the
    trigger does not have (listing the ones it has), and for an invalid parameter value.
    YAML lists are accepted where a tuple is expected.
    """
    cls = _lookup(name)
    accepted = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"trigger {name!r} has no parameter(s) {', '.join(map(repr, unknown))}; "
            f"its parameters are: {', '.join(accepted) or '(none)'}"
        )
    return cls(**params)


def _lookup(name: str) -> type[Trigger]:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        known = ", ".join(available_triggers()) or "(none registered)"
        raise ValueError(f"unknown trigger {name!r}; known triggers: {known}") from None
