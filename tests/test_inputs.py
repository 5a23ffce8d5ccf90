"""The one front door for inputs (lyadeq_zoo/inputs.py): the model's forward, the attacks and lz.evaluate reject
every wrong image batch or label vector with a message naming the fix, and accept the valid edge cases
(rounding, empty batch, float64), on the pretrained lyadeq_mnist and the shipped MNIST test sample."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

import lyadeq_zoo as lz
from lyadeq_zoo.errors import InputError, InputTypeError, LyadeqZooError
from lyadeq_zoo.inputs import check_images, check_labels, model_geometry

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FGSM = [{"type": "fgsm", "eps": [0.1]}]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return lz.create_model("lyadeq_mnist", pretrained=True).eval()


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    return lz.get_component("dataset", "mnist")(split="test", root="sample").tensors()


def as_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round().to(torch.uint8)


def with_non_finite(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[0, 0, 0, 0] = float("nan")
    x[3, 0, 5, 5] = float("nan")
    x[3, 0, 6, 6] = float("inf")
    return x


def run_model(model: nn.Module, x: Any, y: Any) -> Any:
    with torch.no_grad():
        return model(x)


def run_attack(model: nn.Module, x: Any, y: Any) -> Any:
    return lz.create_attack("fgsm", eps="8/255")(model, x, y)


def run_evaluate(model: nn.Module, x: Any, y: Any) -> Any:
    return lz.evaluate(model, [(x, y)], FGSM, progress=False, checks=False)


ENTRY_POINTS: dict[str, tuple[Callable[[nn.Module, Any, Any], Any], str]] = {
    "model": (run_model, "model input"),
    "attack": (run_attack, "attack input x"),
    "evaluate": (run_evaluate, "evaluate batch 0 images"),
}

# name -> (make the bad batch from 8 float digits, error class, regex the message must match after its subject)
BAD_IMAGES: dict[str, tuple[Callable[[torch.Tensor], Any], type[Exception], str]] = {
    "uint8": (as_uint8, InputTypeError, r"got dtype torch\.uint8; convert with x\.float\(\) / 255"),
    "int64": (lambda x: as_uint8(x).long(), InputTypeError, r"got dtype torch\.int64; convert with x\.float\(\) / 255"),
    "numpy uint8": (
        lambda x: as_uint8(x).numpy(), InputTypeError,
        r"got a numpy\.ndarray of dtype uint8; convert with torch\.from_numpy\(x\)\.float\(\) / 255",
    ),
    "numpy float32": (
        lambda x: x.numpy(), InputTypeError,
        r"got a numpy\.ndarray of dtype float32; convert with torch\.from_numpy\(x\)",
    ),
    "0-255 floats": (
        lambda x: as_uint8(x).float(), InputError, r"must lie in \[0, 1\], found values in \[0, 255\]: .*divide by 255"
    ),
    "mean/std normalised": (
        lambda x: (x - MNIST_MEAN) / MNIST_STD, InputError,
        r"must lie in \[0, 1\], found values in \[-0\.4242, 2\.821\]: .*already normalised.*"
        r"normalisation happens inside the model",
    ),
    "NaN and inf": (
        with_non_finite, InputError, r"holds 3 non-finite values \(2 NaN, 1 inf\) in 2 of 8 images"
    ),
    "no batch dimension": (
        lambda x: x[0], InputError,
        r"expected \(N, C, H, W\) = \(N, 1, 28, 28\), got \(1, 28, 28\); .*x\.unsqueeze\(0\)",
    ),
    "3 channels": (
        lambda x: x.expand(-1, 3, -1, -1), InputError,
        r"expected \(N, C, H, W\) = \(N, 1, 28, 28\), got \(8, 3, 28, 28\); this model takes 1-channel images",
    ),
    "32x32": (
        lambda x: nn.functional.pad(x, (2, 2, 2, 2)), InputError,
        r"expected \(N, C, H, W\) = \(N, 1, 28, 28\), got \(8, 1, 32, 32\); resize the images to 28x28",
    ),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("bad", sorted(BAD_IMAGES))
def test_bad_images_are_rejected_with_the_fix(model, digits, entry: str, bad: str) -> None:
    run, subject = ENTRY_POINTS[entry]
    make_bad, error, message = BAD_IMAGES[bad]
    x, y = digits[0][:8], digits[1][:8]
    with pytest.raises(error, match=rf"^{subject}.*{message}"):
        run(model, make_bad(x), y)


def test_uint8_digits_raise_instead_of_scoring_28_percent(model, digits) -> None:
    """The bug this front door closes: the same digits as uint8 went through the model and scored 27.8 %."""
    x, y = digits
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
        # What forward did before the check (the model's own pipeline, uint8 promoted by the normalisation):
        unchecked = (model.head(model.features(as_uint8(x))).argmax(1) == y).float().mean().item()
        with pytest.raises(InputTypeError, match=r"x\.float\(\) / 255"):
            model(as_uint8(x))
    assert accuracy == pytest.approx(0.975) and unchecked == pytest.approx(0.278)


def test_error_classes_keep_the_builtin_ones() -> None:
    assert issubclass(InputTypeError, TypeError) and issubclass(InputTypeError, InputError)
    assert issubclass(InputError, ValueError) and issubclass(InputError, LyadeqZooError)


def test_valid_input_passes_through_untouched_and_keeps_its_gradient(model, digits) -> None:
    x = digits[0][:4].clone().requires_grad_(True)
    assert check_images(x, in_chans=1, img_size=28, dtype=torch.float32) is x  # no copy, no detach
    model(x).logsumexp(1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_rounding_outside_the_unit_range_is_accepted(model, digits) -> None:
    x = digits[0][:4].clone()
    x[0, 0, 0, 0], x[1, 0, 0, 0] = -1e-7, 1 + 1e-7
    assert check_images(x) is x
    with pytest.raises(InputError, match=r"found values in \[0, 1\.01\]: values slightly above 1: clip"):
        check_images(digits[0][:4] * 1.01)


def test_float64_images_are_cast_to_the_parameter_dtype(model, digits) -> None:
    x, y = digits[0][:8], digits[1][:8]
    with torch.no_grad():
        assert torch.equal(model(x.double()), model(x))  # the digits are float32 values: the cast is exact
    x64 = x.double().requires_grad_(True)
    model(x64).logsumexp(1).sum().backward()
    assert x64.grad is not None and x64.grad.dtype == torch.float64 and x64.grad.abs().sum() > 0
    # Attacks keep the caller's dtype (the model casts each forward); evaluate casts once per batch.
    x_adv = run_attack(model, x.double(), y)
    assert x_adv.dtype == torch.float64 and (x_adv - x.double()).abs().max() <= 8 / 255 + 1e-12
    assert run_evaluate(model, x.double(), y)["clean"] == run_evaluate(model, x, y)["clean"]


def test_empty_batch_gives_empty_outputs_without_a_solve(model, digits) -> None:
    x, y = digits
    solves = []
    hook = model.deq.register_forward_hook(lambda *_: solves.append(1))
    try:
        with torch.no_grad():
            logits = model(x[:0])
        x_adv = run_attack(model, x[:0], y[:0])
    finally:
        hook.remove()
    assert logits.shape == (0, 10) and logits.dtype == torch.float32 and not solves
    assert x_adv.shape == (0, 1, 28, 28)
    # evaluate skips an empty batch, and says so when every batch is empty
    result = lz.evaluate(model, [(x[:0], y[:0]), (x[:10], y[:10])], FGSM, progress=False, checks=False)
    assert result["n"] == 10
    with pytest.raises(InputError, match="the loader yielded no samples"):
        lz.evaluate(model, [(x[:0], y[:0])], FGSM, progress=False, checks=False)


BAD_LABELS: dict[str, tuple[Callable[[torch.Tensor], Any], type[Exception], str]] = {
    "float": (lambda y: y.float(), InputTypeError, r"integer class indices, got dtype torch\.float32; .*y\.long\(\)"),
    "one-hot": (
        lambda y: nn.functional.one_hot(y, 10).float(), InputTypeError,
        r"not one-hot vectors or probabilities: use y\.argmax",
    ),
    "numpy": (lambda y: y.numpy(), InputTypeError, r"a numpy\.ndarray of dtype int64; convert with torch\.from_numpy"),
    "too few": (lambda y: y[:7], InputError, r"must be \(N,\) = \(8,\), one label per image, got \(7,\)"),
    "class 10 of 10": (lambda y: y.clamp(max=0) + 10, InputError, r"in \[0, 10\), found values in \[10, 10\]"),
    "negative": (lambda y: y - 1 - y.max(), InputError, r"class indices in \[0, 10\), found values in \[-\d+, -1\]"),
}


@pytest.mark.parametrize("entry", ["attack", "evaluate"])
@pytest.mark.parametrize("bad", sorted(BAD_LABELS))
def test_bad_labels_are_rejected(model, digits, entry: str, bad: str) -> None:
    run = ENTRY_POINTS[entry][0]
    subject = {"attack": "attack labels y", "evaluate": "evaluate batch 0 labels"}[entry]
    make_bad, error, message = BAD_LABELS[bad]
    with pytest.raises(error, match=rf"^{subject}.*{message}"):
        run(model, digits[0][:8], make_bad(digits[1][:8]))


def test_integer_labels_of_any_width_are_accepted(model, digits) -> None:
    y = digits[1][:8]
    assert check_labels(y, 8, num_classes=10) is y
    assert check_labels(y.int(), 8, num_classes=10).dtype == torch.int64
    assert run_attack(model, digits[0][:8], y.int()).shape == (8, 1, 28, 28)


def test_models_without_image_geometry_take_any_batch_but_still_get_the_value_checks(digits) -> None:
    """An MLP on flattened digits declares no C, H, W: the attacks take its (N, 784) batches, dtype and range
    are still checked."""
    mlp = nn.Sequential(nn.Linear(784, 10))
    x, y = digits[0][:8].flatten(1), digits[1][:8]
    assert run_attack(mlp, x, y).shape == (8, 784)
    with pytest.raises(InputTypeError, match=r"^attack input x .*torch\.uint8"):
        run_attack(mlp, as_uint8(x), y)
    x_nan = x.clone()
    x_nan[2, 100] = float("nan")
    with pytest.raises(InputError, match=r"^attack input x holds 1 non-finite values \(1 NaN, 0 inf\) in 1 of 8"):
        run_attack(mlp, x_nan, y)


def test_model_geometry_reads_the_declared_attributes(model) -> None:
    assert model_geometry(model) == {"in_chans": 1, "num_classes": 10, "img_size": (28, 28)}
    assert model_geometry(nn.Linear(2, 2)) == {}
