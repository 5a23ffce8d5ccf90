"""The checkpoint folder layout: its file names, its format version, and the input spec that config.json records.

A checkpoint is a folder, the same locally and on the Hugging Face Hub:

``model.safetensors``  the ``state_dict`` only (safetensors: no pickle, nothing executable).
``config.json``        the resolved config the model was built from, the zoo version, data set, input
                       spec, measured metrics, epochs run and the sha256 of ``model.safetensors``.
``README.md``          the model card: Hub metadata header, metrics table, training command, citation.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from ..registry import get_component

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
CARD_NAME = "README.md"
CHECKPOINT_FILES = (WEIGHTS_NAME, CONFIG_NAME, CARD_NAME)
FORMAT_VERSION = 1  # layout of config.json; bumped when a reader of the old layout would misread it
LIBRARY_NAME = "lyadeq-zoo"


def input_spec(model_config: Mapping[str, Any]) -> dict[str, Any]:
    """What the model expects as input: images in [0, 1], ``in_chans`` channels of ``img_size`` pixels.

    The normalisation (``mean``, ``std``) is applied inside the model. Keys the config leaves out are taken
    from the architecture's constructor defaults; they stay None when the architecture is unknown.
    """
    defaults = _constructor_defaults(model_config.get("type"))

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


def _constructor_defaults(model_type: Any) -> dict[str, Any]:
    """Keyword defaults of the registered architecture ``model_type``; empty when unknown or unsignable."""
    try:
        parameters = inspect.signature(get_component("model", model_type)).parameters
    except (KeyError, TypeError, ValueError):  # unknown type or no signature: record what the config says
        return {}
    return {key: param.default for key, param in parameters.items() if param.default is not inspect.Parameter.empty}
