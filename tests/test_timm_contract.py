"""timm's and Hugging Face's model contracts, on every zoo model.

The timm part checks what timm's own ``tests/test_models.py`` checks of a model, on the zoo's names: forward
(shape, finite), backward (every parameter gets a gradient), the default cfg (keys, values, ``first_conv`` and
``classifier`` naming real modules), ``forward_features`` + ``forward_head`` == ``forward``, ``reset_classifier``,
``num_classes=0``, and pretrained weights loaded with other ``num_classes`` / ``in_chans``. Two differences:
inputs are images in [0, 1] (the models normalise inside and refuse anything else, where timm feeds N(0, 1)
noise), and the features are ``(N, width)`` vectors (a DEQ state, no spatial map), which timm tests as its
"non-standard" models. TorchScript, torch.fx and ``features_only`` are not tested: a solver loop is
data-dependent Python that cannot be traced (timm excludes such models from those tests too).

The Hugging Face part: ``save_pretrained`` -> ``from_pretrained`` is bit-identical, and ``push_to_hub`` /
``from_pretrained("org/repo")`` go through the real huggingface_hub client against test_hub's local Hub.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import test_hub
import torch
from huggingface_hub import HfApi
from test_hub import LocalHub, tiny_model
from torch import nn

import lyadeq_zoo as lz
from lyadeq_zoo.channels import adapt_channel_values, adapt_channel_weight
from lyadeq_zoo.errors import CheckpointError, ConfigError, InputError
from lyadeq_zoo.models import DEQClassifier

timm = pytest.importorskip("timm", reason="timm is a dependency of lyadeq-zoo; install it")

ALL = lz.list_models()  # forward / backward of the untrained ResNet ones take < 0.1 s each on one thread
PRETRAINED = ["deq_mnist", "lyadeq_mnist", "lyadeq_cifar10"]
# The real local Hub of test_hub.py (an HTTP server on 127.0.0.1 speaking the routes huggingface_hub uses).
local_hub, hub_env = test_hub.local_hub, test_hub.hub_env
CFG_KEYS = (
    "architecture", "tag", "input_size", "fixed_input_size", "interpolation", "crop_pct", "crop_mode", "mean",
    "std", "num_classes", "first_conv", "classifier", "pool_size", "license", "description",
)


def images(model: nn.Module, n: int = 2) -> torch.Tensor:
    """``n`` random images in [0, 1] of the model's input size."""
    return torch.rand(n, *model.pretrained_cfg["input_size"])


def real_images(name: str) -> torch.Tensor:
    """Two shipped test images of the zoo model's data set."""
    dataset = "mnist" if name.endswith("_mnist") else "cifar10"
    return lz.get_component("dataset", dataset)(split="test", root="sample", limit=2).tensors()[0]


def classifier_keys(model: nn.Module) -> set[str]:
    prefix = model.pretrained_cfg["classifier"] + "."
    return {key for key in model.state_dict() if key.startswith(prefix)}


# -- timm: default cfg --------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_default_cfg_describes_the_model(name: str) -> None:
    model = lz.create_model(name)
    cfg, spec = model.default_cfg, model.config["model"]
    assert cfg is model.pretrained_cfg and set(CFG_KEYS) <= set(cfg)
    channels = spec["in_chans"]
    assert cfg["architecture"] == name and cfg["tag"] is None
    assert cfg["input_size"] == (channels, spec["img_size"], spec["img_size"]) and cfg["fixed_input_size"]
    assert cfg["mean"] == (0.0,) * channels and cfg["std"] == (1.0,) * channels  # normalised inside
    assert cfg["num_classes"] == model.num_classes == spec["num_classes"]
    assert model.num_features == model.head_hidden_size == spec["width"]
    modules, state = dict(model.named_modules()), model.state_dict()
    first = modules[cfg["first_conv"]]
    assert isinstance(first, (nn.Conv2d, nn.Linear)) and cfg["first_conv"] + ".weight" in state
    assert modules[cfg["classifier"]] is model.get_classifier()
    assert state[cfg["classifier"] + ".weight"].shape == (model.num_classes, model.head_hidden_size)
    expected = {"orthogonal": "head.classifier", "linear": "head.fc"}[spec["head"]["type"]]
    assert cfg["classifier"] == expected
    if lz.hub.has_pretrained(name):
        assert cfg.get("hf_hub_id") or Path(cfg["file"]).is_file()


def test_model_built_from_a_config_names_its_architecture(tiny_model: nn.Module) -> None:
    assert tiny_model.pretrained_cfg["architecture"] == "deq_classifier"
    assert tiny_model.pretrained_cfg["input_size"] == (1, 28, 28)


# -- timm: forward, backward, features + head ---------------------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_forward(name: str) -> None:
    model = lz.create_model(name).eval()
    with torch.no_grad():
        out = model(images(model))
    assert out.shape == (2, model.num_classes) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_backward_reaches_every_parameter(name: str) -> None:
    model = lz.create_model(name, num_classes=42).train()
    out = model(images(model))
    assert out.shape == (2, 42)
    out.mean().backward()
    missing = [key for key, p in model.named_parameters() if p.grad is None]
    assert missing == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("name", ALL)
def test_forward_features_then_head_is_forward(name: str) -> None:
    model = lz.create_model(name).eval()
    x = images(model)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model.forward_head(features)
        pre_logits = model.forward_head(features, pre_logits=True)
        assert torch.equal(logits, model(x))
        # The classifier is exactly what turns the pre-logits into logits.
        assert torch.equal(model.get_classifier()(pre_logits), logits)
    assert features.shape == (2, model.num_features) and pre_logits.shape == (2, model.head_hidden_size)
    if model.config["model"]["head"]["type"] == "linear":
        assert torch.equal(pre_logits, features)


@pytest.mark.parametrize("name", ["lyadeq_mnist", "deq_mnist", "lyadeq_no_orth_mnist", "lyadeq_cifar10"])
def test_reset_classifier(name: str) -> None:
    model = lz.create_model(name).eval()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    old_classifier = classifier_keys(model)
    x = images(model)
    with torch.no_grad():
        pre_logits = model.forward_head(model.forward_features(x), pre_logits=True)

        model.reset_classifier(0)
        assert model.num_classes == 0 and isinstance(model.get_classifier(), nn.Identity)
        assert torch.equal(model(x), pre_logits)  # (N, head_hidden_size)

        model.reset_classifier(7)
        assert model(x).shape == (2, 7)
    classifier = model.get_classifier()
    assert isinstance(classifier, nn.Linear) and classifier.weight.shape == (7, model.head_hidden_size)
    after = model.state_dict()
    # Everything but the classifier is kept (the orthogonal Z included).
    assert set(after) - classifier_keys(model) == set(before) - old_classifier
    assert all(torch.equal(after[key], before[key]) for key in set(before) - old_classifier)
    assert model.config["model"]["num_classes"] == model.pretrained_cfg["num_classes"] == 7
    rebuilt = lz.build_model(model.config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in after.items()}


@pytest.mark.parametrize("name", ["lyadeq_mnist", "deq_mnist", "lyadeq_cifar10"])
def test_num_classes_zero_builds_a_feature_model(name: str) -> None:
    model = lz.create_model(name, num_classes=0).eval()
    with torch.no_grad():
        out = model(images(model))
    assert model.num_classes == 0 and out.shape == (2, model.num_features)
    assert classifier_keys(model) == set()


# -- timm: pretrained weights with another num_classes / in_chans -----------------------------------------------
@pytest.mark.parametrize("name", PRETRAINED)
def test_pretrained_with_new_num_classes_keeps_everything_but_the_classifier(name: str) -> None:
    reference = lz.create_model(name, pretrained=True).eval()
    x = real_images(name)
    for num_classes in (5, 0):
        model = lz.create_model(name, pretrained=True, num_classes=num_classes).eval()
        state, kept = model.state_dict(), reference.state_dict()
        for key in set(kept) - classifier_keys(reference):
            assert torch.equal(state[key], kept[key]), key
        with torch.no_grad():
            features = reference.forward_features(x)
            assert torch.equal(model.forward_features(x), features)
            out = model(x)
        if num_classes:
            assert out.shape == (2, 5) and model.get_classifier().weight.shape == (5, model.head_hidden_size)
        else:
            assert torch.equal(out, reference.forward_head(features, pre_logits=True))
        assert model.config["model"]["num_classes"] == num_classes


def test_pretrained_grey_model_on_rgb_gives_the_same_logits(mnist_digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    """1 -> 3 channels: the weights are repeated and divided by 3, so a grey digit fed as RGB gives the same logits."""
    x = mnist_digits[0][:4]
    reference = lz.create_model("lyadeq_mnist", pretrained=True).eval()
    model = lz.create_model("lyadeq_mnist", pretrained=True, in_chans=3).eval()
    assert model.config["model"]["in_chans"] == 3 and model.config["model"]["mean"] == [0.1307] * 3
    assert model.pretrained_cfg["input_size"] == (3, 28, 28) and model.pretrained_cfg["mean"] == (0.0,) * 3
    with torch.no_grad():
        grey, rgb = reference(x), model(x.repeat(1, 3, 1, 1))
    assert torch.allclose(rgb, grey, atol=1e-4) and torch.equal(rgb.argmax(1), grey.argmax(1))
    with pytest.raises(InputError, match="expected"):
        model(x)  # now a 3-channel model


def test_pretrained_rgb_model_on_grey_sums_the_first_layer() -> None:
    reference = lz.create_model("lyadeq_cifar10", pretrained=True)
    model = lz.create_model("lyadeq_cifar10", pretrained=True, in_chans=1, num_classes=5).eval()
    first = model.pretrained_cfg["first_conv"] + ".weight"
    assert torch.equal(model.state_dict()[first], reference.state_dict()[first].sum(1, keepdim=True))
    mean = reference.config["model"]["mean"]
    assert model.config["model"]["mean"] == pytest.approx([sum(mean) / 3])
    with torch.no_grad():
        assert model(real_images("lyadeq_cifar10").mean(1, keepdim=True)).shape == (2, 5)


def test_pretrained_in_chans_takes_explicit_normalisation() -> None:
    model = lz.create_model("deq_mnist", pretrained=True, in_chans=2, mean=[0.1, 0.2], std=0.5)
    assert model.config["model"]["mean"] == [0.1, 0.2] and model.config["model"]["std"] == [0.5, 0.5]
    assert torch.equal(model.mean.flatten(), torch.tensor([0.1, 0.2]))


def test_untrained_model_with_other_in_chans_adapts_only_the_normalisation() -> None:
    model = lz.create_model("deq_mnist", in_chans=3)
    assert model.config["model"]["mean"] == [0.1307] * 3 and model.backbone.proj.in_features == 3 * 28 * 28
    grey = lz.create_model("lyadeq_cifar10", in_chans=1, std=0.25)
    assert grey.config["model"]["mean"] == pytest.approx([(0.4914 + 0.4822 + 0.4465) / 3])
    assert grey.config["model"]["std"] == 0.25 and grey.pretrained_cfg["first_conv"] == "backbone.stem.0"


def test_timm_and_lz_adapt_the_same_way() -> None:
    for options in ({"num_classes": 5, "in_chans": 1}, {"num_classes": 0}):
        torch.manual_seed(3)
        ours = lz.create_model("lyadeq_cifar10", pretrained=True, **options).state_dict()
        torch.manual_seed(3)
        theirs = timm.create_model("lyadeq_cifar10", pretrained=True, **options).state_dict()
        assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_channel_adaptation_rule() -> None:
    weight = torch.arange(12.0).view(2, 3, 2)
    assert torch.equal(adapt_channel_weight(weight, 1), weight.sum(1, keepdim=True))
    assert torch.equal(adapt_channel_weight(weight, 6), torch.cat([weight, weight], 1) / 2)
    assert torch.equal(adapt_channel_weight(weight, 2), weight[:, :2] * 1.5)
    assert adapt_channel_values([0.2, 0.4], 1) == pytest.approx([0.3])
    assert adapt_channel_values([0.2, 0.4], 3) == [0.2, 0.4, 0.2]


# -- bad inputs ---------------------------------------------------------------------------------------------
BAD_INPUTS = [
    pytest.param(lambda: lz.create_model("deq_mnist", pretrained=True, num_classes=-1), ConfigError,
                 r"model\.num_classes must be an int >= 0 \(0: no classifier, .*\), got -1", id="num_classes=-1"),
    pytest.param(lambda: lz.create_model("deq_mnist", num_classes=-1), ConfigError,
                 r"model\.num_classes must be an int >= 0", id="num_classes=-1 untrained"),
    pytest.param(lambda: lz.create_model("deq_mnist", pretrained=True, num_classes=2.5), ConfigError, r"got 2\.5",
                 id="num_classes=2.5"),
    pytest.param(lambda: lz.create_model("deq_mnist", pretrained=True, in_chans=0), ConfigError,
                 r"model\.in_chans must be a positive int \(the number of image channels\), got 0", id="in_chans=0"),
    pytest.param(lambda: lz.create_model("deq_mnist", in_chans=-2), ConfigError,
                 r"model\.in_chans must be a positive int", id="in_chans=-2 untrained"),
    pytest.param(lambda: lz.create_model("deq_mnist", pretrained=True, in_chans=3, mean=[0.1, 0.2]), ConfigError,
                 r"model\.mean must have one value per input channel \(3\) or be a single number, got \[0\.1, 0\.2\]",
                 id="mean of 2 for 3 chans"),
    pytest.param(lambda: lz.create_model("deq_mnist", pretrained=True, in_chans=3, std=0.0), ConfigError,
                 r"model\.std must be positive", id="std=0"),
    pytest.param(lambda: lz.create_model("deq_mnist").reset_classifier(5, global_pool="avg"), ConfigError,
                 r"global_pool='avg': a DEQ classifier has no global pooling", id="reset global_pool"),
    pytest.param(lambda: lz.create_model("deq_mnist").forward_head(torch.zeros(2, 5)), InputError,
                 r"forward_head expects features \(N, 64\) from forward_features, got \(2, 5\)",
                 id="forward_head shape"),
    pytest.param(lambda: timm.create_model("deq_mnist", features_only=True), ConfigError,
                 r"timm option features_only=True does not apply to 'deq_mnist': a DEQ has no feature pyramid",
                 id="timm features_only"),
    pytest.param(lambda: timm.create_model("deq_mnist", global_pool=""), ConfigError, r"timm option global_pool=''",
                 id="timm global_pool"),
    pytest.param(lambda: timm.create_model("deq_mnist.some_tag"), ConfigError, r"zoo models have no pretrained tags",
                 id="timm tag"),
    pytest.param(lambda: DEQClassifier.from_pretrained("no such model"), CheckpointError,
                 r"'no such model' is not a folder, a Hub id or a zoo name; expected a folder written by "
                 r"save_pretrained", id="from_pretrained unknown"),
    pytest.param(lambda: DEQClassifier.from_pretrained("lyadeq_mnist", revision="v2"), CheckpointError,
                 r"revision='v2' applies to Hub ids only", id="revision on a zoo name"),
    pytest.param(lambda: DEQClassifier.from_pretrained("org/repo@v1", revision="v2"), CheckpointError,
                 r"already names a revision", id="two revisions"),
    pytest.param(lambda: DEQClassifier.from_pretrained("deq_cifar100"), CheckpointError,
                 r"no pretrained weights for 'deq_cifar100'", id="zoo name without weights"),
]


@pytest.mark.parametrize(("call", "error", "message"), BAD_INPUTS)
def test_bad_input_is_refused_with_the_fix(call: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        call()


def test_in_chans_two_on_a_grey_model_repeats_the_channel(mnist_digits: tuple[torch.Tensor, torch.Tensor]) -> None:
    """Any channel count is accepted (as timm does); 2 is a multiple of 1, so a digit in both channels is exact."""
    x = mnist_digits[0][:2]
    reference = lz.create_model("deq_mnist", pretrained=True).eval()
    model = lz.create_model("deq_mnist", pretrained=True, in_chans=2).eval()
    with torch.no_grad():
        assert torch.allclose(model(x.repeat(1, 2, 1, 1)), reference(x), atol=1e-4)


def test_adapting_an_unknown_first_layer_is_refused(tiny_model: nn.Module) -> None:
    tiny_model.backbone = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28 + 1, 8))  # takes neither C nor C*H*W
    with pytest.raises(ConfigError, match=r"cannot adapt the model from 1 to 3 input channels: the backbone Seq"):
        tiny_model.adapt_input_channels(3)


# -- Hugging Face: save_pretrained / from_pretrained / push_to_hub -----------------------------------------------
def assert_same_model(loaded: nn.Module, original: nn.Module, x: torch.Tensor) -> None:
    assert type(loaded) is type(original) and not loaded.training
    state, expected = loaded.state_dict(), original.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in state)
    with torch.no_grad():
        assert torch.equal(loaded(x), original.eval()(x))


def test_save_pretrained_then_from_pretrained_is_bit_identical(tmp_path: Path) -> None:
    model = lz.create_model("lyadeq_mnist", pretrained=True).eval()
    folder = model.save_pretrained(tmp_path / "lyadeq", metrics={"clean": 0.97})
    assert sorted(p.name for p in folder.iterdir()) == sorted(lz.hub.CHECKPOINT_FILES)
    x = real_images("lyadeq_mnist")
    for spec in (folder, str(folder), f"local-dir:{folder}"):
        assert_same_model(DEQClassifier.from_pretrained(spec), model, x)
    assert_same_model(DEQClassifier.from_pretrained("lyadeq_mnist"), model, x)


def test_adapted_models_round_trip(tmp_path: Path) -> None:
    """reset_classifier / adapt_input_channels keep model.config in step, so the saved folder loads strictly."""
    x = real_images("lyadeq_mnist")
    for options in ({"num_classes": 0}, {"num_classes": 3, "in_chans": 3}):
        model = lz.create_model("lyadeq_mnist", pretrained=True, **options).eval()
        folder = model.save_pretrained(tmp_path / str(len(options)))
        loaded = DEQClassifier.from_pretrained(folder)
        assert_same_model(loaded, model, x.repeat(1, model.in_chans, 1, 1))
        assert loaded.pretrained_cfg["input_size"] == model.pretrained_cfg["input_size"]


def test_from_pretrained_refuses_another_architecture(tmp_path: Path) -> None:
    folder = lz.save_pretrained(tiny_model(), tmp_path / "tiny")
    with pytest.raises(CheckpointError, match=r"holds a TinyNet, not a DEQClassifier; load it with lz\.create_model"):
        DEQClassifier.from_pretrained(folder)


def test_push_to_hub_then_from_pretrained_hub_id(hub_env: LocalHub) -> None:
    model = lz.create_model("deq_mnist", pretrained=True).eval()
    info = model.push_to_hub("org/deq", commit_message="first")
    assert sorted(hub_env.files("org/deq")) == sorted(lz.hub.CHECKPOINT_FILES)
    assert hub_env.commit_messages[-1] == f"first (lyadeq-zoo {lz.__version__})"
    assert isinstance(info, str) and info.oid == hub_env.refs["org/deq"]["main"]
    x = real_images("deq_mnist")
    for spec, revision in (("org/deq", None), (f"org/deq@{info.oid}", None), ("org/deq", info.oid),
                           ("hf-hub:org/deq", None)):
        assert_same_model(DEQClassifier.from_pretrained(spec, revision=revision), model, x)

    features = lz.create_model("deq_mnist", pretrained=True, num_classes=0)
    second = features.push_to_hub("org/deq", branch="v2", token="hf_local_test_token")
    assert hub_env.refs["org/deq"]["v2"] == second.oid != info.oid
    assert_same_model(DEQClassifier.from_pretrained("org/deq@v2"), features, x)
    assert_same_model(DEQClassifier.from_pretrained("org/deq"), model, x)  # main is unchanged
    with pytest.raises(ValueError, match="pass token or api, not both"):
        model.push_to_hub("org/deq", token="t", api=HfApi(endpoint=hub_env.url))
