"""Runs ``mdstream`` with the crash database shim when ``mdstream.reports`` is
not there yet (see reports_shim.py): ``python tests/crash_cli.py run -- ...``."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import reports_shim  # noqa: E402

reports_shim.install_if_missing()

from mdstream.cli import main  # noqa: E402

sys.exit(main(sys.argv[1:]))
