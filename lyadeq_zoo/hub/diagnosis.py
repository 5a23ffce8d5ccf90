"""Why a weights file is not a readable safetensors file, told from its bytes without deserialising it.

safetensors' own errors ("header too large") do not say what the file is. :func:`explain_unreadable_weights`
reads the first bytes and tells apart: another format (a PyTorch pickle or zip archive, NumPy, HDF5,
compressed data, text, an HTML page, a Git LFS pointer, an empty file), a truncated safetensors file (naming
the first tensor that is cut off) and a corrupt one. The only thing ever parsed is a safetensors JSON header;
a pickle is recognised by its first bytes and never opened.

A safetensors file is an 8-byte little-endian header length ``n``, ``n`` bytes of JSON (``{"name": {"dtype",
"shape", "data_offsets": [begin, end]}, ...}``, offsets relative to the data) and the tensor data.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

SNIFF_BYTES = 4096  # enough for every signature below and a zip's first member name
MAX_HEADER_BYTES = 100_000_000  # safetensors refuses longer JSON headers

# safetensors dtype name -> bytes per element
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip

# torch.save's legacy (non-zip) format pickles this number first: protocol 2 opcode LONG1, 10 bytes.
_TORCH_LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
_PICKLE_PROTOCOLS = (b"\x02", b"\x03", b"\x04", b"\x05")

# First bytes -> what the file is, for binary formats that hold no pickle.
_SIGNATURES = (
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file (e.g. Keras .h5 weights)"),
    (b"\x1f\x8b", "gzip-compressed data (decompress it first if it holds the safetensors file)"),
    (b"\xfd7zXZ\x00", "xz-compressed data (decompress it first if it holds the safetensors file)"),
)

NOT_UNPICKLED = (
    "It was NOT loaded: lyadeq-zoo reads weights only from safetensors and never unpickles a file "
    "(unpickling can run arbitrary code)."
)
CONVERT_PICKLE = (
    "If it comes from a source you trust, load its state_dict with PyTorch (weights_only=True) and convert it: "
    "`safetensors.torch.save_file(state_dict, path)` (or build the model and write a checkpoint with "
    "lz.save_pretrained)."
)
CONVERT_OTHER = (
    "Convert the weights where they were made, from a trusted source: `safetensors.torch.save_file(state_dict, "
    "path)` (or build the model and write a checkpoint with lz.save_pretrained)."
)


def explain_unreadable_weights(path: str | Path, *, refetch: str, reader_error: str = "") -> str:
    """What is wrong with ``path``, a file safetensors could not open, and the fix: one or more sentences.

    ``refetch`` says how to get an intact copy (for truncated, corrupt, empty or unrecognised files);
    ``reader_error`` is safetensors' own message, quoted when nothing more specific is found.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(SNIFF_BYTES)
    header_len = int.from_bytes(head[:8], "little") if len(head) >= 8 else 0
    if 0 < header_len <= MAX_HEADER_BYTES and head[8:9] == b"{":
        return _explain_safetensors(path, size, header_len, refetch, reader_error)
    return _explain_other_format(head, size, refetch)


def _explain_other_format(head: bytes, size: int, refetch: str) -> str:
    """The message for a file whose first bytes are not a safetensors header."""
    if size == 0:
        return f"not a safetensors file: it is empty (0 bytes), as an interrupted download or copy leaves. {refetch}"
    if head[:1] == b"\x80" and head[1:2] in _PICKLE_PROTOCOLS:
        legacy = head[2 : 2 + len(_TORCH_LEGACY_MAGIC)] == _TORCH_LEGACY_MAGIC
        kind = "a PyTorch pickle (torch.save's legacy format)" if legacy else "a Python pickle"
        return f"not a safetensors file: it is {kind}. {NOT_UNPICKLED} {CONVERT_PICKLE}"
    if head[:4] == b"PK\x03\x04":
        first_member = head[30 : 30 + int.from_bytes(head[26:28], "little")].decode("utf-8", "replace")
        if first_member.endswith("data.pkl"):
            kind = f"a PyTorch zip archive (torch.save's format: a zip holding a pickle, {first_member})"
        else:
            kind = f"a zip archive (first member {first_member!r})"
        return f"not a safetensors file: it is {kind}. {NOT_UNPICKLED} {CONVERT_PICKLE}"
    for signature, kind in _SIGNATURES:
        if head.startswith(signature):
            return f"not a safetensors file: it is {kind}. It was NOT loaded. {CONVERT_OTHER}"
    text = _as_text(head)
    if text is not None:
        return f"not a safetensors file: {_describe_text(text, refetch)}"
    return (
        f"not a safetensors file, nor a format lyadeq-zoo recognises (first bytes {head[:8].hex(' ')}): it is "
        f"corrupt or of another format. {refetch}"
    )


def _as_text(head: bytes) -> str | None:
    """``head`` as text when it is printable UTF-8 (a multi-byte character cut at the end is allowed)."""
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as err:
        if err.start < len(head) - 3:
            return None
        text = head[: err.start].decode("utf-8")
    return text if all(c.isprintable() or c in "\t\r\n" for c in text) else None


def _describe_text(text: str, refetch: str) -> str:
    start = text.lstrip().lower()
    if text.startswith("version https://git-lfs.github.com/spec/"):
        return (
            "it is a Git LFS pointer (a small text file standing in for the weights, which were not fetched). "
            "Fetch the real file with `git lfs pull` (or download it again)."
        )
    if start.startswith(("<!doctype html", "<html")):
        return (
            "it is an HTML page, e.g. an error or login page saved in place of the download (check the URL "
            f"and the access token). {refetch}"
        )
    return f"it is text, starting {text[:60]!r}. {refetch}"


def _explain_safetensors(path: Path, size: int, header_len: int, refetch: str, reader_error: str) -> str:
    """The message for a file that starts like safetensors but does not open: truncated or corrupt."""
    if 8 + header_len > size:
        return (
            f"truncated safetensors file: its JSON header is {header_len} bytes long, but the file ends after "
            f"{size} bytes, inside the header. {refetch}"
        )
    with open(path, "rb") as f:
        f.seek(8)
        raw = f.read(header_len)
    try:
        spans = _tensor_spans(json.loads(raw))
    except (UnicodeDecodeError, ValueError) as err:  # json.JSONDecodeError is a ValueError
        return f"corrupt safetensors file: its JSON header is malformed ({err}). {refetch}"
    data_size = size - 8 - header_len
    laid_out = max((end for _, _, end in spans), default=0)
    cut = [name for name, _, end in sorted(spans, key=lambda span: span[1]) if end > data_size]
    if cut:
        later = f"; {len(cut) - 1} later tensor(s) are missing altogether" if len(cut) > 1 else ""
        return (
            f"truncated safetensors file: {size} bytes, but its header lays out {8 + header_len + laid_out} "
            f"bytes; tensor {cut[0]!r} is cut off{later}. {refetch}"
        )
    if data_size > laid_out:
        return (
            f"corrupt safetensors file: {data_size - laid_out} bytes follow the last tensor its header lays out "
            f"(data appended to the file?). {refetch}"
        )
    quoted = f" (safetensors: {reader_error})" if reader_error else ""
    return f"corrupt safetensors file{quoted}. {refetch}"


def _tensor_spans(header: Any) -> list[tuple[str, int, int]]:
    """``(name, begin, end)`` of every tensor in a parsed safetensors header; ValueError naming a bad entry."""
    if not isinstance(header, dict):
        raise ValueError(f"expected a JSON object, got {type(header).__name__}")
    spans = []
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (begin, end) = spec["dtype"], spec["shape"], spec["data_offsets"]
            nbytes, span = math.prod(shape) * DTYPE_BYTES[dtype], end - begin
        except (TypeError, KeyError, ValueError) as err:
            raise ValueError(f"tensor {name!r} has no valid dtype, shape and data_offsets: {spec!r}") from err
        if span != nbytes:
            raise ValueError(
                f"tensor {name!r} ({dtype}, shape {shape}) needs {nbytes} bytes, its data_offsets span {span}"
            )
        spans.append((name, begin, end))
    return spans
