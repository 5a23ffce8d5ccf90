"""The zoo's results page (``docs/results.md``) and model cards from evaluation JSONs.

``tools/results_page.py`` is the command line. :func:`write_results_page` reads ``RUNS/<zoo_name>_<suite>.json``
(as ``tools/eval.py --json`` writes them) for the suite slots ``paper``, ``strong`` and ``curve`` and writes
the page: per data set, our numbers with the paper's row below each model, the gradient-masking checks, the
training facts, one robustness-curve figure, a generated "where we differ from the paper" section, and the
commands that reproduce everything. No number on the page comes from anywhere but these files, the shipped
models' ``config.json`` and the paper's numbers recorded in each zoo config's ``meta``.
:func:`update_cards` puts the numbers into the shipped model cards.

=============== ==========================================================================================
module          job
=============== ==========================================================================================
``entries``     the zoo's models with their shipped checkpoint and eval results (``collect_models``)
``formatting``  numbers and labels as the page writes them
``tables``      results, masking-check and training tables
``differences`` the "where we differ from the paper" facts
``figure``      the robustness-curve figure
``reproduce``   the "How to reproduce" commands
``page``        the page from the sections (``build_page``, ``write_results_page``)
``cards``       ``--update-cards``: metrics into the shipped config.json / README.md
=============== ==========================================================================================
"""

from .cards import card_metrics, update_card, update_cards
from .entries import ModelEntry, collect_models, weights_status
from .page import build_page, write_results_page

__all__ = [
    "ModelEntry",
    "build_page",
    "card_metrics",
    "collect_models",
    "update_card",
    "update_cards",
    "weights_status",
    "write_results_page",
]
