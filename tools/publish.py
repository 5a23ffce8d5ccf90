"""The ``lyadeq-publish`` command, run from a checkout; its code is lyadeq_zoo/cli/publish.py."""

import sys

from lyadeq_zoo.cli.publish import main

if __name__ == "__main__":
    sys.exit(main())
