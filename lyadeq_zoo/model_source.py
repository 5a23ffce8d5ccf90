"""A model from what a user types: a zoo name, ``hf-hub:``/``local-dir:`` id, config YAML or a module.

>>> model, source = resolve_model("lyadeq_mnist")    # doctest: +SKIP
>>> source                                            # doctest: +SKIP
{'source': 'lyadeq_mnist', 'weights': 'pretrained'}

Evaluation (``tools/eval.py``) and the transfer attack (its source model) both start from such a spec, so
this sits below both of them. A model without trained weights is never returned silently: it warns, or
raises with ``require_weights=True``.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from torch import nn

from .factory import build_model, create_model
from .hub import has_pretrained, is_checkpoint_name
from .registry import get_component


class RandomWeightsWarning(UserWarning):
    """A model was built with random weights (no checkpoint, no zoo weights): numbers on it mean nothing."""


def resolve_model(
    spec: str | Path | nn.Module, *, pretrained: bool | None = None, require_weights: bool = False
) -> tuple[nn.Module, dict[str, Any]]:
    """The model that ``spec`` names, and where its weights come from.

    ``spec``: a zoo name, ``hf-hub:org/repo[@rev]``, ``local-dir:PATH``, a config YAML path, or an
    ``nn.Module`` (returned as is). ``pretrained=None`` loads the zoo weights when the entry has them and
    otherwise warns loudly and builds a randomly initialised model (numbers on it mean nothing);
    ``pretrained=True`` requires them. ``require_weights=True`` raises ``ValueError`` instead of falling
    back to random weights.

    Returns ``(model, source)`` with ``source = {"source": str, "weights": "pretrained" | "checkpoint" |
    "random" | "given"}`` (what ``tools/eval.py`` records under ``model`` in the result JSON).
    """
    if isinstance(spec, nn.Module):
        return spec, {"source": type(spec).__name__, "weights": "given"}
    text = str(spec)
    source: dict[str, Any] = {"source": text}
    if is_checkpoint_name(text):
        return create_model(text), {**source, "weights": "checkpoint"}
    path = Path(text).expanduser()
    if text.endswith((".yaml", ".yml")) or path.is_file():
        if require_weights:
            raise ValueError(f"{text} is a config file: it gives random weights; pass a checkpoint instead")
        _warn_random(text)
        return build_model(path), {**source, "weights": "random"}
    get_component("model", text)  # unknown names raise with the list of models and the closest one
    available = has_pretrained(text)
    if pretrained is None:
        pretrained = available
    if pretrained:
        if not available:
            raise ValueError(f"zoo model {text!r} has no pretrained weights yet; pass pretrained=False")
        return create_model(text, pretrained=True), {**source, "weights": "pretrained"}
    if require_weights:
        raise ValueError(f"zoo model {text!r} has no pretrained weights, and a random model transfers nothing")
    _warn_random(text)
    return create_model(text), {**source, "weights": "random"}


def _warn_random(what: str) -> None:
    # stacklevel 3: the warning points at the caller of resolve_model
    warnings.warn(
        RandomWeightsWarning(
            f"{what}: no trained weights; evaluating a RANDOMLY INITIALISED model. Its accuracy numbers are "
            "meaningless; train it first (tools/train.py) or pass a checkpoint (local-dir:PATH)."
        ),
        stacklevel=3,
    )


__all__ = ["RandomWeightsWarning", "resolve_model"]
