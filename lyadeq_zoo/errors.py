"""The library's exceptions: one hierarchy under :class:`LyadeqZooError`, and the one "unknown name" message.

Each class also derives from the built-in exception that callers caught before the hierarchy existed
(``KeyError`` for an unknown name, ``ValueError`` for a bad config or file, ...), so ``except ValueError``
keeps working.

================================ ===========================================================================
class                            raised when
================================ ===========================================================================
``ConfigError``                  a config value, key or file is wrong (the message names the key path)
``UnknownComponentError``        a component, kind, suite or option name is not registered
``PluginLoadError``              a plugin's entry point fails to import (``__cause__`` is the original error)
``CheckpointError``              a checkpoint / pretrained folder is missing, corrupt or of another model
``ChecksumError``                a weights file's sha256 differs from the pretrained index
``DataFormatError``              a data file is not what its reader expects
``AttackNotApplicable``          an attack cannot run on this model (e.g. no DEQ layer to unroll)
``MissingDependencyError``       an optional extra a component needs is not installed (names the pip command)
``InputError``                   images or labels given to a model, attack or evaluation have a wrong shape or
                                 values (outside [0, 1], NaN/inf, labels out of range); see :mod:`.inputs`
``InputTypeError``               ... or a wrong type (uint8 / integer images, a numpy array, float labels)
``NonFiniteError``               training met a NaN / inf loss, gradient or checkpoint tensor (names which)
``OutputWriteError``             a run cannot write into its output folder (disk full, read-only ...)
================================ ===========================================================================
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class LyadeqZooError(Exception):
    """Base class of every error the library raises on purpose."""


class ConfigError(LyadeqZooError, ValueError):
    """A config (file, override or dict) is invalid; the message names the key path and where it came from."""


class UnknownComponentError(LyadeqZooError, KeyError):
    """A name (or kind) that is not registered. The message lists what is, and the closest match."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable.
        return str(self.args[0])


class PluginLoadError(LyadeqZooError, ImportError):
    """A plugin's entry point could not be loaded; ``__cause__`` holds the original exception."""


class CheckpointError(LyadeqZooError, ValueError, RuntimeError):
    """A checkpoint or pretrained folder is missing, unreadable, corrupt, or holds another model's weights."""


class ChecksumError(CheckpointError):
    """A downloaded or shipped weights file does not have the sha256 its pretrained-index entry records."""


class DataFormatError(LyadeqZooError, ValueError):
    """A data file (IDX, ``.npy.xz``, sample manifest) does not have the expected format or content."""


class MissingDependencyError(LyadeqZooError, ModuleNotFoundError):
    """An optional extra that a component needs is not installed; the message names the install command."""


class AttackNotApplicable(LyadeqZooError, ValueError):
    """The attack cannot be run on this model as configured (the message says why)."""


class InputError(LyadeqZooError, ValueError):
    """Images or labels with a wrong shape or wrong values; the message says what was expected, what was found
    and the likely fix."""


class InputTypeError(InputError, TypeError):
    """Images or labels of a wrong type or dtype (uint8 images, a numpy array, float labels); also a ``TypeError``,
    and an :class:`InputError` so that ``except InputError`` catches every rejected input."""


def closest_match(name: str, candidates: Iterable[str]) -> str | None:
    """The most similar candidate to ``name`` (difflib ratio >= 0.5, else a substring match), or None."""
    candidates = list(candidates)
    found = difflib.get_close_matches(name, candidates, n=1, cutoff=0.5)
    if found:
        return found[0]
    lowered = name.lower()
    for candidate in candidates:  # substring match catches e.g. "anders" -> "anderson"
        if lowered in candidate.lower() or candidate.lower() in lowered:
            return candidate
    return None


def unknown_name_message(what: str, name: str, known: Iterable[str], *, listing_label: str = "Registered") -> str:
    """``unknown {what} {name!r}. Registered: a, b, c. Did you mean 'b'?`` (the closest match, if any)."""
    known = list(known)
    listing = ", ".join(known) if known else "(none registered)"
    message = f"unknown {what} {name!r}. {listing_label}: {listing}."
    hint = closest_match(str(name), known)
    if hint is not None:
        message += f" Did you mean {hint!r}?"
    return message


class NonFiniteError(LyadeqZooError, FloatingPointError):
    """A training loss, gradient or checkpoint tensor is NaN or infinite; the message names the step and the
    quantity (the loss, or which parameter's gradient / which tensor)."""


class OutputWriteError(LyadeqZooError, OSError):
    """A training run cannot write into its output folder (disk full, read-only, not a folder); the message
    names the folder and the OS error. ``__cause__`` holds the original :class:`OSError`."""
