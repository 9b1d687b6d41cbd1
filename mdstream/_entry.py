"""The ``mdstream`` program's entry point: only ``sys`` until the command line is loaded.

Ctrl-C while the command line module and its imports load ends in the same
one-line message as later on, not a traceback.
"""

import sys


def run() -> int:
    """Load :mod:`mdstream.cli` and run it; returns the exit status."""
    try:
        from mdstream.cli import main
    except KeyboardInterrupt:
        print("mdstream: error: interrupted", file=sys.stderr)
        return 130
    return main()
