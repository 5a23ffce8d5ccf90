"""Checkpoints and distribution: ``save_pretrained`` folders, strict safetensors loading, pretrained weights.

A checkpoint is a folder (the same layout locally and on the Hugging Face Hub):

``model.safetensors``  the ``state_dict`` only (safetensors: no pickle, nothing executable).
``config.json``        the resolved config the model was built from, the zoo version, data set, input
                       normalisation, measured metrics and epochs run.
``README.md``          the model card: Hub metadata header, metrics table, training command, citation.

Loading is strict: every tensor of the file must match, by name and shape, a tensor of the model that
the config builds, and the file's zoo major version must be ours. Only safetensors is ever read.

Pretrained zoo weights are listed in ``lyadeq_zoo/pretrained.json`` (zoo name -> Hub id, revision, file
name, sha256, optional shipped copy). They are fetched with ``huggingface_hub.hf_hub_download``, so its
cache, ``HF_HUB_OFFLINE``, ``HF_ENDPOINT`` and tokens behave as usual; the sha256 is always checked.
"""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import math
import os
import re
import shutil
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_dumps

from .config import ConfigError, merge_configs
from .data.samples import sha256_file  # noqa: F401  (re-exported: tools/publish.py uses hub.sha256_file)
from .version import __version__

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo, HfApi

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
CHECKPOINT_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
FORMAT_VERSION = 1  # layout of config.json; bumped when a reader of the old layout would misread it
LIBRARY_NAME = "lyadeq-zoo"
HUB_PREFIX = "hf-hub:"
LOCAL_PREFIX = "local-dir:"
REGISTRY_PATH = Path(__file__).resolve().parent / "pretrained.json"
REGISTRY_ENV = "LYADEQ_ZOO_PRETRAINED"  # an alternative pretrained.json (e.g. a private mirror's)
LICENSE = "apache-2.0"

PAPER_BIBTEX = """@inproceedings{chu2024lyapunov,
  title     = {Lyapunov-Stable Deep Equilibrium Models},
  author    = {Chu, Haoyu and Wei, Shikui and Liu, Ting and Zhao, Yao and Miyatake, Yuto},
  booktitle = {Proceedings of the AAAI Conference on Artificial Intelligence},
  year      = {2024},
  eprint    = {2304.12707},
  archivePrefix = {arXiv}
}"""

# Hub data set ids of the data sets the zoo trains on (the short legacy names redirect on the Hub).
HUB_DATASETS = {"mnist": "mnist", "cifar10": "cifar10", "cifar100": "cifar100", "svhn": "svhn"}
DATASET_TITLES = {"mnist": "MNIST", "cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "svhn": "SVHN"}

_HEX40 = re.compile(r"^[0-9a-f]{40}$")
_warned_fallback: set[str] = set()


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded strictly; the message names the file, key or tensor and the fix."""


class ChecksumError(CheckpointError):
    """A weights file whose sha256 differs from the one the pretrained registry records."""


# -- saving ------------------------------------------------------------------------------------------
def save_pretrained(
    model: torch.nn.Module,
    directory: str | Path,
    *,
    metrics: Mapping[str, Any] | None = None,
    dataset: str | None = None,
    train_command: str | None = None,
    epochs: int | None = None,
    name: str | None = None,
) -> Path:
    """Write ``model`` as a checkpoint folder: ``model.safetensors`` + ``config.json`` + ``README.md``.

    Args:
        model: a model built by ``lz.build_model`` / ``lz.create_model`` (it must carry ``model.config``).
        directory: the folder to write; created if needed. Other files in it are left alone.
        metrics: measured results, e.g. ``lz.evaluate``'s dict (numbers, possibly nested); stored in
            ``config.json`` (NaN / inf as null) and summarised in the model card. ``None`` when not measured.
        dataset: the data set name; defaults to the config's ``data.type``.
        train_command: the command line that trained the model (shown in the card).
        epochs: epochs actually run, when known.
        name: the model's name in the card; defaults to the folder name.

    Files are written atomically: into a fresh folder that is renamed into place, or, when ``directory``
    already holds files, as temporary files that replace the old ones (``os.replace``) after an fsync.
    Returns the folder's path.
    """
    config = getattr(model, "config", None)
    if not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping):
        raise ValueError(
            "save_pretrained needs model.config (the resolved config dict with a 'model' section), which "
            "lz.build_model / lz.create_model set; build the model through them, or set model.config"
        )
    config = copy.deepcopy(dict(config))
    directory = Path(directory).expanduser()
    name = name or directory.resolve().name
    dataset = dataset or _config_dataset(config)
    metrics = _json_safe(copy.deepcopy(dict(metrics))) if metrics is not None else None
    try:
        json.dumps(config, allow_nan=False)
        json.dumps(metrics, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ValueError(f"save_pretrained: model.config and metrics must be JSON-serialisable: {err}") from err

    weights = safetensors_dumps(_state_for_saving(model), metadata={"format": "pt", "lyadeq_zoo": __version__})
    info = {
        "library": LIBRARY_NAME,
        "zoo_version": __version__,
        "format_version": FORMAT_VERSION,
        "name": name,
        "dataset": dataset,
        "input": _input_spec(config["model"]),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "metrics": metrics,
        "epochs": int(epochs) if epochs is not None else None,
        "train_command": train_command,
        "config": config,
    }
    config_text = json.dumps(info, indent=2, allow_nan=False) + "\n"
    card = model_card(info)
    _write_files_atomically(
        directory,
        {WEIGHTS_NAME: weights, CONFIG_NAME: config_text.encode(), CARD_NAME: card.encode()},
    )
    return directory


def _json_safe(value: Any) -> Any:
    """Non-finite floats (NaN, inf: not valid JSON) become None; tuples become lists."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(item) for item in value]
    return value


def _state_for_saving(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The state_dict as contiguous CPU tensors; tensors sharing storage are copied (safetensors refuses them)."""
    state: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in model.state_dict().items():
        tensor = value.detach().cpu()
        storage = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
        if storage in seen and tensor.numel() > 0:
            tensor = tensor.clone()
        seen.add(storage)
        state[key] = tensor.contiguous()
    return state


def _config_dataset(config: Mapping[str, Any]) -> str | None:
    data = config.get("data")
    return data.get("type") if isinstance(data, Mapping) else None


def _input_spec(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """What the model expects as input; its normalisation is applied inside, to images in [0, 1].

    Keys the config leaves out are taken from the architecture's constructor defaults.
    """
    defaults: dict[str, Any] = {}
    try:
        from .registry import get_component

        for key, param in inspect.signature(get_component("model", model_config["type"])).parameters.items():
            if param.default is not inspect.Parameter.empty:
                defaults[key] = param.default
    except (KeyError, TypeError, ValueError):  # unknown type or no signature: record what the config says
        pass

    def value(key: str) -> Any:
        return model_config.get(key, defaults.get(key))

    return {
        "range": [0.0, 1.0],
        "in_chans": value("in_chans"),
        "img_size": value("img_size"),
        "num_classes": value("num_classes"),
        "mean": value("mean"),
        "std": value("std"),
        "normalisation": "inside the model: feed images in [0, 1]; forward() applies (x - mean) / std",
    }


def _write_files_atomically(directory: Path, files: Mapping[str, bytes]) -> None:
    parent = directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    fresh = not directory.exists() or (directory.is_dir() and not any(directory.iterdir()))
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"save_pretrained: {directory} exists and is not a folder")
    if fresh:
        staging = parent / f".{directory.name}.{uuid.uuid4().hex}.tmp"
        staging.mkdir()  # honours the umask, unlike tempfile.mkdtemp's 0o700
        try:
            for file_name, content in files.items():
                _write_synced(staging / file_name, content)
            if directory.exists():
                directory.rmdir()
            os.replace(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    else:
        staged: dict[str, Path] = {}
        try:
            for file_name, content in files.items():
                staged[file_name] = directory / f".{file_name}.{uuid.uuid4().hex}.tmp"
                _write_synced(staged[file_name], content)
            for file_name, tmp in staged.items():
                os.replace(tmp, directory / file_name)
        finally:
            for tmp in staged.values():
                tmp.unlink(missing_ok=True)
    _fsync_dir(parent)
    _fsync_dir(directory)


def _write_synced(path: Path, content: bytes) -> None:
    with open(path, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the files themselves were synced
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- model card ---------------------------------------------------------------------------------------
def flatten_metrics(metrics: Mapping[str, Any] | None, prefix: str = "") -> dict[str, float]:
    """Numeric leaves of a (nested) metrics dict, keyed by their ``/``-joined path."""
    flat: dict[str, float] = {}
    for key, value in (metrics or {}).items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, path))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            flat[path] = float(value)
    return flat


EVAL_FORMAT_PREFIX = "lyadeq-zoo-eval/"  # the result format of lz.evaluate


def metric_rows(metrics: Mapping[str, Any] | None) -> dict[str, float]:
    """The model card's metric rows, name -> value.

    An ``lz.evaluate`` result (``format: lyadeq-zoo-eval/...``, accuracies as fractions) becomes rows in
    percent: clean accuracy, each attack's own accuracy at each eps, and the worst case over attacks per eps;
    other numeric top-level entries (e.g. ``clean_accuracy`` from training) follow as given. Any other
    mapping contributes its numeric leaves as given (see :func:`flatten_metrics`).
    """
    if not metrics:
        return {}
    if not str(metrics.get("format", "")).startswith(EVAL_FORMAT_PREFIX):
        return flatten_metrics(metrics)
    rows: dict[str, float] = {}
    clean = (metrics.get("clean") or {}).get("accuracy")
    if clean is not None:
        rows["clean accuracy (%)"] = 100.0 * clean
    for attack in metrics.get("attacks") or []:
        for item in attack.get("results") or []:
            if item.get("accuracy") is not None:
                rows[f"{attack['name']} @ eps {item['eps_255']:g}/255 (%)"] = 100.0 * item["accuracy"]
    for item in metrics.get("worst_case") or []:
        rows[f"worst case @ eps {item['eps_255']:g}/255 (%)"] = 100.0 * item["accuracy"]
    skip = {"n", "seed", "format"}
    for key, value in metrics.items():
        if key not in skip and isinstance(value, (int, float)) and not isinstance(value, bool):
            rows[key] = float(value)
    return rows


def _is_accuracy(key: str) -> bool:
    lowered = key.lower()
    return any(word in lowered for word in ("acc", "clean", "pgd", "fgsm", "attack", "robust", "worst"))


def fine_tuned_from(config: Mapping[str, Any]) -> str | None:
    """``train.init_from`` of a resolved config (the weights its training started from), else None."""
    train_section = config.get("train")
    return train_section.get("init_from") if isinstance(train_section, Mapping) else None


def model_card(info: Mapping[str, Any]) -> str:
    """The README.md model card of a checkpoint whose ``config.json`` content is ``info``."""
    from huggingface_hub import EvalResult, ModelCardData

    name = info.get("name") or "lyadeq-zoo model"
    dataset = info.get("dataset")
    raw_metrics = info.get("metrics") or {}
    metrics = metric_rows(raw_metrics)
    eval_results = None
    if dataset and metrics:
        eval_results = [
            EvalResult(
                task_type="image-classification",
                task_name="Image Classification",
                dataset_type=HUB_DATASETS.get(dataset, dataset),
                dataset_name=DATASET_TITLES.get(dataset, dataset),
                dataset_split="test",
                metric_type="accuracy" if _is_accuracy(key) else key,
                metric_name=key,
                metric_value=round(value, 4),  # no float noise such as 0.9199999999999999 in the card
            )
            for key, value in metrics.items()
        ]
    card_data = ModelCardData(
        license=LICENSE,
        library_name=LIBRARY_NAME,
        tags=[
            "image-classification",
            "deep-equilibrium-model",
            "lyapunov-stability",
            "adversarial-robustness",
            "pytorch",
            "safetensors",
            LIBRARY_NAME,
        ],
        datasets=[HUB_DATASETS.get(dataset, dataset)] if dataset else None,
        metrics=["accuracy"] if metrics else None,
        model_name=name if eval_results else None,
        eval_results=eval_results,
    )
    config = info.get("config") or {}
    meta = config.get("meta") or {}
    description = meta.get("description") or "A deep equilibrium model from lyadeq-zoo."
    spec = info.get("input") or {}
    lines = [
        "---",
        card_data.to_yaml(),
        "---",
        "",
        f"# {name}",
        "",
        str(description),
        "",
        "Lyapunov-stable deep equilibrium models (LyaDEQ) follow Chu et al., *Lyapunov-Stable Deep Equilibrium "
        "Models*, AAAI 2024 ([arXiv:2304.12707](https://arxiv.org/abs/2304.12707)).",
        "",
        "## Usage",
        "",
        "```python",
        "import lyadeq_zoo as lz",
        "",
        'model = lz.create_model("hf-hub:<this repo id>").eval()  # or "local-dir:<this folder>"',
        "logits = model(images)  # images: float (N, C, H, W) in [0, 1]; logits: (N, num_classes)",
        "```",
        "",
        f"Input: images in [0, 1], {spec.get('in_chans')} channel(s), size {spec.get('img_size')}; "
        f"normalisation (mean {spec.get('mean')}, std {spec.get('std')}) is applied inside the model.",
        "",
        "## Results",
        "",
    ]
    if metrics:
        where = f" on the test split of {DATASET_TITLES.get(dataset, dataset)}" if dataset else ""
        lines += [f"Measured{where}:", ""]
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {key} | {value:.4g} |" for key, value in metrics.items()]
        if str(raw_metrics.get("format", "")).startswith(EVAL_FORMAT_PREFIX):
            lines += [
                "",
                f"lz.evaluate, suite `{raw_metrics.get('suite')}`, {raw_metrics.get('n')} test samples, seed "
                f"{raw_metrics.get('seed')}. Each attack's own accuracy counts clean mistakes as non-robust; the worst "
                "case counts a sample as robust only if every attack failed on it. Full results: config.json.",
            ]
    else:
        lines.append("No metrics were measured for this checkpoint.")
    if meta.get("paper_table1"):
        lines += ["", f"The paper reports (Table 1, accuracy %): `{json.dumps(meta['paper_table1'])}`."]
    lines += ["", "## Training", ""]
    init_from = fine_tuned_from(config)
    if init_from:
        lines += [f"**Fine-tuned: training started from the weights of `{init_from}`**, not from a random init.", ""]
    if info.get("epochs") is not None:
        paper_epochs = meta.get("paper_epochs")
        if paper_epochs and info["epochs"] < paper_epochs:
            lines.append(
                f"**Shortened schedule: {info['epochs']} epoch{'s' if info['epochs'] != 1 else ''} run, the paper "
                f"trains {paper_epochs}.** "
                "Numbers from this checkpoint are not comparable with the paper's as a reproduction."
            )
        else:
            lines.append(f"Epochs run: {info['epochs']}" + (f" (paper: {paper_epochs})." if paper_epochs else "."))
        lines.append("")
    if info.get("train_command"):
        lines += ["Command:", "", "```bash", str(info["train_command"]), "```", ""]
    lines += [
        "Config (resolved; `lz.build_model(config)` rebuilds the architecture):",
        "",
        "```json",
        json.dumps(config, indent=2),
        "```",
        "",
        f"Saved with lyadeq-zoo {info.get('zoo_version')} (checkpoint format {info.get('format_version')}).",
        "",
        "## Citation",
        "",
        "```bibtex",
        PAPER_BIBTEX,
        "```",
        "",
    ]
    return "\n".join(lines)


# -- strict loading ------------------------------------------------------------------------------------
def read_checkpoint_config(path: str | Path, *, source: str | None = None) -> dict[str, Any]:
    """Read and check a checkpoint's ``config.json`` (zoo major version, format, ``config.model``)."""
    path = Path(path)
    label = source or str(path)
    if not path.is_file():
        raise CheckpointError(
            f"{label}: {CONFIG_NAME} not found; a checkpoint folder holds {', '.join(CHECKPOINT_FILES)} "
            "(write one with lz.save_pretrained)"
        )
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{label}: not valid JSON ({err}); re-save the checkpoint") from err
    if not isinstance(info, dict):
        raise CheckpointError(f"{label}: expected a JSON object, got {type(info).__name__}")
    version = info.get("zoo_version")
    if not isinstance(version, str):
        raise CheckpointError(f"{label}: missing key 'zoo_version' (the lyadeq-zoo version that saved it)")
    if _major(version) != _major(__version__):
        raise CheckpointError(
            f"{label}: saved by lyadeq-zoo {version}, which is incompatible with this lyadeq-zoo "
            f"{__version__} (major version {_major(version)} != {_major(__version__)}); install "
            f"lyadeq-zoo=={_major(version)}.* to load it"
        )
    fmt = info.get("format_version")
    if not isinstance(fmt, int) or fmt > FORMAT_VERSION:
        raise CheckpointError(
            f"{label}: key 'format_version' is {fmt!r}; this lyadeq-zoo reads formats up to {FORMAT_VERSION}"
        )
    config = info.get("config")
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        raise CheckpointError(f"{label}: key 'config' must hold the resolved config with a 'model' section")
    return info


def _major(version: str) -> int:
    match = re.match(r"^\s*(\d+)", version)
    if match is None:
        raise CheckpointError(f"cannot read a major version from zoo_version {version!r}")
    return int(match.group(1))


def load_weights(model: torch.nn.Module, path: str | Path, *, source: str | None = None) -> torch.nn.Module:
    """Load a safetensors file into ``model`` strictly: same tensor names, same shapes, compatible dtypes.

    Raises CheckpointError naming the file and every mismatched tensor (missing, unexpected, mis-shaped).
    """
    path = Path(path)
    label = source or str(path)
    if not path.is_file():
        raise CheckpointError(f"{label}: weights file not found")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CheckpointError(
            f"{label}: not a readable safetensors file ({err}); it is truncated or corrupt: download it "
            "again or re-save it with lz.save_pretrained"
        ) from err
    expected = model.state_dict()
    problems = []
    for key in sorted(set(expected) - set(tensors)):
        problems.append(f"tensor {key!r} is missing (the config builds it with shape {_shape(expected[key])})")
    for key in sorted(set(tensors) - set(expected)):
        problems.append(
            f"tensor {key!r} (shape {_shape(tensors[key])}) is unexpected: the config builds no such tensor"
        )
    for key in sorted(set(tensors) & set(expected)):
        got, want = tensors[key], expected[key]
        if got.shape != want.shape:
            problems.append(f"tensor {key!r} has shape {_shape(got)}, the config builds {_shape(want)}")
        elif got.dtype != want.dtype and not (got.is_floating_point() and want.is_floating_point()):
            problems.append(f"tensor {key!r} has dtype {got.dtype}, the config builds {want.dtype}")
    if problems:
        shown = "; ".join(problems[:8]) + (f"; ... and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise CheckpointError(
            f"{label}: {shown}. The weights do not fit the architecture of the config (was the config "
            "changed, or are these another model's weights?)"
        )
    model.load_state_dict(tensors, strict=True)
    return model


def _shape(tensor: torch.Tensor) -> tuple[int, ...]:
    return tuple(int(s) for s in tensor.shape)


def load_model(name: str, **overrides: Any) -> torch.nn.Module:
    """A model from ``local-dir:PATH`` or ``hf-hub:org/repo[@revision]`` (a save_pretrained layout).

    ``overrides`` deep-merge into the checkpoint config's ``model`` section (e.g. solver options);
    weights are then loaded strictly. The model is returned in eval mode.
    """
    if name.startswith(LOCAL_PREFIX):
        directory = Path(name[len(LOCAL_PREFIX) :]).expanduser()
        if not directory.is_dir():
            raise CheckpointError(f"{name}: {directory} is not a folder (expected a lz.save_pretrained folder)")
        return _build_and_load(directory / CONFIG_NAME, directory / WEIGHTS_NAME, overrides, label=name)
    if name.startswith(HUB_PREFIX):
        repo_id, revision = parse_hub_name(name)
        config_path = _hub_download(repo_id, CONFIG_NAME, revision, label=name)
        # Pin the weights to the commit the config came from, so a push in between cannot mix them.
        commit = Path(config_path).parent.name
        weights_path = _hub_download(repo_id, WEIGHTS_NAME, commit if _HEX40.match(commit) else revision, label=name)
        return _build_and_load(Path(config_path), Path(weights_path), overrides, label=name)
    raise ValueError(f"load_model expects a name starting with {HUB_PREFIX!r} or {LOCAL_PREFIX!r}, got {name!r}")


def parse_hub_name(name: str) -> tuple[str, str | None]:
    """``hf-hub:org/repo@rev`` -> ``("org/repo", "rev")``; the revision is None when not given."""
    spec = name[len(HUB_PREFIX) :] if name.startswith(HUB_PREFIX) else name
    repo_id, _, revision = spec.partition("@")
    if repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise ValueError(f"{name!r}: expected hf-hub:<org>/<repo>[@<revision>]")
    return repo_id, revision or None


def _hub_download(repo_id: str, filename: str, revision: str | None, *, label: str, cache_dir: Any = None) -> str:
    from huggingface_hub.utils import EntryNotFoundError, LocalEntryNotFoundError

    try:
        return _hub_download_raw(repo_id, filename, revision, cache_dir=cache_dir)
    except LocalEntryNotFoundError as err:
        raise CheckpointError(
            f"{label}: {filename} is neither reachable on the Hub nor in the local cache ({err}). Check the "
            "network / HF_ENDPOINT, or unset HF_HUB_OFFLINE to download it"
        ) from err
    except EntryNotFoundError as err:
        raise CheckpointError(
            f"{label}: the repo has no {filename}; a lyadeq-zoo checkpoint holds {', '.join(CHECKPOINT_FILES)} "
            "(upload one with lz.push_to_hub)"
        ) from err


def _build_and_load(
    config_path: Path, weights_path: Path, overrides: Mapping[str, Any], *, label: str
) -> torch.nn.Module:
    from .factory import build_model

    info = read_checkpoint_config(config_path, source=f"{label}: {CONFIG_NAME}")
    config = info["config"]
    if overrides:
        config = dict(config, model=merge_configs(config["model"], dict(overrides)))
    try:
        model = build_model(config)
    except ConfigError as err:
        raise CheckpointError(f"{label}: {CONFIG_NAME} does not build a model with this lyadeq-zoo: {err}") from err
    load_weights(model, weights_path, source=f"{label}: {WEIGHTS_NAME}")
    # Checked after the structural checks so that those keep their specific messages.
    recorded = info.get("weights_sha256")
    if recorded is not None and sha256_file(weights_path) != recorded:
        raise ChecksumError(
            f"{label}: {WEIGHTS_NAME} has sha256 {sha256_file(weights_path)}, but {CONFIG_NAME} records "
            f"{recorded} (key 'weights_sha256'): the weights were modified or corrupted after saving. Re-save "
            "with lz.save_pretrained (or download again)"
        )
    return model.eval()


# -- pretrained registry ---------------------------------------------------------------------------------
def registry_path() -> Path:
    """The pretrained registry file in use (``$LYADEQ_ZOO_PRETRAINED`` or the shipped pretrained.json)."""
    override = os.environ.get(REGISTRY_ENV)
    return Path(override).expanduser() if override else REGISTRY_PATH


def read_registry(path: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Zoo name -> entry ``{hf_hub_id, revision, filename, sha256, local_path}`` (validated)."""
    path = Path(path) if path is not None else registry_path()
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8") or "{}")
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: expected an object mapping zoo names to entries")
    for name, entry in raw.items():
        where = f"{path}: entry {name!r}"
        if not isinstance(entry, dict):
            raise CheckpointError(f"{where} must be an object")
        unknown = set(entry) - {"hf_hub_id", "revision", "filename", "sha256", "local_path"}
        if unknown:
            raise CheckpointError(f"{where}: unknown key(s) {sorted(unknown)}")
        sha = entry.get("sha256")
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise CheckpointError(f"{where}: 'sha256' must be 64 lowercase hex digits, got {sha!r}")
        if not entry.get("hf_hub_id") and not entry.get("local_path"):
            raise CheckpointError(f"{where}: needs 'hf_hub_id' or 'local_path' (where the weights are)")
        entry.setdefault("filename", WEIGHTS_NAME)
    return raw


def has_pretrained(name: str) -> bool:
    """Whether zoo model ``name`` has an entry in the pretrained registry."""
    return name in read_registry()


def verify_sha256(path: str | Path, expected: str, *, source: str) -> None:
    """Raise ChecksumError when the file's sha256 is not ``expected``."""
    actual = sha256_file(path)
    if actual != expected:
        raise ChecksumError(
            f"{source}: sha256 is {actual}, but the pretrained registry records {expected}. The file is corrupt "
            f"or not the published one; refusing to load it. Delete {path} (for the Hub cache: "
            "`hf cache delete`) and try again, or update the registry with tools/publish.py"
        )


def _shipped_path(local_path: str) -> Path:
    path = Path(local_path).expanduser()
    return path if path.is_absolute() else REGISTRY_PATH.parent / path


def resolve_pretrained_file(name: str, *, cache_dir: str | Path | None = None) -> Path:
    """The verified weights file of zoo model ``name``: from the Hub (cached), else the shipped copy.

    The Hub download goes through ``hf_hub_download`` (cache, offline mode, endpoint, token as usual).
    When the Hub cannot be reached (or the entry has no Hub id), the copy under ``local_path`` is used,
    with a warning once per name. The sha256 of whichever file is used is checked.
    """
    from huggingface_hub.utils import EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled

    registry = read_registry()
    if name not in registry:
        listed = ", ".join(sorted(registry)) or "none yet"
        raise CheckpointError(
            f"no pretrained weights for {name!r} (registry {registry_path()}); with weights: {listed}"
        )
    entry = registry[name]
    filename = entry["filename"]
    hub_error: BaseException | None = None
    if entry.get("hf_hub_id"):
        source = f"hf-hub:{entry['hf_hub_id']}@{entry.get('revision') or 'main'}/{filename}"
        try:
            path = Path(_hub_download_raw(entry["hf_hub_id"], filename, entry.get("revision"), cache_dir=cache_dir))
        except (EntryNotFoundError, HfHubHTTPError, OfflineModeIsEnabled, OSError) as err:
            hub_error = err
        else:
            verify_sha256(path, entry["sha256"], source=source)
            return path
    if not entry.get("local_path"):
        raise CheckpointError(
            f"pretrained {name!r}: the Hub could not provide {filename} from {entry['hf_hub_id']} "
            f"({type(hub_error).__name__}: {hub_error}) and the registry lists no shipped copy"
        ) from hub_error
    local = _shipped_path(entry["local_path"]) / filename
    if not local.is_file():
        why = f"the Hub failed ({type(hub_error).__name__}: {hub_error}) and " if hub_error else ""
        raise CheckpointError(f"pretrained {name!r}: {why}the shipped copy {local} does not exist") from hub_error
    if hub_error is not None and name not in _warned_fallback:
        _warned_fallback.add(name)
        warnings.warn(
            f"pretrained {name!r}: could not get {filename} from the Hub ({type(hub_error).__name__}: "
            f"{str(hub_error).splitlines()[0] if str(hub_error) else ''}); using the copy shipped at {local}",
            stacklevel=3,
        )
    verify_sha256(local, entry["sha256"], source=str(local))
    return local


def _hub_download_raw(repo_id: str, filename: str, revision: str | None, *, cache_dir: Any = None) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(
        repo_id,
        filename,
        revision=revision,
        cache_dir=cache_dir,
        library_name=LIBRARY_NAME,
        library_version=__version__,
    )


def load_pretrained_weights(
    model: torch.nn.Module, name: str, *, cache_dir: str | Path | None = None
) -> torch.nn.Module:
    """Load the registry's verified weights of zoo model ``name`` into ``model`` (strict). Returns ``model``."""
    path = resolve_pretrained_file(name, cache_dir=cache_dir)
    return load_weights(model, path, source=f"pretrained {name!r} ({path})")


# -- publishing ------------------------------------------------------------------------------------------
def push_to_hub(
    model_or_dir: torch.nn.Module | str | Path,
    repo_id: str,
    *,
    api: HfApi | None = None,
    revision: str | None = None,
    private: bool = False,
    commit_message: str | None = None,
) -> CommitInfo:
    """Upload a checkpoint folder (or a model, saved first with ``save_pretrained``) to a Hub model repo.

    ``api`` is a ``huggingface_hub.HfApi`` (default: ``HfApi()``, which reads the usual token and
    ``HF_ENDPOINT``). The repo is created if needed (``exist_ok``), a ``revision`` other than ``main`` is
    created as a branch, and only the checkpoint files are uploaded. A folder is loaded strictly first,
    so a broken checkpoint is never published. Returns the commit info (``.oid`` is the commit hash).
    """
    import tempfile

    from huggingface_hub import HfApi

    api = api if api is not None else HfApi()
    message = commit_message or f"Upload lyadeq-zoo checkpoint to {repo_id}"
    if __version__ not in message:
        message += f" (lyadeq-zoo {__version__})"
    with tempfile.TemporaryDirectory(prefix="lyadeq_zoo_push_") as tmp:
        if isinstance(model_or_dir, torch.nn.Module):
            folder = save_pretrained(model_or_dir, Path(tmp) / "checkpoint", name=repo_id.split("/")[-1])
        else:
            folder = Path(model_or_dir).expanduser()
            load_model(f"{LOCAL_PREFIX}{folder}")  # strict check before anything leaves the machine
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision and revision != "main":
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        return api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            revision=revision,
            commit_message=message,
            allow_patterns=list(CHECKPOINT_FILES),
        )


__all__ = [
    "CHECKPOINT_FILES",
    "CheckpointError",
    "ChecksumError",
    "has_pretrained",
    "load_model",
    "load_pretrained_weights",
    "load_weights",
    "push_to_hub",
    "read_checkpoint_config",
    "read_registry",
    "resolve_pretrained_file",
    "save_pretrained",
    "sha256_file",
]
