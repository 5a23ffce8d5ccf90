#!/usr/bin/env python
"""The ``lyadeq-eval`` command, run from a checkout; its code is lyadeq_zoo/cli/eval.py."""

import sys

from lyadeq_zoo.cli.eval import main

if __name__ == "__main__":
    sys.exit(main())
