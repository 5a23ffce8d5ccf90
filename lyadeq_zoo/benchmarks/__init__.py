"""Speed and memory benchmarks of lyadeq-zoo; the command line is ``lyadeq-benchmark`` (``python tools/benchmark.py``
in a checkout), whose code is :mod:`lyadeq_zoo.cli.benchmark`.

Results (JSON, PNG and the generated ``README.md``) go to the checkout's top-level ``benchmarks/`` folder, or to
the current directory when lyadeq-zoo is installed from a wheel (see :func:`common.results_dir`).

Modules, one section of the result each:

* ``common``: clocks, interleaved timing, machine name, sample images, zoo models, the results folder.
* ``solvers``: our fixed-point solvers against torchdeq's on the zoo's DEQ cells.
* ``throughput``: the GEMM yardstick, train-step / eval throughput, FLOPs and time over the FLOP floor.
* ``memory``: peak memory of the ``ift`` vs ``unroll`` backward (a subprocess per setting on CPU).
* ``attacks``: PGD-10 and whole-suite attack throughput.
* ``targets``: the performance targets judged on a result.
* ``run``: one run of the chosen sections into a result dict.
* ``report``: the result's JSON file, PNG plot, Markdown tables and the results folder's ``README.md``.

Nothing is imported here, so that ``python -m lyadeq_zoo.benchmarks.memory`` (the memory subprocess) runs cleanly.
"""
