"""bscrit: how far can the batch size be scaled before the linear / square-root rule breaks?

Implements the gradient-noise measurement and the bounds of Li, Malladi & Arora (2021),
"On the Validity of Modeling SGD with SDEs" (Thms 5.2, 5.5, 5.6), and the scaling rules of
Malladi, Lyu, Panigrahi & Arora (2022) for adaptive optimisers.

The Python API (docs/api.md)::

    import bscrit
    m = bscrit.measure(model, dataset, loss_fn, batch_size=128, optimizer=opt)
    m.save("m.json")                      # the JSON `bscrit measure --out` writes
    p = bscrit.predict(m)                 # B*, its interval, the recommended range
    s = bscrit.scale(1024, m)             # the hyperparameters at B' = 1024

The names are loaded on first use (``bscrit.api``), so ``import bscrit`` imports no torch;
``predict``, ``scale`` and ``load_measurement`` never do. ``bscrit.FreeCapture`` is free mode by
hand (docs/free.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "FreeCapture",
    "Measurement",
    "Prediction",
    "__version__",
    "load_measurement",
    "measure",
    "predict",
    "scale",
]

if TYPE_CHECKING:
    from bscrit.api import load_measurement, measure, predict, scale
    from bscrit.artifacts.measurement import Measurement
    from bscrit.engine.free_capture import FreeCapture
    from bscrit.theory.prediction import Prediction

#: name -> the module that defines it (imported when the name is first read).
_LAZY = {
    "measure": "bscrit.api",
    "predict": "bscrit.api",
    "scale": "bscrit.api",
    "load_measurement": "bscrit.api",
    "Measurement": "bscrit.artifacts.measurement",
    "Prediction": "bscrit.theory.prediction",
    "FreeCapture": "bscrit.engine.free_capture",  # free mode by hand (docs/free.md)
}


def __getattr__(name: str) -> Any:
    """The API's names, imported on first use (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bscrit' has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
