"""`python -m biounet` runs the command line."""

import sys

from biounet.cli import main

if __name__ == "__main__":
    sys.exit(main())
