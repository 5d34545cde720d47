"""Command-line applications behind the ``netvsc`` command."""
