"""``python -m bscrit`` (also what ``torchrun -m bscrit`` runs)."""

from .cli import main

main()
