"""Model architectures (kind ``model``): the paper's pipeline as one configurable class.

``images in [0, 1] -> normalise -> backbone -> DEQ layer (z* = f(z*, x)) -> [Lyapunov projection] -> head``

Zoo entries (``lyadeq_mnist`` ...) are configs naming ``model.type: deq_classifier``; see configs/.
``cell: null`` leaves the DEQ layer out (``images -> normalise -> backbone -> head``): the zoo's ``plain_*``
baselines, the same extractor and head without an equilibrium.

The class keeps timm's model contract (``pretrained_cfg``, ``num_features``, ``forward_features``,
``forward_head``, ``reset_classifier`` ...) and huggingface_hub's (``save_pretrained``, ``push_to_hub``,
``from_pretrained``, from :class:`lyadeq_zoo.hub_mixin.HubMixin`); see :class:`DEQClassifier`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from .channels import adapt_channel_values, adapt_channel_weight, check_channel_count
from .deq.layer import DEQLayer
from .errors import ConfigError, InputError
from .heads import LinearHead, OrthogonalHead
from .hub_mixin import HubMixin
from .inputs import check_images
from .registry import build_component, register

HEAD_INPUTS = ("corrected", "projected", "state")
ARCHITECTURE = "deq_classifier"
# How timm's data pipeline must prepare images for these models (timm.data.resolve_model_data_config reads it):
# resize to exactly img_size, no crop, and NO normalisation (mean 0, std 1): the model normalises inside.
DATA_CFG = {"fixed_input_size": True, "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center"}


def _hw(img_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(img_size, int):
        return img_size, img_size
    h, w = img_size
    return int(h), int(w)


def _channel_values(values: float | Sequence[float] | None, in_chans: int, default: float, name: str) -> list[float]:
    """One float per input channel: ``values`` broadcast from a scalar, ``default`` for None; checked length."""
    if values is None:
        values = [default] * in_chans
    elif isinstance(values, (int, float)):
        values = [float(values)] * in_chans
    values = [float(v) for v in values]
    if len(values) != in_chans:
        raise ConfigError(
            f"model.{name} must have one value per input channel ({in_chans}) or be a single number, got {values}"
        )
    return values


def _per_channel(values: Sequence[float]) -> torch.Tensor:
    """``(1, C, 1, 1)`` float32 tensor of per-channel values, to broadcast over ``(N, C, H, W)`` images."""
    return torch.tensor(list(values)).view(1, len(values), 1, 1)


def _check_num_classes(num_classes: object) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 0:
        raise ConfigError(
            f"model.num_classes must be an int >= 0 (0: no classifier, forward returns the (N, width) "
            f"features), got {num_classes!r}"
        )
    return int(num_classes)


def classifier_attribute(head: nn.Module) -> str | None:
    """The name, inside ``head``, of its final classifier module; None when the whole head is the classifier.

    ``linear`` head: ``fc`` (that head is its classifier). ``orthogonal`` head: ``classifier``, the linear
    layer after the orthogonal ``Z``. ``Z`` is not part of the classifier: it is the last layer of the
    pre-logits (an isometry of the stabilised state trained with the model), so resetting the classifier
    keeps it. Any other head (a plugin's): the whole head.
    """
    if isinstance(head, OrthogonalHead):
        return "classifier"
    if isinstance(head, LinearHead):
        return "fc"
    return None


def head_pre_logits(head: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """What ``head`` feeds its classifier, ``(N, in_features)``: ``Z·z + b`` for an orthogonal head, else ``z``."""
    if isinstance(head, OrthogonalHead):
        return head.orth(z)
    return z


def _check_deq_specs(
    cell: dict[str, Any] | None,
    solver: dict[str, Any] | None,
    backward: dict[str, Any] | None,
    lyapunov: dict[str, Any] | None,
) -> None:
    """A DEQ layer needs solver and backward specs; a model without one (``cell: null``) takes no Lyapunov module.

    Without a DEQ layer the solver and backward specs are unused and may stay set (the zoo's ``plain_*`` configs
    inherit them), so that one override such as ``solver={"max_iter": 10}`` applies to every zoo name.
    """
    if cell is None:
        if lyapunov is not None:
            raise ConfigError(
                "model.cell is null (no DEQ layer: the head reads the backbone features), so model.lyapunov has "
                "no dynamics to stabilise; set lyapunov: null, or give a cell spec"
            )
        return
    missing = [name for name, value in (("solver", solver), ("backward", backward)) if value is None]
    if missing:
        raise ConfigError(
            f"model.cell is set but model.{' and model.'.join(missing)} is null: a DEQ layer needs both a solver "
            "and a backward spec (e.g. solver: {type: anderson}, backward: {type: ift}), or set cell: null for a "
            "model without a DEQ layer"
        )


@register("model", ARCHITECTURE)
class DEQClassifier(HubMixin, nn.Module):
    """DEQ image classifier with an optional Lyapunov stability module (the paper's LyaDEQ when set).

    Args (the config keys of ``model:``):
        num_classes, in_chans, img_size: data geometry; inputs must be ``(N, in_chans, H, W)``.
            ``num_classes: 0`` builds a feature model: no classifier, ``forward`` returns ``(N, width)``.
        width: the DEQ state size (backbone output, cell width, Lyapunov width, head input).
        mean, std: per-channel input normalisation applied inside the model (inputs are in [0, 1]).
        backbone, cell, solver, backward, lyapunov, head: component specs (``type:`` + options).
            ``lyapunov: null`` gives a plain DEQ. ``cell: null`` (with ``lyapunov: null``, ``head_input: state``)
            gives no DEQ layer at all: the head reads the backbone features ``u`` ``(N, width)``; ``self.deq``,
            ``self.cell`` and ``last_info`` are None, and ``solver`` / ``backward`` are unused.
        head_input: which tensor feeds the head, with ``F(z) = f(z, x) - z`` at the equilibrium z* and F̂ its
            Lyapunov projection: ``corrected`` = ``z* + F̂(z*)`` (the state after one step of the stabilised
            dynamics), ``projected`` = ``F̂(z*)`` alone, ``state`` = ``z*`` (required for plain DEQs).
            ``corrected`` is the default: after one MNIST epoch it reached 93.8 % test accuracy on average over
            3 seeds and both LyaDEQ variants, against 86.4 % for ``projected`` (tools/compare_head_input.py).

    ``forward(x)`` returns logits ``(N, num_classes)`` and keeps per-sample, detached diagnostics of that call
    in ``self.last_info``: ``nstep``, ``rel_residual`` and, with a Lyapunov module, ``lyapunov_value`` V(z*) and
    ``lyapunov_decrease`` ∇V(z*)ᵀF̂(z*) + c·V(z*). Without a DEQ layer nothing is solved: ``last_info`` stays None.

    timm's model contract: ``forward(x) == forward_head(forward_features(x))``.

    * ``forward_features(x)``: the **head input** ``(N, num_features)`` after the DEQ and the Lyapunov stage
      (``z*``, ``z* + F̂(z*)`` or ``F̂(z*)`` as ``head_input`` says). The DEQ state is a vector, not a feature
      map, so there is no spatial output and no global pooling (``global_pool`` is refused).
    * ``forward_head(f, pre_logits=True)``: what the head feeds its classifier, ``(N, head_hidden_size)``: ``f``
      itself for a ``linear`` head, ``Z·f + b`` for an ``orthogonal`` head.
    * The **classifier** is the head's final linear layer only (``get_classifier()``; named in
      ``pretrained_cfg["classifier"]``: ``head.fc`` or ``head.classifier``); a plugin head counts as a whole.
      ``reset_classifier(n)`` replaces it by a new ``Linear(head_hidden_size, n)``, ``reset_classifier(0)`` by
      ``Identity`` (``forward`` then returns the pre-logits). The orthogonal ``Z`` is kept either way.
    * ``adapt_input_channels(c)`` adapts the first layer and the normalisation to ``c`` input channels
      (:mod:`lyadeq_zoo.channels`).
    * ``pretrained_cfg`` (alias ``default_cfg``): timm's metadata. Its ``mean``/``std`` are 0/1 on purpose:
      the model normalises inside (``model.mean``, ``model.std``), so timm's transforms must feed [0, 1] images.

    These methods keep ``self.config`` (set by ``lz.build_model``) in step with the model, so that
    ``save_pretrained`` after a change writes a checkpoint that loads strictly.
    TorchScript, torch.fx and ``features_only`` are not supported: the solver loop is data-dependent Python.
    """

    def __init__(
        self,
        num_classes: int,
        in_chans: int,
        img_size: int | Sequence[int],
        width: int,
        backbone: dict[str, Any],
        cell: dict[str, Any] | None,
        solver: dict[str, Any] | None,
        backward: dict[str, Any] | None,
        head: dict[str, Any],
        lyapunov: dict[str, Any] | None = None,
        head_input: Literal["corrected", "projected", "state"] = "corrected",
        mean: float | Sequence[float] | None = None,
        std: float | Sequence[float] | None = None,
    ):
        super().__init__()
        if head_input not in HEAD_INPUTS:
            raise ValueError(f"head_input must be one of {', '.join(HEAD_INPUTS)}, got {head_input!r}")
        if lyapunov is None and head_input != "state":
            raise ValueError(
                f"head_input {head_input!r} needs a Lyapunov module; set a lyapunov spec or head_input: state"
            )
        _check_deq_specs(cell, solver, backward, lyapunov)
        self.num_classes, self.in_chans = _check_num_classes(num_classes), check_channel_count(in_chans)
        self.width = int(width)
        self.img_size = _hw(img_size)
        self.head_input = head_input
        # Python floats as given (what adapt_input_channels adapts and records), and the buffers forward uses.
        self._normalisation = {
            "mean": _channel_values(mean, self.in_chans, 0.0, "mean"),
            "std": _channel_values(std, self.in_chans, 1.0, "std"),
        }
        if min(self._normalisation["std"]) <= 0:
            raise ConfigError(f"model.std must be positive, got {std}")
        self.register_buffer("mean", _per_channel(self._normalisation["mean"]), persistent=False)
        self.register_buffer("std", _per_channel(self._normalisation["std"]), persistent=False)
        self.backbone = build_component(
            "backbone", backbone, in_chans=in_chans, img_size=img_size, out_features=self.width
        )
        self.deq = (
            None
            if cell is None
            else DEQLayer(build_component("cell", cell, width=self.width), solver=solver, backward=backward)
        )
        self.lyapunov = None if lyapunov is None else build_component("lyapunov", lyapunov, width=self.width)
        # A feature model (num_classes 0) builds its head with one class, then drops the classifier.
        self.head = build_component("head", head, in_features=self.width, num_classes=max(self.num_classes, 1))
        self.num_features = self.head_hidden_size = self.width
        classifier = self.get_classifier()
        self._classifier_bias = not isinstance(classifier, nn.Linear) or classifier.bias is not None
        if self.num_classes == 0:
            self.reset_classifier(0)
        # None without a DEQ layer: no solver ran, so there is nothing to report (lz.stability_report says so).
        self.last_info: dict[str, torch.Tensor] | None = None if self.deq is None else {}
        self.pretrained_cfg: dict[str, Any] = {"architecture": ARCHITECTURE, "tag": None, **self._model_cfg()}

    @property
    def cell(self) -> nn.Module | None:
        """The DEQ layer's cell ``f(z, u)``; None for a model without a DEQ layer (``cell: null``)."""
        return None if self.deq is None else self.deq.cell

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming the expected and the given shape unless ``x`` is ``(N, C, H, W)``."""
        expected = (self.in_chans, *self.img_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"expected (N, C, H, W) = (N, {', '.join(map(str, expected))}), got {tuple(x.shape)}; "
                "pass a batch of images in [0, 1] (add a batch dimension with x.unsqueeze(0))"
            )

    def equilibrium(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """``(z*, injected features u, solver info)`` for images ``x`` ``(N, C, H, W)`` in [0, 1].

        Without a DEQ layer (``cell: null``) there is no fixed point: ``z*`` is ``u`` itself, the info empty.
        """
        self.check_input(x)
        u = self.backbone((x - self.mean) / self.std)
        if self.deq is None:
            return u, u, {}
        z_star, info = self.deq(u)
        if self.training and hasattr(self.cell, "update_running_stats"):
            # The cell's BatchNorm never updates running statistics during the solve; do it once, at z*.
            self.cell.update_running_stats(z_star.detach(), u.detach())
        return z_star, u, info

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input ``(N, width)`` (see ``head_input``); also refreshes ``last_info``."""
        z_star, u, info = self.equilibrium(x)
        if self.deq is None:
            return z_star
        last = {k: info[k].detach() for k in ("nstep", "rel_residual") if k in info}
        feats = z_star
        if self.lyapunov is not None:
            dynamics = self.cell(z_star, u) - z_star
            f_hat, ly_info = self.lyapunov.project(z_star, dynamics)
            last.update({k: v.detach() for k, v in ly_info.items()})
            if self.head_input == "corrected":
                feats = z_star + f_hat
            elif self.head_input == "projected":
                feats = f_hat
        self.last_info = last
        return feats

    def path_logits(self, x: torch.Tensor, steps: int) -> list[torch.Tensor]:
        """Logits ``(N, num_classes)`` at each state ``z_1 .. z_steps`` of the plain fixed-point iteration
        ``z_{k+1} = f(z_k, u)`` from ``z_0 = 0`` (:meth:`DEQLayer.iterates`, not the model's solver), each passed
        through the Lyapunov stage and the head as :meth:`features` passes ``z*`` (with ``F(z_k) = z_{k+1} - z_k``).

        Differentiable in ``x`` through every step and independent of the backward mode: attacks through the
        solver's intermediate states use it. ``last_info`` is left alone. Raises ConfigError without a DEQ layer.
        """
        if self.deq is None:
            raise ConfigError("path_logits: this model has no DEQ layer (cell: null), so there is no solver path")
        self.check_input(x)
        u = self.backbone((x - self.mean) / self.std)
        path = self.deq.iterates(u, int(steps) + 1)
        logits = []
        for z, z_next in zip(path[1:-1], path[2:], strict=True):
            feats = z
            if self.lyapunov is not None:
                f_hat, _ = self.lyapunov.project(z, z_next - z)
                feats = z + f_hat if self.head_input == "corrected" else f_hat if self.head_input == "projected" else z
            logits.append(self.head(feats))
        return logits

    # -- timm's model contract -------------------------------------------------------------------------
    @property
    def default_cfg(self) -> dict[str, Any]:
        """timm's older name of :attr:`pretrained_cfg` (the same dict)."""
        return self.pretrained_cfg

    @default_cfg.setter
    def default_cfg(self, cfg: dict[str, Any]) -> None:
        self.pretrained_cfg = cfg

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The head input ``(N, num_features)`` for images ``x`` ``(N, in_chans, H, W)`` in [0, 1].

        That is the state after the DEQ (and the Lyapunov stage when there is one) that ``head_input`` selects;
        the inputs are checked as ``forward`` checks them. Refreshes ``last_info``.
        """
        x = check_images(x, in_chans=self.in_chans, img_size=self.img_size, dtype=self.mean.dtype)
        if x.shape[0] == 0:
            return x.new_zeros((0, self.num_features))
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Features ``(N, num_features)`` -> logits ``(N, num_classes)``, or with ``pre_logits`` what the
        classifier takes, ``(N, head_hidden_size)`` (see the class docstring)."""
        if x.dim() != 2 or x.shape[1] != self.num_features:
            raise InputError(
                f"forward_head expects features (N, {self.num_features}) from forward_features, got "
                f"{tuple(x.shape)}"
            )
        return head_pre_logits(self.head, x) if pre_logits else self.head(x)

    def get_classifier(self) -> nn.Module:
        """The final classifier module (``head.fc``, ``head.classifier``, or the whole head of a plugin head)."""
        attribute = classifier_attribute(self.head)
        return self.head if attribute is None else getattr(self.head, attribute)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier by a new ``Linear(head_hidden_size, num_classes)`` (default init), or by
        ``Identity`` for ``num_classes=0`` (``forward`` then returns the pre-logits ``(N, head_hidden_size)``).

        The rest of the head (the orthogonal ``Z``) is kept. A plugin head, whose classifier is the whole head,
        is replaced by a ``linear`` head. ``global_pool`` exists for timm's signature; a DEQ has no pooling, so
        only None is accepted. Records ``num_classes`` in ``self.config``.
        """
        if global_pool is not None:
            raise ConfigError(
                f"global_pool={global_pool!r}: a DEQ classifier has no global pooling (its state is an "
                f"(N, {self.width}) vector, not a feature map); leave global_pool unset"
            )
        num_classes = _check_num_classes(num_classes)
        reference = next(self.head.parameters(), self.mean)
        if classifier_attribute(self.head) is None:
            self.head = LinearHead(self.head_hidden_size, 1).to(device=reference.device, dtype=reference.dtype)
            self._classifier_bias = True
            self._record_config(head={"type": "linear"})
        attribute = classifier_attribute(self.head)
        classifier: nn.Module = nn.Identity()
        if num_classes:
            classifier = nn.Linear(
                self.head_hidden_size,
                num_classes,
                bias=self._classifier_bias,
                device=reference.device,
                dtype=reference.dtype,
            )
        setattr(self.head, attribute, classifier)
        self.num_classes = num_classes
        self._record_config(num_classes=num_classes)

    def adapt_input_channels(
        self, in_chans: int, *, mean: float | Sequence[float] | None = None, std: float | Sequence[float] | None = None
    ) -> None:
        """Make the model take ``in_chans``-channel images, keeping what it learnt (see :mod:`lyadeq_zoo.channels`).

        The first layer (``pretrained_cfg["first_conv"]``) gets summed (1 channel) or repeated-and-scaled
        weights; ``mean``/``std`` default to the old ones averaged (1 channel) or repeated, or take the given
        values (one per new channel, or a scalar). Records ``in_chans``, ``mean`` and ``std`` in ``self.config``.
        Raises ConfigError for a channel count < 1, or when the backbone's first layer cannot be found.
        """
        in_chans = check_channel_count(in_chans)
        values = {}
        for key, given, default in (("mean", mean, 0.0), ("std", std, 1.0)):
            source = adapt_channel_values(self._normalisation[key], in_chans) if given is None else given
            values[key] = _channel_values(source, in_chans, default, key)
        if min(values["std"]) <= 0:
            raise ConfigError(f"model.std must be positive, got {values['std']}")
        if in_chans != self.in_chans:
            self._adapt_first_layer(in_chans)
        self._normalisation = values
        self.mean = _per_channel(values["mean"]).to(self.mean)
        self.std = _per_channel(values["std"]).to(self.std)
        self.in_chans = in_chans
        self._record_config(in_chans=in_chans, mean=values["mean"], std=values["std"])

    def first_layer(self) -> tuple[str, nn.Module] | None:
        """``(name, module)`` of the layer that takes the normalised images: the backbone's first ``Conv2d``
        (taking ``in_chans`` channels) or ``Linear`` (taking ``in_chans·H·W`` flattened values); None if the
        backbone's first such layer takes neither."""
        h, w = self.img_size
        for name, module in self.backbone.named_modules():
            if isinstance(module, nn.Conv2d):
                return (f"backbone.{name}", module) if module.in_channels == self.in_chans else None
            if isinstance(module, nn.Linear):
                return (f"backbone.{name}", module) if module.in_features == self.in_chans * h * w else None
        return None

    def _adapt_first_layer(self, in_chans: int) -> None:
        found = self.first_layer()
        if found is None or (isinstance(found[1], nn.Conv2d) and found[1].groups != 1):
            raise ConfigError(
                f"cannot adapt the model from {self.in_chans} to {in_chans} input channels: the backbone "
                f"{type(self.backbone).__name__} has no first Conv2d (groups=1) taking {self.in_chans} channels or "
                f"Linear taking {self.in_chans}x{self.img_size[0]}x{self.img_size[1]} values; build it with "
                f"in_chans={in_chans} and train it instead"
            )
        _, layer = found
        weight = layer.weight
        with torch.no_grad():
            if isinstance(layer, nn.Conv2d):
                new_weight = adapt_channel_weight(weight, in_chans)
                layer.in_channels = in_chans
            else:  # the flattened input is channel-major (x.flatten(1) of (N, C, H, W)): adapt per channel
                grouped = weight.view(weight.shape[0], self.in_chans, -1)
                new_weight = adapt_channel_weight(grouped, in_chans).reshape(weight.shape[0], -1)
                layer.in_features = new_weight.shape[1]
        layer.weight = nn.Parameter(new_weight, requires_grad=weight.requires_grad)

    def _model_cfg(self) -> dict[str, Any]:
        """The part of ``pretrained_cfg`` that follows from the model itself (geometry, module names)."""
        first = self.first_layer()
        attribute = classifier_attribute(self.head)
        return {
            "input_size": (self.in_chans, *self.img_size),
            **DATA_CFG,
            "mean": (0.0,) * self.in_chans,
            "std": (1.0,) * self.in_chans,
            "num_classes": self.num_classes,
            "first_conv": None if first is None else first[0],
            "classifier": "head" if attribute is None else f"head.{attribute}",
            "pool_size": None,
        }

    def _record_config(self, **model_keys: Any) -> None:
        """Write ``model_keys`` into ``self.config["model"]`` (when the model has a config) and refresh the cfg."""
        config = getattr(self, "config", None)
        if isinstance(config, dict) and isinstance(config.get("model"), dict):
            config["model"].update(model_keys)
        self.pretrained_cfg = {**getattr(self, "pretrained_cfg", {}), **self._model_cfg()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` for images ``x`` ``(N, in_chans, H, W)`` with values in [0, 1]."""
        x = check_images(x, in_chans=self.in_chans, img_size=self.img_size, dtype=self.mean.dtype)
        if x.shape[0] == 0:  # nothing to solve for: (0, num_classes) logits from the head alone
            return self.head(x.new_zeros((0, self.width)))
        return self.head(self.features(x))
