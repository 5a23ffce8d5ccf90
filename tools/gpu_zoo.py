#!/usr/bin/env python
"""The ``lyadeq-gpu-zoo`` command, run from a checkout; its code is lyadeq_zoo/cli/gpu_zoo.py."""

import sys

from lyadeq_zoo.cli.gpu_zoo import main

if __name__ == "__main__":
    sys.exit(main())
