"""The lent GPU machine's transfer limits, and byte sizes written the way people write them (``60MiB``).

A call to the device machine sends the working tree (tracked and untracked-not-ignored files) plus the carried
paths, at most :data:`TRAVEL_LIMIT` bytes together, and brings back at most :data:`OUT_FILES` files from
``$OUT``, each at most :data:`OUT_FILE_LIMIT` bytes and :data:`OUT_TOTAL_LIMIT` together, no deeper than two
folders. The defaults below are those limits; every function takes its own numbers, so the tests run with tiny ones.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import ConfigError

MIB = 1 << 20
TRAVEL_LIMIT = 64 * MIB  # what may travel in one call: tree + carried paths
DEFAULT_CALL_LIMIT = 60 * MIB  # what a plan fills one call with (tree + one batch): 4 MiB left for the tree to grow
OUT_FILES = 8
OUT_FILE_LIMIT = 16 * MIB
OUT_TOTAL_LIMIT = 64 * MIB
# File names $OUT may hold: letters, digits, '.', '_' and '-' alone.
OUT_NAME = re.compile(r"^[A-Za-z0-9._-]+$")

_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
          "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


@dataclass(frozen=True)
class OutLimits:
    """What one call brings back from ``$OUT``: ``files`` files, each at most ``file_bytes``, ``total_bytes``
    together."""

    files: int = OUT_FILES
    file_bytes: int = OUT_FILE_LIMIT
    total_bytes: int = OUT_TOTAL_LIMIT

    def __post_init__(self) -> None:
        if self.files < 2 or self.file_bytes < 1 or self.total_bytes < self.file_bytes:
            raise ConfigError(
                f"out limits need >= 2 files (one is the summary), a positive file size and a total >= one file; "
                f"got files={self.files}, file_bytes={self.file_bytes}, total_bytes={self.total_bytes}"
            )


def parse_size(text: str | int) -> int:
    """Bytes of ``"60MiB"``, ``"46 MiB"``, ``"500k"``, ``"1234"`` (decimal units k/M/G, binary KiB/MiB/GiB)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).lower() not in _UNITS:
        raise ConfigError(f"size {text!r} is not a number of bytes with an optional unit (e.g. 60MiB, 500k, 1234)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_size(n: int) -> str:
    """``n`` bytes as ``"45.9 MiB"`` (binary units, one decimal) or ``"512 B"``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"
