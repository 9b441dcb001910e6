"""The safetensors file format, in one place: dtype sizes, header limits, reading a header.

A safetensors file is an 8-byte little-endian header length, a JSON header (each tensor's dtype,
shape and ``data_offsets`` relative to the data section; an optional ``__metadata__``), then the
tensor data. Written by hand because the safetensors library exposes tensors, not their byte
offsets, and the merge and the analysis read and copy raw byte ranges without building tensors.
Preflight (local and over the Hub's ranged reads), the swap, the analysis and the benchmark all
read headers through this module.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable
from pathlib import Path

from hubswap.errors import ModelFilesError

# The largest header hubswap accepts (the safetensors library's own limit is 100 MB too).
MAX_HEADER = 100 << 20
# Bytes per element of each safetensors dtype hubswap reads or writes.
DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
# The numpy dtype holding each one's raw bits (bfloat16 has none: its 16 bits, widened by hand).
NUMPY_DTYPE = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
               "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}
# A parsed header carries the absolute offset of the data section under this key.
DATA_START = "__data_start__"


def header_length(first8: bytes, *, where: str) -> int:
    """The header length announced by a file's first 8 bytes; refuses short or oversized ones."""
    if len(first8) < 8:
        raise ModelFilesError(f"{where}: not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", first8[:8])
    if n > MAX_HEADER:
        raise ModelFilesError(f"{where}: corrupt safetensors header (length {n})")
    return n


def parse_header(head: bytes, *, where: str) -> dict:
    """Decode a safetensors header from a file's first bytes (8-byte length + JSON).

    Returns ``{DATA_START: offset, name: {"dtype", "shape", "data_offsets"}, ...}`` without
    ``__metadata__``.
    """
    n = header_length(head, where=where)
    if len(head) < 8 + n:
        raise ModelFilesError(f"{where}: corrupt safetensors header (length {n})")
    try:
        header = json.loads(head[8 : 8 + n])
    except ValueError as e:
        raise ModelFilesError(f"{where}: corrupt safetensors header ({e})") from None
    header.pop("__metadata__", None)
    return {DATA_START: 8 + n, **header}


def read_header_file(path: Path) -> dict:
    """The parsed header of a safetensors file on disk (reads only the header's bytes)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) == 8:
            (n,) = struct.unpack("<Q", head)
            head += f.read(min(n, MAX_HEADER + 1))
    return parse_header(head, where=str(path))


def encode_header(tensors: Iterable[tuple[str, str, tuple[int, ...], int]]) -> bytes:
    """The header bytes (length + JSON) of a file holding ``(name, dtype, shape, nbytes)`` tensors
    back to back in that order, padded so that the tensor data stays 8-byte aligned."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, nbytes in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw
