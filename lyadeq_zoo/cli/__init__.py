"""The command-line programs, installed as console scripts (``[project.scripts]`` in pyproject.toml).

Each module has ``main(argv: list[str] | None = None) -> int`` (the exit status; ``argv`` defaults to
``sys.argv[1:]``). In a source checkout the same programs run as ``python tools/<name>.py``, thin wrappers
around these mains.

* ``lyadeq-eval`` (``tools/eval.py``): :mod:`lyadeq_zoo.cli.eval`, clean and adversarial accuracy.
* ``lyadeq-train`` (``tools/train.py``): :mod:`lyadeq_zoo.cli.train`, training, resume, torchrun.
* ``lyadeq-benchmark`` (``tools/benchmark.py``): :mod:`lyadeq_zoo.cli.benchmark`, speed and memory.
* ``lyadeq-publish`` (``tools/publish.py``): :mod:`lyadeq_zoo.cli.publish`, Hub push and pretrained index.
* ``lyadeq-results-page`` (``tools/results_page.py``): :mod:`lyadeq_zoo.cli.results_page`, the results page.
* ``lyadeq-quickstart`` (``tools/quickstart.py``): :mod:`lyadeq_zoo.cli.quickstart`, the README's first look.
* ``lyadeq-gpu-zoo`` (``tools/gpu_zoo.py``): :mod:`lyadeq_zoo.cli.gpu_zoo`, the prepared GPU training pipeline.
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """The command that started this program, for provenance records (``argv`` None: ``sys.argv[1:]``).

    ``python tools/<name>.py ARGS`` when the process runs a checkout's tools/ wrapper, else the console
    script's name ``script`` followed by ``ARGS``. Absolute paths among ``ARGS`` are written relative to the
    working folder (:func:`portable_argument`), so a model card names no folder of the machine it was made on.
    """
    args = [portable_argument(arg) for arg in (sys.argv[1:] if argv is None else argv)]
    launcher = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    from_checkout_tool = launcher.suffix == ".py" and launcher.parent.name == "tools"
    head = f"python tools/{launcher.name}" if from_checkout_tool else script
    return " ".join([head, shlex.join(args)]) if args else head


def portable_argument(arg: str) -> str:
    """``arg`` with an absolute path (alone, or as the value of ``--opt=PATH`` / ``key=PATH``) made relative to
    the working folder: ``/home/me/data`` run from ``/home/me/repo`` becomes ``../data``."""
    prefix, sep, value = arg.rpartition("=") if "=" in arg else ("", "", arg)
    if not os.path.isabs(value):
        return arg
    return f"{prefix}{sep}{os.path.relpath(value)}"
