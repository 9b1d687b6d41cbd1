import sys

from mdstream.cli import main

sys.exit(main())
