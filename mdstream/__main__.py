import sys

from mdstream._entry import run

if __name__ == "__main__":
    sys.exit(run())
