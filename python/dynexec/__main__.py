"""python -m dynexec: the dynexec command (dynexec.cli)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
