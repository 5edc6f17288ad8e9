"""``python -m inspector``: the same command line as ``inspector``."""

from inspector.cli import main

main()
