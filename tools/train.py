#!/usr/bin/env python
"""The ``lyadeq-train`` command, run from a checkout; its code is lyadeq_zoo/cli/train.py."""

import sys

from lyadeq_zoo.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
