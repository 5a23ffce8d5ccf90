"""Robustness evaluation: clean accuracy, accuracy per attack and eps, worst case, gradient-masking checks.

>>> result = evaluate(model, loader, "paper")        # doctest: +SKIP
>>> result["worst_case"][-1]["accuracy"]            # doctest: +SKIP

Which numbers are on which samples (``n`` = all evaluated samples; every accuracy divides by ``n``):

* ``clean.accuracy``: plain predictions. Misclassified clean samples count as non-robust everywhere
  and are never attacked.
* An attack with ``subset: all`` (default) runs on every clean-correct sample, so its ``accuracy`` is
  its own robust accuracy, comparable across attacks and models (the paper's Table 1 numbers).
* The l_inf balls of the eps values are nested, so an example that breaks a sample at one eps breaks
  it at every larger eps too: a sample broken at a smaller eps counts as broken at the larger ones.
* An attack with ``subset: remaining`` runs only on samples that every earlier attack in the suite
  failed on at the same eps and every smaller one (AutoAttack's way to save time); its own accuracy
  is unknown (``null``) and only its ``cumulative_accuracy`` is reported.
* ``cumulative_accuracy`` of attack ``i``: samples robust to attacks ``0..i`` at that eps and every
  smaller one.
* ``worst_case``: samples robust to every attack that ran at that eps or a smaller one (RobustBench's
  number, computed per eps ball).

Masking checks (list ``checks``; each ``{"name", "passed", "level", "detail"}``, ``passed`` is
``None`` when the suite lacks what the check needs) are described in :mod:`.checks`.

Modules: :mod:`.suites` (attack suites), :mod:`.runner` (:func:`evaluate`), :mod:`.result` (the result
JSON), :mod:`.checks` and :mod:`.probes` (masking checks), :mod:`.report` (text tables), :mod:`.inputs`
(the model's data set), :mod:`.under_attack` (solver and Lyapunov statistics at worst-case inputs),
:mod:`.job` (``lyadeq-eval --out``: records as it goes, resume, torchrun shards), :mod:`.results_page` (the
zoo's results page; imported on its own).
"""

from .checks import masking_checks
from .inputs import dataset_name, evaluation_data
from .probes import autograd_calls_in_forward
from .report import format_table
from .result import RESULT_FORMAT, attach_provenance, read_result, write_result
from .runner import evaluate
from .suites import list_suites, load_suite, suites_dir

__all__ = [
    "RESULT_FORMAT",
    "attach_provenance",
    "autograd_calls_in_forward",
    "dataset_name",
    "evaluate",
    "evaluation_data",
    "format_table",
    "list_suites",
    "load_suite",
    "masking_checks",
    "read_result",
    "suites_dir",
    "write_result",
]
