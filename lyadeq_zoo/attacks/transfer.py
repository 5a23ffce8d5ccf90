"""Transfer attack: adversarial examples crafted on a source model, then judged on the target.

It never looks at the target's gradient, so it is immune to the target's gradient masking: if a
transfer attack from an ordinary model breaks more samples than white-box attacks on the target do,
those white-box attacks are not finding the target's real weaknesses.

The examples handed over are the inner attack's *last* iterates on the source (``track_best: false`` unless the
inner spec sets it): an example that maximises the source's loss for the whole budget transfers; the first iterate
that happens to cross the source's decision boundary (what ``track_best`` keeps) barely does.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from ..config import accepted_keys
from ..errors import AttackNotApplicable
from ..model_source import resolve_model
from ..registry import get_component, register
from .base import Attack, create_attack


@register("attack", "transfer")
class Transfer(Attack):
    """Run the inner ``attack`` on ``source`` and hand its examples to the target.

    Options: ``source`` (anything ``lz.create_model`` accepts, a config path, or an ``nn.Module``
    from Python), ``attack`` (inner attack spec, default ``{"type": "pgd"}``; its ``eps`` is this
    attack's ``eps``; ``track_best`` defaults to false there, see the module docstring), ``eps``,
    ``pretrained`` (None = the zoo weights when the entry has them; a zoo source without weights makes the
    attack not applicable, since a random model transfers nothing), ``seed``.
    """

    threat = "transfer"

    def __init__(
        self,
        source: str | nn.Module,
        attack: dict[str, Any] | None = None,
        eps: float | str = 8 / 255,
        pretrained: bool | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__(eps=eps, restarts=1, loss="ce", grad_mode=None, seed=seed)
        inner = copy.deepcopy(attack) if attack is not None else {"type": "pgd"}
        if not isinstance(inner, dict) or "type" not in inner:
            raise ValueError(f"transfer: 'attack' must be an attack spec with a 'type' key, got {attack!r}")
        if "eps" in inner:
            raise ValueError("transfer: set eps on the transfer attack, not inside its inner 'attack' spec")
        if inner["type"] == "transfer":
            raise ValueError("transfer: the inner attack cannot itself be a transfer attack")
        if seed is not None and "seed" not in inner:
            inner["seed"] = seed
        if "track_best" not in inner and "track_best" in accepted_keys(get_component("attack", inner["type"]))[0]:
            inner["track_best"] = False
        self.attack = inner
        self.inner = create_attack(inner["type"], eps=self.eps, **{k: v for k, v in inner.items() if k != "type"})
        self.source = source if isinstance(source, str) else type(source).__name__
        self.pretrained = pretrained
        self._source_model: nn.Module | None = source if isinstance(source, nn.Module) else None
        self._source_error: str | None = None

    def source_model(self) -> nn.Module:
        """The source model (loaded on first use, in eval mode); raises AttackNotApplicable if unusable."""
        if self._source_model is None:
            if self._source_error is not None:
                raise AttackNotApplicable(self._source_error)
            try:
                model, _ = resolve_model(self.source, pretrained=self.pretrained, require_weights=True)
            except (FileNotFoundError, LookupError, ValueError, OSError) as err:
                self._source_error = f"transfer source {self.source!r} cannot be used: {err}"
                raise AttackNotApplicable(self._source_error) from err
            self._source_model = model.eval()
        return self._source_model

    def check_model(self, model: nn.Module) -> None:
        self.source_model()

    def run_once(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None, restart: int
    ) -> torch.Tensor:
        source = self.source_model()
        param = next(source.parameters(), None)
        if param is not None and param.device != x.device:
            source.to(x.device)
        return self.inner(source, x, y)
