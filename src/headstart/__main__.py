"""``python -m headstart`` (also what ``torchrun -m headstart`` runs)."""

from headstart.cli import main

main()
