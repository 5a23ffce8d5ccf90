"""The ``lyadeq-quickstart`` command, run from a checkout; its code is lyadeq_zoo/cli/quickstart.py."""

import sys

from lyadeq_zoo.cli.quickstart import main

if __name__ == "__main__":
    sys.exit(main())
