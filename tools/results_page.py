#!/usr/bin/env python
"""The ``lyadeq-results-page`` command, run from a checkout; its code is lyadeq_zoo/cli/results_page.py."""

import sys

from lyadeq_zoo.cli.results_page import main

if __name__ == "__main__":
    sys.exit(main())
