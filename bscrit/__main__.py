"""``python -m bscrit`` (also what ``torchrun -m bscrit`` runs)."""

from bscrit.cli import main

main()
