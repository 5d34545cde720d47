"""``python -m netvsc`` runs the ``netvsc`` command."""

from netvsc.cli import main

main()
