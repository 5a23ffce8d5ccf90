"""The one check of the images and labels given to a model, an attack or :func:`lyadeq_zoo.evaluate`.

The models take **float images in [0, 1], shape (N, C, H, W)**; they normalise (mean/std) inside. Every
model forward, attack call and evaluation batch goes through :func:`check_images` (and, where there are
labels, :func:`check_labels`), so a wrong input fails at once with a message naming the fix instead of
giving silently wrong logits (the 1,000 shipped MNIST test digits fed as uint8 scored 27.8 % instead
of 97.5 % on ``lyadeq_mnist`` before this check).

=================================== ============================================================================
input                               behaviour
=================================== ============================================================================
float32 (N, C, H, W) in [0, 1]      returned as is: the same tensor object (no copy, no detach; autograd intact)
values up to 1e-6 outside [0, 1]    accepted unchanged (rounding)
float64 / float16 / bfloat16        cast to ``dtype`` (the model's parameter dtype) when ``dtype`` is given,
                                    else returned as is; ``x.to(dtype)`` keeps the gradient path to ``x``
empty batch (N = 0)                 accepted (the model then returns ``(0, num_classes)`` logits, attacks an
                                    empty ``x_adv``)
integer or bool tensor (uint8 ...)  :class:`InputTypeError`: convert with ``x.float() / 255``
numpy array                         :class:`InputTypeError`: ``torch.from_numpy(x)`` (``.float() / 255`` for uint8)
values further outside [0, 1]       :class:`InputError` with the range found and the likely cause
NaN / inf                           :class:`InputError` with how many values, in how many images
wrong rank, C, H or W               :class:`InputError`: expected ``(N, C, H, W)`` with the model's C, H, W, got ...
labels                              any integer dtype (cast to int64), shape ``(N,)``, values in
                                    ``[0, num_classes)``; float / bool labels raise :class:`InputTypeError`
=================================== ============================================================================

Why integer images raise instead of being divided by 255 here: an integer tensor reaching the model means a
pipeline skipped its ``/ 255`` step, and that pipeline is wrong wherever else it feeds (training, another
model); the scale is also a guess (8-bit or 16-bit?). Other float dtypes are cast because their meaning is
unambiguous and the cast only rounds (float64 -> float32 moves a value by < 1e-7, far below a grey level).

Cost on a valid input: one ``aminmax`` reduction (a single read of ``x``) and one host sync; the slower
diagnosis (counting non-finite values, ...) runs only once the input is known to be bad.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .errors import InputError, InputTypeError

#: values this far outside [0, 1] are rounding, not a wrong scale
RANGE_TOLERANCE = 1e-6


def check_images(
    x: torch.Tensor,
    *,
    in_chans: int | None = None,
    img_size: int | Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
    what: str = "model input",
    any_rank: bool = False,
) -> torch.Tensor:
    """``x`` if it is a batch of float images ``(N, C, H, W)`` in [0, 1], cast to ``dtype`` when given; else raise.

    ``in_chans`` / ``img_size`` (an int or ``(H, W)``): the expected C and H, W (None: any). ``any_rank``: accept
    any ``(N, ...)`` batch instead (for a model that declares no image geometry, e.g. an MLP on flattened
    images: it checks its own shapes). ``what`` names the input in the message (``"model input"``, ``"attack
    input x"``, ``"evaluate batch 3 images"``). Raises :class:`InputTypeError` for a non-tensor or a non-float
    dtype, :class:`InputError` for a wrong shape, non-finite values or values outside [0, 1] by more than
    ``RANGE_TOLERANCE``.
    """
    _check_image_type(x, what)
    if any_rank and x.dim() == 0:
        raise InputError(f"{what} must be a batch (N, ...), got a 0-dimensional tensor")
    if not any_rank:
        _check_image_shape(x, in_chans, img_size, what)
    if x.numel():
        _check_image_values(x.detach(), what)
    return x if dtype is None else x.to(dtype)


def check_labels(y: torch.Tensor, n: int, *, num_classes: int | None = None, what: str = "labels") -> torch.Tensor:
    """``y`` as int64 if it holds one class index per image: shape ``(n,)``, values in ``[0, num_classes)``.

    Any integer dtype is accepted (cast to int64, which is what the losses take); float, bool and complex
    labels raise :class:`InputTypeError`, a wrong shape or an out-of-range index :class:`InputError`.
    """
    if not isinstance(y, torch.Tensor):
        raise InputTypeError(f"{what} must be a torch.Tensor of class indices (N,), got {_type_name(y)}; "
                             f"{_tensor_fix(y, images=False)}")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        hint = " (class indices, not one-hot vectors or probabilities: use y.argmax(1))" if y.dim() == 2 else ""
        raise InputTypeError(f"{what} must be integer class indices, got dtype {y.dtype}{hint}; "
                             "convert with y.long()")
    if tuple(y.shape) != (n,):
        raise InputError(f"{what} must be (N,) = ({n},), one label per image, got {tuple(y.shape)}")
    y = y.long()
    if n and num_classes is not None:
        lo, hi = torch.aminmax(y.detach())
        if bool((lo < 0) | (hi >= num_classes)):
            raise InputError(f"{what} must be class indices in [0, {num_classes}), found values in "
                             f"[{int(lo)}, {int(hi)}]")
    return y


def check_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    model: nn.Module | None = None,
    *,
    dtype: torch.dtype | None = None,
    images: str = "images",
    labels: str = "labels",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)`` checked against what ``model`` declares (see :func:`model_geometry`): ``x`` by
    :func:`check_images` (cast to ``dtype`` when given), ``y`` by :func:`check_labels` (as int64).

    A model that declares no C, H, W (any ``nn.Module``) gets any ``(N, ...)`` float batch in [0, 1]: it checks
    its own shapes. ``images`` / ``labels`` name the two inputs in the messages.
    """
    geometry = model_geometry(model) if model is not None else {}
    declares_images = "in_chans" in geometry or "img_size" in geometry
    x = check_images(x, in_chans=geometry.get("in_chans"), img_size=geometry.get("img_size"), dtype=dtype,
                     what=images, any_rank=not declares_images)
    y = check_labels(y, x.shape[0], num_classes=geometry.get("num_classes"), what=labels)
    return x, y


def model_geometry(model: nn.Module) -> dict[str, int | tuple[int, int]]:
    """The ``in_chans``, ``img_size`` ``(H, W)`` and ``num_classes`` that ``model`` declares as attributes
    (the zoo's models, most timm models for ``num_classes``); keys it does not declare are left out."""
    geometry: dict[str, int | tuple[int, int]] = {}
    for key in ("in_chans", "num_classes"):
        value = getattr(model, key, None)
        if isinstance(value, int) and not isinstance(value, bool):
            geometry[key] = value
    size = getattr(model, "img_size", None)
    if isinstance(size, int) and not isinstance(size, bool):
        geometry["img_size"] = (size, size)
    elif isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) for s in size):
        geometry["img_size"] = (int(size[0]), int(size[1]))
    return geometry


def parameter_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of ``model``'s first floating-point parameter (float32 for a model without one)."""
    for param in model.parameters():
        if param.is_floating_point():
            return param.dtype
    return torch.float32


# -- the three checks -------------------------------------------------------------------------------------------
def _check_image_type(x: object, what: str) -> None:
    expected = "a torch.Tensor of float images in [0, 1], shape (N, C, H, W)"
    if not isinstance(x, torch.Tensor):
        raise InputTypeError(f"{what} must be {expected}, got {_type_name(x)}; {_tensor_fix(x, images=True)}")
    if x.is_floating_point():
        return
    if x.is_complex():
        raise InputTypeError(f"{what} must be {expected}, got dtype {x.dtype}; pass the real images")
    if x.dtype == torch.bool:
        raise InputTypeError(f"{what} must be {expected}, got dtype torch.bool; convert with x.float()")
    raise InputTypeError(
        f"{what} must be {expected}, got dtype {x.dtype}; convert with x.float() / 255 (8-bit pixel values; "
        "divide by the largest grey level for other bit depths)"
    )


def _check_image_shape(
    x: torch.Tensor, in_chans: int | None, img_size: int | Sequence[int] | None, what: str
) -> None:
    h, w = (None, None) if img_size is None else _hw(img_size)
    got = tuple(x.shape)
    if x.dim() == 4 and in_chans in (None, got[1]) and h in (None, got[2]) and w in (None, got[3]):
        return
    expected = f"(N, {'C' if in_chans is None else in_chans}, {'H' if h is None else h}, {'W' if w is None else w})"
    raise InputError(f"{what}: expected (N, C, H, W) = {expected}, got {got}{_shape_hint(got, in_chans, h, w)}")


def _check_image_values(x: torch.Tensor, what: str) -> None:
    lo, hi = torch.aminmax(x)
    # NaN fails both comparisons, and inf the second: one sync decides the common, valid case.
    if bool((lo >= -RANGE_TOLERANCE) & (hi <= 1 + RANGE_TOLERANCE)):
        return
    finite = torch.isfinite(x)
    n_bad = int(finite.numel() - finite.sum())
    if n_bad:
        n_nan = int(torch.isnan(x).sum())
        bad_images = int((~finite).reshape(x.shape[0], -1).any(1).sum())
        raise InputError(
            f"{what} holds {n_bad} non-finite values ({n_nan} NaN, {n_bad - n_nan} inf) in {bad_images} of "
            f"{x.shape[0]} images; images must be finite values in [0, 1] (check the step that produced them)"
        )
    lo_v, hi_v = float(lo), float(hi)
    if lo_v < 0:
        cause = ("negative values: the images look already normalised ((x - mean) / std, or to [-1, 1]); pass "
                 "them unnormalised in [0, 1], normalisation happens inside the model")
    elif hi_v >= 2:
        cause = "values above 1 look like 0-255 pixel values: divide by 255"
    else:
        cause = "values slightly above 1: clip with x.clamp(0, 1) after augmentation or interpolation"
    raise InputError(f"{what} must lie in [0, 1], found values in [{lo_v:.4g}, {hi_v:.4g}]: {cause}")


# -- message helpers --------------------------------------------------------------------------------------------
def _hw(img_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(img_size, int):
        return img_size, img_size
    h, w = img_size
    return int(h), int(w)


def _type_name(value: object) -> str:
    kind = type(value)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
    dtype = getattr(value, "dtype", None)
    return f"a {name} of dtype {dtype}" if dtype is not None else f"a {name}"


def _tensor_fix(value: object, *, images: bool) -> str:
    """How to turn ``value`` into the tensor expected (numpy arrays, lists, PIL images)."""
    module = type(value).__module__.split(".")[0]
    if module == "numpy":
        if not images:
            return "convert with torch.from_numpy(y)"
        if str(getattr(value, "dtype", "")) == "uint8":
            return "convert with torch.from_numpy(x).float() / 255"
        return "convert with torch.from_numpy(x) (images in [0, 1]; divide by 255 first if they are 0-255)"
    if module == "PIL":
        return "convert with torchvision.transforms.functional.to_tensor(image).unsqueeze(0)"
    if isinstance(value, (list, tuple)):
        return "stack the tensors with torch.stack(...)" if images else "convert with torch.tensor(y)"
    return "pass a torch.Tensor"


def _shape_hint(got: tuple[int, ...], in_chans: int | None, h: int | None, w: int | None) -> str:
    """The likely fix for a wrongly shaped batch, as '; ...' (empty when there is no obvious one)."""
    if len(got) == 3 and (in_chans in (None, got[0])) and (h, w) in ((None, None), got[1:]):
        return "; a single image? add the batch dimension with x.unsqueeze(0)"
    if len(got) == 3 and in_chans == 1 and (h, w) == got[1:]:
        return "; add the channel dimension with x.unsqueeze(1)"
    if len(got) == 4 and in_chans is not None and got[3] == in_chans and (h, w) == got[1:3]:
        return "; channels-last layout? use x.permute(0, 3, 1, 2)"
    if len(got) == 4 and in_chans is not None and got[1] != in_chans:
        return f"; this model takes {in_chans}-channel images"
    if len(got) == 4 and h is not None and got[2:] != (h, w):
        return f"; resize the images to {h}x{w}"
    if len(got) == 2 and None not in (in_chans, h, w) and got[1] == in_chans * h * w:
        return f"; flattened images? use x.view(-1, {in_chans}, {h}, {w})"
    return ""
