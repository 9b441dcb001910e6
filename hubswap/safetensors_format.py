"""The safetensors file format, in one place: dtypes and their decoding, header limits, reading a header.

A safetensors file is an 8-byte little-endian header length, a JSON header (each tensor's dtype,
shape and ``data_offsets`` relative to the data section; an optional ``__metadata__``), then the
tensor data. Written by hand because the safetensors library exposes tensors, not their byte
offsets, and the merge and the analysis read and copy raw byte ranges without building tensors.
Preflight (local and over the Hub's ranged reads), the swap, the analysis and the benchmark all
read headers through this module.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Iterable
from pathlib import Path

from hubswap.errors import ModelFilesError

# The largest header hubswap accepts (the safetensors library's own limit is 100 MB too).
MAX_HEADER = 100 << 20
# The dtypes hubswap reads or writes, in one table: safetensors name -> (bytes per element, the
# numpy dtype of its bytes, its torch / config.json name for floats). bfloat16 has no numpy dtype:
# its bits are held as uint16 and converted to and from float32 below.
DTYPES = {
    "F64": (8, "<f8", "float64"), "F32": (4, "<f4", "float32"), "F16": (2, "<f2", "float16"),
    "BF16": (2, "<u2", "bfloat16"), "I64": (8, "<i8", None), "I32": (4, "<i4", None),
    "I16": (2, "<i2", None), "I8": (1, "i1", None), "U8": (1, "u1", None), "BOOL": (1, "?", None),
}
DTYPE_SIZE = {name: size for name, (size, _, _) in DTYPES.items()}
# Floating-point dtypes (those a merge may blend or cast), by their torch / config.json name.
FLOAT_DTYPES = {torch: name for name, (_, _, torch) in DTYPES.items() if torch is not None}
FLOATS = frozenset(FLOAT_DTYPES.values())
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


def parse_header(head: bytes, *, where: str, file_size: int | None = None) -> dict:
    """Decode and check a safetensors header from a file's first bytes (8-byte length + JSON).

    Returns ``{DATA_START: offset, name: {"dtype", "shape", "data_offsets"}, ...}`` without
    ``__metadata__``. ``file_size`` (the size on disk, or the Hub's LFS record) lets
    :func:`check_header` check that the data fills the file exactly.
    """
    n = header_length(head, where=where)
    if len(head) < 8 + n or (file_size is not None and 8 + n > file_size):
        raise ModelFilesError(f"{where}: corrupt safetensors header (length {n}"
                              + (f", file size {file_size})" if file_size is not None else ")"))
    try:
        header = json.loads(head[8 : 8 + n])
    except ValueError as e:
        raise ModelFilesError(f"{where}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ModelFilesError(f"{where}: corrupt safetensors header (not a JSON object)")
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise ModelFilesError(f"{where}: corrupt safetensors header (__metadata__ is not a map of strings)")
    check_header(header, data_start=8 + n, file_size=file_size, where=where)
    return {DATA_START: 8 + n, **header}


def read_header_file(path: Path) -> dict:
    """The checked header of a safetensors file on disk (reads only the header's bytes)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        if len(head) == 8:
            (n,) = struct.unpack("<Q", head)
            head += f.read(min(n, MAX_HEADER + 1))
    return parse_header(head, where=str(path), file_size=size)


# Bits per element of every dtype the safetensors format defines (safetensors 0.6+), so that a
# header is checked as the library checks it, including dtypes hubswap itself never writes.
FORMAT_DTYPE_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F4": 4,
                     "F6_E2M3": 6, "F6_E3M2": 6, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32,
                     "U32": 32, "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64}


def check_header(header: dict, *, data_start: int, file_size: int | None, where: str) -> None:
    """Refuse a header the safetensors library would refuse, naming the file, tensor and problem.

    Checked as ``safetensors`` does when it opens a file (its ``Metadata::validate``): each entry
    has a known dtype, a shape of non-negative integers and ``data_offsets`` [begin, end] whose
    length is the shape's element count times the dtype's size; sorted by offset the ranges start
    at 0, follow each other with no gap and no overlap; and, when the file's size is known, the
    last one ends exactly at the end of the file. Done by hand because the library checks only
    when it maps the whole file, and preflight reads the header alone (over the Hub: 2 ranged GETs).
    """
    def bad(problem: str) -> ModelFilesError:
        return ModelFilesError(f"{where}: corrupt safetensors file ({problem})",
                               hint="the file is damaged or was not fully written: download or save it again")

    ranges: list[tuple[int, int, str]] = []
    for name, meta in header.items():
        if not isinstance(meta, dict):
            raise bad(f"entry {name!r} is not a tensor description")
        dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
        if dtype not in FORMAT_DTYPE_BITS:
            raise bad(f"tensor {name}: unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise bad(f"tensor {name}: shape {shape!r} is not a list of non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int and o >= 0 for o in offsets)):
            raise bad(f"tensor {name}: data_offsets {offsets!r} are not two non-negative integers")
        begin, end = offsets
        if end < begin:
            raise bad(f"tensor {name}: data_offsets [{begin}, {end}] end before they begin")
        bits = math.prod(shape) * FORMAT_DTYPE_BITS[dtype]
        if bits % 8 or bits // 8 != end - begin:
            raise bad(f"tensor {name}: {dtype} {shape} is {bits / 8:g} bytes but data_offsets "
                      f"[{begin}, {end}] hold {end - begin}")
        if file_size is not None and data_start + end > file_size:
            raise bad(f"tensor {name}: its data ends at byte {data_start + end}, past the end of the file "
                      f"({file_size} bytes): truncated or a wrong offset")
        ranges.append((begin, end, name))
    ranges.sort()
    pos, prev = 0, None
    for begin, end, name in ranges:
        if begin < pos:
            raise bad(f"tensors {prev} and {name} overlap (bytes {begin}-{pos} of the data)")
        if begin > pos:
            raise bad(f"a gap of {begin - pos} bytes before tensor {name} (data_offsets start at {begin}, "
                      f"expected {pos})")
        pos, prev = end, name
    if file_size is not None and data_start + pos != file_size:
        if data_start + pos > file_size:
            raise bad(f"truncated: the header needs {data_start + pos} bytes, the file has {file_size}")
        raise bad(f"{file_size - data_start - pos} bytes after the last tensor's data "
                  f"(the header describes {data_start + pos} bytes, the file has {file_size})")


def encode_header(tensors: Iterable[tuple[str, str, tuple[int, ...], int]],
                  align: tuple[int, int] | None = None) -> bytes:
    """The header bytes (length + JSON) of a file holding ``(name, dtype, shape, nbytes)`` tensors
    back to back in that order, padded with spaces so that the tensor data stays 8-byte aligned;
    with ``align=(residue, block)``, so that the data starts at ``residue`` modulo ``block``
    (``residue`` a multiple of 8: a merge aligns its clones this way, hubswap.clone)."""
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape, nbytes in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    if align is None:
        raw += b" " * (-len(raw) % 8)
    else:
        residue, block = align
        if residue % 8 or block % 8:
            raise ValueError(f"tensor data must stay 8-byte aligned: residue {residue} modulo {block}")
        raw += b" " * ((residue - 8 - len(raw)) % block)
    return len(raw).to_bytes(8, "little") + raw


def numpy_dtype(dtype: str):
    """numpy's dtype for the bytes of a safetensors ``dtype`` (bfloat16: its bits, as uint16)."""
    import numpy as np

    return np.dtype(DTYPES[dtype][1])


# bfloat16 is float32's upper half, so both conversions are integer arithmetic on the bits, written
# here in numpy rather than taken from ml_dtypes: ml_dtypes 0.7 takes 0.6 s of CPU to import (0.6
# took 0.01 s), more than a cloned merge's own work, and converts 2-3x slower than these passes,
# which match 0.6's speed (bench/bf16.py, docs/PERFORMANCE.md). Both are bit for bit torch's
# (tests/test_swap.py::test_bfloat16_conversion_matches_torch_bit_for_bit).


def to_float32(raw, dtype: str, out=None):
    """float32 values of a raw little-endian buffer of ``dtype``, into ``out`` when given (no other
    allocation). Exact for BF16, F16 and F32; F64 rounds to nearest. Every decoder of tensor values
    (the merge, the analysis, preflight's token rows) goes through here."""
    import numpy as np

    src = np.frombuffer(raw, dtype=numpy_dtype(dtype))
    if out is None:
        out = np.empty(len(src), np.float32)
    if dtype == "BF16":  # the 16 bits on top of a float32 whose lower 16 are zero
        bits = out.view(np.uint32)
        np.copyto(bits, src)
        np.left_shift(bits, 16, out=bits)
    else:
        np.copyto(out, src, casting="unsafe")
    return out


def from_float32(x, dtype: str, out=None, *, scratch=None):
    """``x`` cast to ``dtype`` (into ``out``, a buffer of ``x``'s length, when given; bfloat16 as
    its uint16 bits, computed in ``scratch``, a uint32 array of ``x``'s length other than ``x``).

    Round to nearest even as torch does; out-of-range values become inf, NaN stays NaN."""
    import numpy as np

    if out is None:
        out = np.empty(len(x), numpy_dtype(dtype))
    if dtype != "BF16":
        with np.errstate(over="ignore"):
            np.copyto(out, x, casting="unsafe")
        return out
    bits = x.view(np.uint32)
    nan = np.isnan(x)
    # NaN keeps its sign and top payload bits, made quiet (rounding could carry it into inf or -0)
    nans = ((bits[nan] >> 16) | 0x0040).astype(np.uint16) if nan.any() else None
    r = np.empty(len(x), np.uint32) if scratch is None else scratch
    np.right_shift(bits, 16, out=r)  # r = bits + 0x7FFF + (bit 16 of bits): ties go to even
    np.bitwise_and(r, 1, out=r)
    r += 0x7FFF
    r += bits  # a carry out of the mantissa is the next exponent: rounds up, max finite to inf
    np.right_shift(r, 16, out=r)
    np.copyto(out, r, casting="unsafe")
    if nans is not None:
        out[nan] = nans
    return out
