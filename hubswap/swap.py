"""The streaming layer swap: experts' safetensors shards in, merged sharded safetensors out.

A layer swap mostly moves bytes. Tensors taken whole in their own dtype are copied as raw byte
ranges with ``os.copy_file_range`` (in the kernel, no tensor is built). Blends and dtype changes
are computed on flat slices of ``SLICE_ELEMENTS`` values (less than ``CHUNK_BYTES`` per operand),
so peak memory is bounded by the slice size, not by the largest tensor or the model. Output headers are computed up front
from the sources' headers, so every output tensor is written exactly once at its final offset.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from hubswap.compat import SIDE_FILES, TensorInfo
from hubswap.layermap import LayerMap

log = logging.getLogger(__name__)

CHUNK_BYTES = 16 << 20
# Blends and casts go through float32 slices of 1 MiB, which stay in the CPU cache across the passes
# numpy makes over them: 3x faster than 16 MiB slices, bit for bit the same result.
SLICE_ELEMENTS = 256 << 10
# safetensors dtype names and their sizes in bytes.
DTYPE_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}
_NAMES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
_TORCH = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64"}


def safetensors_dtype(dtype: str) -> str:
    return _NAMES[dtype]


def parse_size(size: str | int) -> int:
    """``"5GB"`` -> 5_000_000_000 (decimal units, like transformers' ``max_shard_size``)."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*", size, re.IGNORECASE)
    if not m:
        raise ValueError(f"not a size: {size!r} (e.g. 5GB, 500MB)")
    unit = (m.group(2) or "B").upper()
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
            "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    return int(float(m.group(1)) * mult)


@dataclass(frozen=True)
class Source:
    """One input operand: a byte range of a file, with the weight it carries in the output."""

    path: Path
    info: TensorInfo
    weight: float


@dataclass(frozen=True)
class OutTensor:
    name: str
    dtype: str  # safetensors name
    shape: tuple[int, ...]
    sources: tuple[Source, ...]  # one source = taken whole (maybe cast); two = blend

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_SIZE[self.dtype]

    @property
    def raw_copy(self) -> bool:
        return len(self.sources) == 1 and self.sources[0].info.dtype == self.dtype


@dataclass(frozen=True)
class MergePlan:
    shards: tuple[tuple[OutTensor, ...], ...]

    @property
    def total_size(self) -> int:
        return sum(t.nbytes for shard in self.shards for t in shard)

    def shard_names(self) -> list[str]:
        n = len(self.shards)
        return [f"model-{k:05d}-of-{n:05d}.safetensors" for k in range(1, n + 1)]


def plan_merge(
    lmap: LayerMap,
    tensors: dict[str, dict[str, TensorInfo]],
    dirs: dict[str, Path],
    *,
    out_dtype: str,
    max_shard_size: int,
    order_from: str = "task",
) -> MergePlan:
    """Decide, for every tensor of the task expert, its sources, weights, dtype and output shard.

    ``out_dtype`` is ``"auto"`` (the task expert's dtype, tensor by tensor) or a float dtype name.
    """
    out: list[OutTensor] = []
    for name, ref in tensors[order_from].items():
        src = lmap.for_tensor(name)
        dtype = ref.dtype if out_dtype == "auto" else safetensors_dtype(out_dtype)
        if ref.dtype not in _TORCH:  # integer buffers (rare) follow the map but are never blended
            dtype = ref.dtype
        lang, task = tensors["language"].get(name), tensors["task"].get(name)
        if (lang is None and src.weight != 0) or (task is None and src.weight != 1):
            from hubswap.errors import IncompatibleModelsError

            lacking = "language" if lang is None else "task"
            raise IncompatibleModelsError([f"{lacking} expert lacks tensor {name}, which the layer map takes from it"])
        if src.weight == 1:
            sources = (Source(dirs["language"] / lang.file, lang, 1.0),)
        elif src.weight == 0:
            sources = (Source(dirs["task"] / task.file, task, 1.0),)
        else:
            sources = (
                Source(dirs["language"] / lang.file, lang, src.language_weight),
                Source(dirs["task"] / task.file, task, src.task_weight),
            )
        out.append(OutTensor(name, dtype, ref.shape, sources))

    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in out:
        if shards[-1] and size + t.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return MergePlan(tuple(tuple(s) for s in shards))


def _header_bytes(tensors: Iterable[OutTensor]) -> bytes:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": t.dtype, "shape": list(t.shape), "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format pads the header so tensor data stays aligned
    return len(raw).to_bytes(8, "little") + raw


class _Files:
    """Source files opened once each for the whole merge."""

    def __init__(self):
        self._fds: dict[Path, int] = {}

    def fd(self, path: Path) -> int:
        if path not in self._fds:
            self._fds[path] = os.open(path, os.O_RDONLY)
        return self._fds[path]

    def close(self):
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def _copy_range(src_fd: int, src_off: int, dst_fd: int, dst_off: int, count: int) -> None:
    while count:
        try:
            n = os.copy_file_range(src_fd, dst_fd, count, src_off, dst_off)
        except OSError:  # e.g. across some filesystems: fall back to a bounded user-space copy
            n = os.pwrite(dst_fd, os.pread(src_fd, min(count, CHUNK_BYTES), src_off), dst_off)
        if n <= 0:
            raise OSError(f"short copy from source at offset {src_off}")
        src_off += n
        dst_off += n
        count -= n


def _to_float32(raw, dtype: str, out=None):
    """float32 values of a raw buffer of ``dtype``, into ``out`` when given (no other allocation)."""
    import numpy as np

    src = np.frombuffer(raw, dtype={"BF16": np.uint16, "F32": np.float32, "F16": np.float16, "F64": np.float64}[dtype])
    if out is None:
        out = np.empty(len(src), np.float32)
    if dtype == "BF16":  # bfloat16 is the top half of a float32
        np.left_shift(src, 16, out=out.view(np.uint32), dtype=np.uint32)
    else:
        np.copyto(out, src, casting="unsafe")
    return out


def _from_float32(x, dtype: str, scratch=None):
    """``x`` cast to ``dtype``; for bfloat16, ``scratch`` is a uint32 work buffer of ``x``'s length."""
    import numpy as np

    if dtype == "BF16":  # round to nearest even as torch does (NaN stays a quiet NaN)
        u = x.view(np.uint32)
        t = np.empty(len(u), np.uint32) if scratch is None else scratch
        np.right_shift(u, 16, out=t)
        np.bitwise_and(t, 1, out=t)
        np.add(t, 0x7FFF, out=t)
        np.add(t, u, out=t)
        np.right_shift(t, 16, out=t)
        out = t.astype(np.uint16)
        nan = np.isnan(x)
        if nan.any():
            out[nan] = 0x7FC0
        return out
    with np.errstate(over="ignore"):  # out-of-range values become inf, as in torch
        return x.astype({"F32": np.float32, "F16": np.float16, "F64": np.float64}[dtype])


def _compute(t: OutTensor, files: _Files, dst_fd: int, dst_off: int) -> None:
    """Blend and/or cast one tensor slice by slice: float32 math, one cast to the output dtype.

    Done in numpy with the bfloat16 conversions written out, because importing torch costs
    ~3 s, more than swapping a 1B model takes; tests check the result against torch bit for bit.
    Slices of ``SLICE_ELEMENTS`` keep the float32 work buffers in the CPU cache through the ten or
    so passes a blend makes over them; all buffers are allocated once per tensor.
    """
    import numpy as np

    numel = math.prod(t.shape)
    step = min(numel, SLICE_ELEMENTS)
    acc, term, scratch = np.empty(step, np.float32), np.empty(step, np.float32), np.empty(step, np.uint32)
    raw = memoryview(bytearray(step * max(DTYPE_SIZE[s.info.dtype] for s in t.sources)))
    blend = len(t.sources) > 1
    for start in range(0, numel, step):
        count = min(step, numel - start)
        for k, s in enumerate(t.sources):
            size = DTYPE_SIZE[s.info.dtype]
            buf = raw[: count * size]
            if os.preadv(files.fd(s.path), [buf], s.info.begin + start * size) != count * size:
                raise OSError(f"{s.path}: truncated while reading tensor {t.name}")
            x = _to_float32(buf, s.info.dtype, out=(acc if k == 0 else term)[:count])
            if blend:
                np.multiply(x, s.weight, out=x)
                if k:
                    np.add(acc[:count], x, out=acc[:count])
        out = _from_float32(acc[:count], t.dtype, scratch=scratch[:count])
        os.pwrite(dst_fd, memoryview(out), dst_off + start * DTYPE_SIZE[t.dtype])


def write_shard(path: Path, tensors: tuple[OutTensor, ...], files: _Files, progress=None) -> None:
    from concurrent.futures import ThreadPoolExecutor

    header = _header_bytes(tensors)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    # Blends and casts run in a second thread (numpy releases the GIL) while this one has the kernel
    # copy the raw tensors: on a free core their CPU work hides behind the copies. Every tensor has
    # its own offset, so the two threads never write the same bytes.
    pool = ThreadPoolExecutor(max_workers=1)
    try:
        os.write(fd, header)
        offset = len(header)
        computed = []
        for t in tensors:
            for s in t.sources:
                files.fd(s.path)  # opened by this thread, so the worker never changes the table
            if t.raw_copy:
                s = t.sources[0]
                if s.info.end - s.info.begin != t.nbytes:
                    raise OSError(f"{s.path}: tensor {t.name} has {s.info.end - s.info.begin} bytes, expected {t.nbytes}")
                _copy_range(files.fd(s.path), s.info.begin, fd, offset, t.nbytes)
                if progress is not None:
                    progress.update(t.nbytes)
            else:
                computed.append((t, pool.submit(_compute, t, files, fd, offset)))
            offset += t.nbytes
        for t, done in computed:
            done.result()
            if progress is not None:
                progress.update(t.nbytes)
        os.ftruncate(fd, offset)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # the worker is done with fd before it closes
        os.close(fd)


def merge(plan: MergePlan, out_dir: Path, *, progress: bool = True, on_shard=None) -> dict[str, str]:
    """Write the plan's shards and the index into ``out_dir`` (which must exist). Returns weight_map.

    ``on_shard(path)`` is called as each shard is complete (the build hashes it meanwhile).
    """
    from tqdm.auto import tqdm

    names = plan.shard_names()
    weight_map: dict[str, str] = {}
    files = _Files()
    bar = tqdm(total=plan.total_size, unit="B", unit_scale=True, desc="merging", disable=not progress)
    try:
        for shard_name, tensors in zip(names, plan.shards, strict=True):
            write_shard(out_dir / shard_name, tensors, files, bar)
            weight_map.update({t.name: shard_name for t in tensors})
            if on_shard is not None:
                on_shard(out_dir / shard_name)
    finally:
        files.close()
        bar.close()
    index = {"metadata": {"total_size": plan.total_size}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return weight_map


def copy_side_files(src: Path, out_dir: Path, out_dtype: str) -> list[str]:
    """Config, generation config, tokenizer and chat template from the ``files_from`` expert."""
    copied = []
    for name in SIDE_FILES:
        p = src / name
        if not p.is_file():
            continue
        if name == "config.json" and out_dtype != "auto":
            cfg = json.loads(p.read_text())
            dtype_keys = [k for k in ("dtype", "torch_dtype") if k in cfg] or ["dtype"]
            for k in dtype_keys:
                cfg[k] = out_dtype
            (out_dir / name).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
        else:
            shutil.copyfile(p, out_dir / name)
        copied.append(name)
    return copied
