"""AutoAttack (Croce & Hein, ICML 2020), the official implementation, as the attack ``autoattack``.

This runs Croce & Hein's own code (the PyPI package ``pyautoattack``, an optional extra:
``pip install "lyadeq-zoo[autoattack]"``), so its numbers are the ones RobustBench reports. The ``standard``
version runs APGD-CE, APGD-T (targeted DLR loss, 9 target classes), FAB-T (9 targets) and Square (5000
queries), each on the samples the earlier ones failed on; ``rand`` runs APGD-CE and APGD-DLR with EOT for
randomized defenses; ``plus`` is AA+; ``custom`` runs ``attacks_to_run`` with AutoAttack's constructor budgets
(APGD-CE/DLR and FAB 5 restarts, 9 target classes, Square 5000). ``n_iter``, ``n_restarts``,
``n_target_classes`` and ``n_queries`` override a version's budget (for CPU runs; the result then is no longer
the standard number and its options say so).

``grad_mode`` attacks a DEQ through another backward (:func:`.gradients.gradient_mode`): every gradient
AutoAttack takes goes through it; the forward pass, and so every decision whether a sample is fooled, is the
model's own.

AutoAttack's own checks (its ``checks`` module: randomized defense, probability outputs, dynamic defense,
zero gradients, too many target classes, Square beating the gradient attacks) are captured from its logger,
never printed, and collected per attack object in :attr:`AutoAttack.flags`; :meth:`AutoAttack.run_info` hands
them to the evaluation result and the ``autoattack_flags`` masking check.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any, Literal

import torch
from torch import nn

from ..errors import AttackNotApplicable, MissingDependencyError
from ..inputs import parameter_dtype
from ..registry import register
from .base import Attack
from .gradients import gradient_mode
from .threat_model import project

INSTALL_COMMAND = 'pip install "lyadeq-zoo[autoattack]"'
TESTED_VERSION = "0.2.0"  # the version pinned by the extra; the settings below use its attribute names
VERSIONS = ("standard", "rand", "plus", "custom")
SUB_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
_DLR_ATTACKS = ("apgd-dlr", "apgd-t")  # the DLR loss needs at least 4 classes
_TARGETED = ("apgd-t", "fab-t")
# AutoAttack's check messages -> our flag names (matched on the message text), and which are warnings.
FLAG_PATTERNS = (
    ("randomized", "randomized defense"),
    ("probability_output", "probability distribution"),
    ("dynamic", "dynamic defense"),
    ("zero_gradients", "zero gradient"),
    ("square_beats_gradient", "Square Attack has decreased"),
    ("target_classes", "classes"),
)
INFO_FLAGS = ("dynamic", "target_classes")  # notes; every other flag (and an unknown message) is a warning
_LOGGER_NAME = "lyadeq_zoo.attacks.autoattack.flags"


def load_pyautoattack() -> ModuleType:
    """The ``pyautoattack`` package; :class:`MissingDependencyError` (a ``ModuleNotFoundError``) naming the install
    command when it is missing."""
    try:
        import pyautoattack  # an optional extra: imported only when the attack is built
    except ImportError as err:
        raise MissingDependencyError(
            f"the 'autoattack' attack runs the official AutoAttack from the pyautoattack package, which cannot be "
            f"imported ({err}); install it with: {INSTALL_COMMAND}",
            name="pyautoattack",
        ) from err
    version = getattr(pyautoattack, "__version__", "unknown")
    if version != TESTED_VERSION:
        warnings.warn(
            f"pyautoattack {version} is installed; the 'autoattack' attack is tested with {TESTED_VERSION} "
            f"({INSTALL_COMMAND} installs it)",
            RuntimeWarning,
            stacklevel=3,
        )
    return pyautoattack


def flag_name(message: str) -> str:
    """Our name for one of AutoAttack's check messages (``other`` for a message we do not know)."""
    return next((name for name, pattern in FLAG_PATTERNS if pattern in message), "other")


@register("attack", "autoattack")
class AutoAttack(Attack):
    """The official AutoAttack, l_inf (see the module docstring).

    Options: ``eps``; ``version`` (``standard``, ``rand``, ``plus`` or ``custom``); ``attacks_to_run`` (for
    ``custom`` only: a list of ``apgd-ce``, ``apgd-dlr``, ``apgd-t``, ``fab``, ``fab-t``, ``square``); budget
    overrides ``n_iter`` (APGD and FAB iterations), ``n_restarts`` (APGD-CE/DLR and untargeted FAB restarts),
    ``n_target_classes`` (APGD-T and FAB-T), ``n_queries`` (Square); ``batch_size`` (AutoAttack's batch;
    default: each call's whole batch); ``grad_mode``; ``seed`` (default: drawn from torch's RNG, so that
    ``lz.evaluate``'s per-run seeding makes runs reproducible).

    Its ``threat`` is ``ensemble``: it mixes gradient and score-based attacks, so the masking checks do not
    use it as a white-box reference (its Square would hide what the ``score_based`` check looks for).
    """

    threat = "ensemble"

    def __init__(
        self,
        eps: float | str = 8 / 255,
        version: Literal["standard", "rand", "plus", "custom"] = "standard",
        attacks_to_run: list[str] | None = None,
        n_iter: int | None = None,
        n_restarts: int | None = None,
        n_target_classes: int | None = None,
        n_queries: int | None = None,
        batch_size: int | None = None,
        grad_mode: str | dict[str, Any] | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(eps=eps, restarts=1, loss="ce", grad_mode=grad_mode, seed=seed)
        if version not in VERSIONS:
            raise ValueError(f"version must be one of {', '.join(VERSIONS)}, got {version!r}")
        self.version = version
        self.attacks_to_run = _check_attacks_to_run(version, attacks_to_run)
        for key, value in (
            ("n_iter", n_iter),
            ("n_restarts", n_restarts),
            ("n_target_classes", n_target_classes),
            ("n_queries", n_queries),
            ("batch_size", batch_size),
        ):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{key} must be a whole number >= 1 or None (AutoAttack's budget), got {value!r}")
        self.n_iter = n_iter
        self.n_restarts = n_restarts
        self.n_target_classes = n_target_classes
        self.n_queries = n_queries
        self.batch_size = batch_size
        self._package = load_pyautoattack()
        self._flags: dict[str, dict[str, Any]] = {}
        self._settings: dict[str, Any] = {}

    def describe(self) -> dict[str, Any]:
        # restarts and loss are the base class's placeholders; AutoAttack's own are set by version and overrides.
        return {k: v for k, v in super().describe().items() if k not in ("restarts", "loss")}

    # -- what the runs reported ------------------------------------------------------------------------
    @property
    def flags(self) -> list[dict[str, Any]]:
        """AutoAttack's flags over every call so far, in order of first appearance: ``{"flag", "level"
        ("warning" | "info"), "count" (times AutoAttack raised it), "message" (the first one)}``."""
        return [dict(entry) for entry in self._flags.values()]

    def run_info(self) -> dict[str, Any]:
        """JSON for the evaluation result: the flags and the budget AutoAttack actually ran with."""
        return {"autoattack_flags": self.flags, "autoattack_settings": dict(self._settings)}

    def _record(self, message: str) -> None:
        name = flag_name(message)
        entry = self._flags.get(name)
        if entry is None:
            level = "info" if name in INFO_FLAGS else "warning"
            self._flags[name] = {"flag": name, "level": level, "count": 1, "message": message}
        else:
            entry["count"] += 1

    # -- the attack ------------------------------------------------------------------------------------
    def check_model(self, model: nn.Module) -> None:
        super().check_model(model)
        num_classes = getattr(model, "num_classes", None)
        uses_dlr = [a for a in self._planned_attacks() if a in _DLR_ATTACKS]
        if isinstance(num_classes, int) and num_classes < 4 and uses_dlr:
            raise AttackNotApplicable(
                f"AutoAttack's {', '.join(uses_dlr)} use the DLR loss, which needs at least 4 classes; the model "
                f"has {num_classes}: use version: custom with attacks_to_run: [apgd-ce, fab, square]"
            )

    def _planned_attacks(self) -> list[str]:
        if self.attacks_to_run is not None:
            return list(self.attacks_to_run)
        return {"standard": ["apgd-ce", "apgd-t", "fab-t", "square"], "rand": ["apgd-ce", "apgd-dlr"]}.get(
            self.version, list(SUB_ATTACKS)
        )

    def _attack(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.detach()
        y = y.detach().to(x.device)
        if self.eps == 0 or x.shape[0] == 0:
            return x.clone()
        seed = int(self.seed) if self.seed is not None else int(torch.randint(0, 2**31 - 1, (1,)).item())
        dtype = parameter_dtype(model)

        def logits(inputs: torch.Tensor) -> torch.Tensor:
            # AutoAttack works in float32; the model gets its own dtype.
            return model(inputs.to(dtype)).float()

        with (
            _capture_flags(self._record) as logger,
            _parameter_grads_kept(model),
            _caller_rng_kept(x.device),
            _tracer_kept(),
            gradient_mode(model, self.grad_mode),
        ):
            adversary = self._build(logits, x, seed, logger)
            # AutoAttack's dynamic-defense check counts autograd calls in a module-level dict it never resets:
            # without this, one dynamic model would flag every model evaluated after it in the process.
            for key in self._package.checks.funcs:
                self._package.checks.funcs[key] = 0
            x_adv, _ = adversary.run_standard_evaluation(
                x.float(), y, batch_size=self.batch_size or int(x.shape[0])
            )
        return project(x_adv.detach().to(x.dtype), x, self.eps)

    def _build(self, logits: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, seed: int,
               logger: logging.Logger) -> Any:
        """A configured ``pyautoattack.AutoAttack`` for this call, logging to ``logger``."""
        options: dict[str, Any] = {"device": x.device, "eps": self.eps, "norm": "Linf", "seed": seed,
                                   "version": self.version}
        if self.version == "custom":
            options["attacks"] = list(self.attacks_to_run or [])
        adversary = self._package.AutoAttack(logits, **options)
        adversary.verbose = False  # its progress lines; the checks log regardless
        for holder in (adversary, adversary.apgd, adversary.apgd_targeted):
            holder.logger = logger
        if self.n_iter is not None:
            for apgd in (adversary.apgd, adversary.apgd_targeted):
                _set_apgd_iterations(apgd, self.n_iter)
            adversary.fab.n_iter = self.n_iter
        if self.n_restarts is not None:
            adversary.apgd.n_restarts = adversary.fab.n_restarts = self.n_restarts
        if self.n_target_classes is not None:
            adversary.apgd_targeted.n_target_classes = adversary.fab.n_target_classes = self.n_target_classes
        if self.n_queries is not None:
            adversary.square.n_queries = self.n_queries
        with torch.no_grad():
            num_classes = int(logits(x).shape[1])  # the whole batch: BatchNorm in train mode needs two
        targets = adversary.apgd_targeted.n_target_classes
        if targets > num_classes - 1 and any(a in adversary.attacks_to_run for a in _TARGETED):
            # AutoAttack would index past the last class; use every other class as a target instead.
            self._record(
                f"n_target_classes lowered from {targets} to {num_classes - 1}: the model has {num_classes} classes"
            )
            adversary.apgd_targeted.n_target_classes = adversary.fab.n_target_classes = num_classes - 1
        self._settings = {
            "package": f"pyautoattack {getattr(self._package, '__version__', 'unknown')}",
            "attacks": list(adversary.attacks_to_run),
            "apgd_iterations": adversary.apgd.n_iter,
            "apgd_restarts": adversary.apgd.n_restarts,
            "target_classes": adversary.apgd_targeted.n_target_classes,
            "fab_iterations": adversary.fab.n_iter,
            "square_queries": adversary.square.n_queries,
        }
        return adversary


def _check_attacks_to_run(version: str, attacks: list[str] | None) -> list[str] | None:
    if version != "custom":
        if attacks is not None:
            raise ValueError(f"attacks_to_run is only used with version: custom (version {version!r} fixes its own)")
        return None
    if not attacks or not isinstance(attacks, (list, tuple)):
        raise ValueError(f"version: custom needs attacks_to_run, a list of {', '.join(SUB_ATTACKS)}")
    unknown = [a for a in attacks if a not in SUB_ATTACKS]
    if unknown:
        raise ValueError(
            f"attacks_to_run: unknown {', '.join(map(repr, unknown))}; choose from {', '.join(SUB_ATTACKS)}"
        )
    if len(set(attacks)) != len(attacks):
        raise ValueError(f"attacks_to_run lists an attack twice: {list(attacks)}")
    return list(attacks)


def _set_apgd_iterations(apgd: Any, n_iter: int) -> None:
    """Set an APGD's iterations and the checkpoint lengths its constructor derives from them."""
    apgd.n_iter = apgd.n_iter_orig = n_iter
    apgd.n_iter_2 = max(int(0.22 * n_iter), 1)
    apgd.n_iter_min = max(int(0.06 * n_iter), 1)
    apgd.size_decr = max(int(0.03 * n_iter), 1)


class _FlagHandler(logging.Handler):
    def __init__(self, record: Callable[[str], None]) -> None:
        super().__init__(level=logging.WARNING)
        self._record_flag = record

    def emit(self, record: logging.LogRecord) -> None:
        self._record_flag(record.getMessage())


@contextlib.contextmanager
def _capture_flags(record: Callable[[str], None]) -> Iterator[logging.Logger]:
    """A logger of our own whose warnings go to ``record`` only (handed to AutoAttack in place of its
    ``auto-attack`` logger, whose level and handlers the user may have configured). In pyautoattack 0.2.0
    every check is given that logger, so none falls back to ``warnings.warn``."""
    logger = logging.getLogger(_LOGGER_NAME)
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    handler = _FlagHandler(record)
    logger.addHandler(handler)
    try:
        yield logger
    finally:
        logger.removeHandler(handler)


@contextlib.contextmanager
def _parameter_grads_kept(model: nn.Module) -> Iterator[None]:
    """FAB calls ``.backward()``, which accumulates into parameter ``.grad``: give it fresh slots and put the
    caller's gradients (or None) back afterwards, untouched."""
    params = list(model.parameters())
    saved = [p.grad for p in params]
    for p in params:
        p.grad = None
    try:
        yield
    finally:
        for p, grad in zip(params, saved, strict=True):
            p.grad = grad


@contextlib.contextmanager
def _caller_rng_kept(device: torch.device) -> Iterator[None]:
    """Each AutoAttack sub-attack calls ``torch.manual_seed``: keep the caller's RNG state as it was."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


@contextlib.contextmanager
def _tracer_kept() -> Iterator[None]:
    """AutoAttack's dynamic-defense check replaces the ``sys.settrace`` tracer and then clears it; put back
    the caller's (a debugger's, a coverage tool's)."""
    tracer = sys.gettrace()
    try:
        yield
    finally:
        sys.settrace(tracer)
