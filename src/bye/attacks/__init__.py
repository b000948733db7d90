"""Image backdoor triggers, looked up by name: ``get_trigger("badnets", **params).apply(img, rng)``.

Importing this package registers every trigger below. To add an attack, write one module in
``bye/attacks/triggers/`` (see ``registry.py`` for the contract) and add its import here.
"""

from bye.attacks.registry import Trigger, available_triggers, get_trigger, register_trigger

# Imported for their registration side effect.
from bye.attacks.triggers import badnets  # noqa: F401
from bye.attacks.triggers import blended  # noqa: F401
from bye.attacks.triggers import checkerboard  # noqa: F401
from bye.attacks.triggers import dual_patch  # noqa: F401
from bye.attacks.triggers import ftrojan  # noqa: F401
from bye.attacks.triggers import multi_patch  # noqa: F401
from bye.attacks.triggers import random_patch  # noqa: F401
from bye.attacks.triggers import sig  # noqa: F401
from bye.attacks.triggers import wanet  # noqa: F401

__all__ = ["Trigger", "available_triggers", "get_trigger", "register_trigger"]
