"""bscrit: how far can the batch size be scaled before the linear / square-root rule breaks?

Implements the gradient-noise measurement and the bounds of Li, Malladi & Arora (2021),
"On the Validity of Modeling SGD with SDEs" (Thms 5.2, 5.5, 5.6), and the scaling rules of
Malladi, Lyu, Panigrahi & Arora (2022) for adaptive optimisers.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
