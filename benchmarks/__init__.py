"""Speed and memory benchmarks of lyadeq-zoo; the command line is ``python tools/benchmark.py``.

This folder is a package of the checkout, not of the installed distribution: run it through the tool
(which finds it beside ``tools/``), or import it with the repository root on ``sys.path``
(``python -m pytest`` from the root does that, as does the ``pythonpath`` setting of the tests).

Modules, one section of the result each:

* ``common``: clocks, interleaved timing, machine name, sample images, zoo models.
* ``solvers``: our fixed-point solvers against torchdeq's on the zoo's DEQ cells.
* ``throughput``: the GEMM yardstick, train-step / eval throughput, FLOPs and time over the FLOP floor.
* ``memory``: peak memory of the ``ift`` vs ``unroll`` backward (a subprocess per setting on CPU).
* ``attacks``: PGD-10 and whole-suite attack throughput.
* ``targets``: the performance targets judged on a result.
* ``run``: one run of the chosen sections into a result dict.
* ``report``: the result's JSON file, PNG plot, Markdown tables and ``benchmarks/README.md``.

Nothing is imported here, so that ``python -m benchmarks.memory`` (the memory subprocess) runs cleanly.
"""
