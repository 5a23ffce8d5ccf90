"""Hugging Face style checkpoint methods for architectures: ``model.save_pretrained(dir)``,
``model.push_to_hub(repo_id)`` and ``Arch.from_pretrained(repo_or_dir)``.

The names and arguments follow huggingface_hub's ``PyTorchModelHubMixin`` where they mean the same thing
(``save_directory``, ``commit_message``, ``private``, ``branch``, ``token``, ``revision``), but the work is
done by lyadeq-zoo's own strict loaders and savers: safetensors only (never a pickle), every tensor must fit
the architecture (never ``strict=False``), and the sha256 that ``config.json`` records is checked. That is
why this does not subclass ``PyTorchModelHubMixin``: it loads non-strictly by default and falls back to
``pytorch_model.bin`` (a pickle).

Layering: this module sits above :mod:`lyadeq_zoo.factory`, :mod:`lyadeq_zoo.hub` and
:mod:`lyadeq_zoo.publishing`, none of which imports an architecture module (they reach architectures
through the registry), so an architecture class such as ``DEQClassifier`` can inherit :class:`HubMixin`
without an import cycle.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from torch import nn

from .errors import CheckpointError
from .factory import create_model, list_models
from .hub import CONFIG_NAME, HUB_PREFIX, LOCAL_PREFIX, is_checkpoint_name, save_pretrained
from .publishing import push_to_hub

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo, HfApi

ModelT = TypeVar("ModelT", bound="HubMixin")

# A bare Hub model id, ``org/repo`` with an optional ``@revision`` (no leading ``.``, ``/`` or ``~``: paths).
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?")
ACCEPTED_FORMS = (
    "a folder written by save_pretrained, local-dir:PATH, hf-hub:org/repo[@revision], a Hub id org/repo[@revision], "
    "or a zoo name (lz.list_models(pretrained=True))"
)


class HubMixin:
    """``save_pretrained`` / ``push_to_hub`` / ``from_pretrained`` for a model built by the zoo's factory.

    The instance methods need ``self.config`` (the resolved config dict), which ``lz.build_model`` and
    ``lz.create_model`` set.
    """

    def save_pretrained(self, save_directory: str | Path, **card: Any) -> Path:
        """Write the model as a checkpoint folder (``model.safetensors``, ``config.json``, ``README.md``).

        Same as ``lz.save_pretrained(model, save_directory, **card)``; ``card`` takes its keyword arguments
        (``metrics``, ``dataset``, ``train_command``, ``epochs``, ``name``). Returns the folder's path (where
        huggingface_hub's mixin returns None).
        """
        if not isinstance(self, nn.Module):
            raise TypeError(f"HubMixin is for torch.nn.Module classes, not {type(self).__name__}")
        return save_pretrained(self, save_directory, **card)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        private: bool = False,
        branch: str | None = None,
        token: str | None = None,
        api: HfApi | None = None,
    ) -> CommitInfo:
        """Save the model and upload the checkpoint files to the Hub model repo ``repo_id`` (created if needed).

        ``branch``: the branch to commit to (created when it is not ``main``); ``token``: a Hub token (default:
        the usual login / ``HF_TOKEN``); ``api``: an ``HfApi`` to use instead (e.g. another endpoint). Same as
        ``lz.push_to_hub(model, repo_id, revision=branch, ...)``. Returns the commit info, a ``str`` holding
        the commit URL as in huggingface_hub (``.oid`` is the commit hash).
        """
        if not isinstance(self, nn.Module):
            raise TypeError(f"HubMixin is for torch.nn.Module classes, not {type(self).__name__}")
        if api is not None and token is not None:
            raise ValueError("pass token or api, not both (an HfApi carries its own token)")
        if api is None and token is not None:
            from huggingface_hub import HfApi

            api = HfApi(token=token)
        return push_to_hub(
            self, repo_id, api=api, revision=branch, private=private, commit_message=commit_message
        )

    @classmethod
    def from_pretrained(
        cls: type[ModelT], pretrained_model_name_or_path: str | Path, *, revision: str | None = None, **overrides: Any
    ) -> ModelT:
        """The model a checkpoint names, loaded strictly, in eval mode.

        ``pretrained_model_name_or_path``: a folder written by ``save_pretrained``; ``local-dir:PATH``;
        ``hf-hub:org/repo[@revision]``; a bare Hub id ``org/repo[@revision]``; or a zoo name (its published
        weights). ``revision`` (a branch, tag or commit) applies to Hub ids only. ``overrides`` merge into the
        model config as in ``lz.create_model`` (``num_classes`` / ``in_chans`` adapt the loaded model: the
        classifier is reset, the first layer adapted).

        Raises CheckpointError when the name is none of these forms, or when the checkpoint builds another
        architecture than ``cls``.
        """
        spec = str(pretrained_model_name_or_path)
        name = _checkpoint_name(spec, revision)
        if name in list_models():
            model = create_model(name, pretrained=True, **overrides)
        else:
            model = create_model(name, **overrides)
        if not isinstance(model, cls):
            raise CheckpointError(
                f"{spec} holds a {type(model).__name__}, not a {cls.__name__}; load it with "
                f"lz.create_model({name!r})"
            )
        return model.eval()


def _checkpoint_name(spec: str, revision: str | None) -> str:
    """``spec`` (any form :meth:`HubMixin.from_pretrained` accepts) as a zoo name or a checkpoint name."""
    if is_checkpoint_name(spec):
        name = spec
    else:
        folder = Path(spec).expanduser()
        if folder.is_dir() and ((folder / CONFIG_NAME).is_file() or spec not in list_models()):
            name = f"{LOCAL_PREFIX}{folder}"
        elif spec in list_models():
            name = spec
        elif HUB_ID.fullmatch(spec):
            name = f"{HUB_PREFIX}{spec}"
        else:
            raise CheckpointError(f"{spec!r} is not a folder, a Hub id or a zoo name; expected {ACCEPTED_FORMS}")
    if revision is None:
        return name
    if not name.startswith(HUB_PREFIX):
        raise CheckpointError(f"revision={revision!r} applies to Hub ids only, and {spec!r} is not one")
    if "@" in name:
        raise CheckpointError(f"{spec!r} already names a revision; pass it once (in the name or as revision=)")
    return f"{name}@{revision}"
