"""Adversarial attacks (registry kind ``attack``), l_inf, on models taking images in [0, 1].

Build one with :func:`create_attack` and call it as ``attack(model, x, y) -> x_adv``:

>>> from lyadeq_zoo.attacks import create_attack
>>> attack = create_attack("pgd", eps="8/255")          # the LyaDEQ paper's schedule
>>> x_adv = attack(model, x, y)                          # doctest: +SKIP

============ ============ ==========================================================================
name         threat       what
============ ============ ==========================================================================
fgsm         white-box    one sign-gradient step of size eps
ifgsm        white-box    I-FGSM / BIM from x (paper: alpha 1/255, steps floor(min(e+4, 1.25e)))
pgd          white-box    PGD from a uniform random start (same schedule), restarts, ce/cw/dlr loss
apgd         white-box    Auto-PGD (Croce & Hein 2020): step-size free, momentum, ce/dlr loss
square       score-based  Square Attack (Andriushchenko et al. 2020): logits only, no gradient
transfer     transfer     an inner attack run on a source model (e.g. the plain DEQ baseline)
autoattack   ensemble     the official AutoAttack (Croce & Hein 2020; extra ``pip install "lyadeq-zoo[autoattack]"``)
intermediate white-box    PGD through the solver's intermediate states z_1..z_K (Yang, Pang & Liu 2022; DEQs only)
divergence   white-box    PGD on the fixed-point residual: inputs where the solver does not converge (DEQs only)
============ ============ ==========================================================================

Gradient attacks take ``grad_mode`` ("ift", "unroll", "phantom" or a backward spec dict) to attack a
DEQ model through another backward than its own (via ``lyadeq_zoo.deq.layer.override_backward``).
"""

from ..errors import AttackNotApplicable
from .apgd import APGD, apgd_checkpoints
from .autoattack import AutoAttack
from .base import Attack, create_attack
from .divergence import Divergence
from .intermediate import Intermediate
from .losses import LOSSES, attack_loss, margin
from .sign_gradient import FGSM, IFGSM, PGD, IterativeSignAttack
from .square import Square, square_fraction
from .threat_model import eps_in_255, paper_steps, parse_eps, project
from .transfer import Transfer

__all__ = [
    "APGD",
    "FGSM",
    "IFGSM",
    "LOSSES",
    "PGD",
    "Attack",
    "AttackNotApplicable",
    "AutoAttack",
    "Divergence",
    "Intermediate",
    "IterativeSignAttack",
    "Square",
    "Transfer",
    "apgd_checkpoints",
    "attack_loss",
    "create_attack",
    "eps_in_255",
    "margin",
    "paper_steps",
    "parse_eps",
    "project",
    "square_fraction",
]
