#!/usr/bin/env python
"""The ``lyadeq-benchmark`` command, run from a checkout; its code is lyadeq_zoo/cli/benchmark.py."""

import sys

from lyadeq_zoo.cli.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
