"""lyadeq-zoo: Lyapunov-stable Deep Equilibrium models, their components, and honest robustness evaluation.

>>> import lyadeq_zoo as lz
>>> model = lz.create_model("lyadeq_mnist")
>>> lz.list_components("solver")
['anderson', 'broyden', 'naive']
"""

from .attacks import create_attack
from .config import load_config, merge_configs, register_section
from .errors import (
    AttackNotApplicable,
    CheckpointError,
    ChecksumError,
    ConfigError,
    DataFormatError,
    LyadeqZooError,
    PluginLoadError,
    UnknownComponentError,
)
from .evaluation import evaluate
from .factory import build_model, configs_dir, create_model, list_models, register_zoo_configs, zoo_config
from .hub import save_pretrained
from .publishing import push_to_hub
from .registry import (
    KINDS,
    Registry,
    build_component,
    get_component,
    list_components,
    register,
    register_attack,
    register_backbone,
    register_backward,
    register_cell,
    register_dataset,
    register_head,
    register_lyapunov,
    register_model,
    register_objective,
    register_solver,
)
from .stability import stability_report
from .version import __version__

# Built-in components register themselves on import.
from . import _builtins  # noqa: E402,F401  isort: skip

register_zoo_configs()

# Zoo models join timm's registry once timm is imported (lyadeq_zoo itself never imports timm).
from . import timm_interop  # noqa: E402,F401  isort: skip

__all__ = [
    "KINDS",
    "AttackNotApplicable",
    "CheckpointError",
    "ChecksumError",
    "ConfigError",
    "DataFormatError",
    "LyadeqZooError",
    "PluginLoadError",
    "Registry",
    "UnknownComponentError",
    "__version__",
    "build_component",
    "build_model",
    "configs_dir",
    "create_attack",
    "create_model",
    "evaluate",
    "get_component",
    "list_components",
    "list_models",
    "load_config",
    "merge_configs",
    "push_to_hub",
    "register",
    "register_attack",
    "register_backbone",
    "register_backward",
    "register_cell",
    "register_dataset",
    "register_head",
    "register_lyapunov",
    "register_model",
    "register_objective",
    "register_section",
    "register_solver",
    "save_pretrained",
    "stability_report",
    "zoo_config",
]
