"""The streaming layer swap: experts' safetensors shards in, merged sharded safetensors out.

A layer swap mostly moves bytes. Tensors taken whole in their own dtype are copied as raw byte
ranges with ``os.copy_file_range`` (in the kernel, no tensor is built). Blends and dtype changes
are computed on flat slices of ``SLICE_ELEMENTS`` values, in chunks of ``TASK_ELEMENTS`` that one
thread per core takes in turn while one of them has the kernel copy (so one large tensor is
spread over all the cores). Peak memory is bounded by a few slices per thread, not by the largest
tensor or the model. Output headers are computed up front from the sources' headers, so every
output tensor is written exactly once at its final offset.

On a filesystem that shares blocks, the plan is laid out so that whole tensors are cloned rather
than copied (:func:`lay_out`; the filesystem side is hubswap/clone.py).

It is longer than most stages (~540 lines) because the plan, the byte copies, the float32 kernels
and the work queue that keeps every core busy are one piece that only makes sense together.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from hubswap import interrupts
from hubswap.clone import clone_block, clone_groups, clone_pieces, header_residue, try_clone
from hubswap.durable import SYNC_BYTES, WriteBack
from hubswap.files import cores
from hubswap.layermap import LayerMap
from hubswap.preflight import SIDE_FILES, TensorInfo
from hubswap.records import MergeBytes
from hubswap.safetensors_format import (
    DTYPE_SIZE,
    FLOAT_DTYPES,
    FLOATS,
    encode_header,
    from_float32,
    numpy_dtype,
    to_float32,
)

log = logging.getLogger(__name__)

CHUNK_BYTES = 16 << 20
# Blends and casts go through float32 slices of 1 MiB, which stay in the CPU cache across the passes
# numpy makes over them: 3x faster than 16 MiB slices, bit for bit the same result.
SLICE_ELEMENTS = 256 << 10


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
    max_shard_size: int = 0
    # Laid out for cloning (hubswap.clone): the filesystem's block size, and where each shard's
    # data starts modulo it (None: wherever its header ends).
    block: int | None = None
    residues: tuple[int | None, ...] = ()
    order: tuple[str, ...] = ()  # the index's order of the tensors, when not the shards' (the task expert's)

    @property
    def total_size(self) -> int:
        return sum(t.nbytes for shard in self.shards for t in shard)

    def header(self, k: int) -> bytes:
        """Shard ``k``'s header (length + JSON), padded to its residue when it has one."""
        residue = self.residues[k] if self.residues else None
        return encode_header(((t.name, t.dtype, t.shape, t.nbytes) for t in self.shards[k]),
                             align=None if residue is None else (residue, self.block))

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
    Tensors that are not floating point (integer or bool buffers, e.g. an ``I64`` position index)
    are never blended nor cast: each is taken whole, in its own dtype, from the expert whose weight
    is larger in its layer, and from the task expert when both weigh 1/2.
    """
    out: list[OutTensor] = []
    for name, ref in tensors[order_from].items():
        src = lmap.for_tensor(name)
        dtype = ref.dtype if out_dtype == "auto" else FLOAT_DTYPES[out_dtype]
        weight = src.weight
        if ref.dtype not in FLOATS:  # integer and bool buffers: whole from one side (see the docstring)
            weight = 1 if weight > 0.5 else 0
        lang, task = tensors["language"].get(name), tensors["task"].get(name)
        if (lang is None and weight != 0) or (task is None and weight != 1):
            from hubswap.errors import IncompatibleModelsError

            lacking = "language" if lang is None else "task"
            raise IncompatibleModelsError([f"{lacking} expert lacks tensor {name}, which the layer map takes from it"])
        if ref.dtype not in FLOATS:
            dtype = (lang if weight == 1 else task).dtype
        if weight == 1:
            sources = (Source(dirs["language"] / lang.file, lang, 1.0),)
        elif weight == 0:
            sources = (Source(dirs["task"] / task.file, task, 1.0),)
        else:
            sources = (
                Source(dirs["language"] / lang.file, lang, src.language_weight),
                Source(dirs["task"] / task.file, task, src.task_weight),
            )
        out.append(OutTensor(name, dtype, ref.shape, sources))

    return MergePlan(_cut(out, max_shard_size) or ((),), max_shard_size)


def _cut(tensors: Iterable[OutTensor], max_shard_size: int) -> tuple[tuple[OutTensor, ...], ...]:
    """Consecutive tensors into shards of at most ``max_shard_size`` bytes (or one tensor)."""
    shards: list[list[OutTensor]] = []
    size = 0
    for t in tensors:
        if not shards or (shards[-1] and size + t.nbytes > max_shard_size):
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return tuple(tuple(s) for s in shards)


def for_cloning(plan: MergePlan, block: int) -> MergePlan:
    """``plan`` laid out so that whole tensors can be cloned in blocks of ``block`` bytes
    (hubswap.clone): the same tensors, bytes and shard size limit, in other shards."""
    shards: list[tuple[OutTensor, ...]] = []
    residues: list[int | None] = []
    for group, aligned in clone_groups(t for shard in plan.shards for t in shard):
        for cut in _cut(group, plan.max_shard_size):
            shards.append(cut)
            residues.append(header_residue(cut[0].sources[0].info.begin, block) if aligned else None)
    order = tuple(t.name for shard in plan.shards for t in shard)
    return MergePlan(tuple(shards) or ((),), plan.max_shard_size, block, tuple(residues) or (None,), order)


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


@dataclass(frozen=True)
class _Copy:
    """Raw bytes moved by the kernel: ``count`` bytes of ``src`` at ``src_off`` to ``dst_off``."""

    src: Path
    src_off: int
    dst: int  # output shard's index
    dst_off: int
    count: int
    clone: bool = False  # whole blocks at both ends: cloned where the filesystem allows it


@dataclass(frozen=True)
class _Chunk:
    """Values ``start:start+count`` of a computed (blended and/or cast) tensor."""

    tensor: OutTensor
    start: int
    count: int
    dst: int
    dst_off: int  # the tensor's offset in its shard

    @property
    def nbytes(self) -> int:
        return self.count * DTYPE_SIZE[self.tensor.dtype]


class _Buffers:
    """One thread's work buffers, reused for every slice it computes: memory is bounded by the
    number of threads times a few slices, whatever the tensors' sizes."""

    def __init__(self):
        self._bufs: dict[str, memoryview] = {}

    def get(self, name: str, count: int, width: int) -> memoryview:
        """``count`` values of ``width`` bytes (at most a slice) in the buffer called ``name``."""
        buf = self._bufs.get(name)
        if buf is None or len(buf) < count * width:
            buf = self._bufs[name] = memoryview(bytearray(SLICE_ELEMENTS * width))
        return buf[: count * width]


def _pwrite(fd: int, buf: memoryview, offset: int) -> None:
    while buf:
        n = os.pwrite(fd, buf, offset)
        buf, offset = buf[n:], offset + n


def _read(fd: int, buf: memoryview, offset: int, path: Path, name: str) -> None:
    if os.preadv(fd, [buf], offset) != len(buf):
        raise OSError(f"{path}: truncated while reading tensor {name}")


def _compute(c: _Chunk, files: _Files, dst_fd: int, bufs: _Buffers) -> None:
    """Blend and/or cast values of one tensor, slice by slice: float32 math, one cast at the end.

    Done in numpy rather than torch, because importing torch costs
    ~3 s, more than swapping a 1B model takes; tests check the result against torch bit for bit.
    Slices of ``SLICE_ELEMENTS`` keep the float32 buffers in the CPU cache through the passes
    numpy makes over them.
    """
    import numpy as np

    t = c.tensor
    blend = len(t.sources) > 1
    out_size = DTYPE_SIZE[t.dtype]
    for start in range(c.start, c.start + c.count, SLICE_ELEMENTS):
        count = min(SLICE_ELEMENTS, c.start + c.count - start)
        acc = np.frombuffer(bufs.get("acc", count, 4), np.float32)
        for k, s in enumerate(t.sources):
            size = DTYPE_SIZE[s.info.dtype]
            x = acc if k == 0 else np.frombuffer(bufs.get("term", count, 4), np.float32)
            if s.info.dtype == "F32":  # read straight into the float32 buffer
                _read(files.fd(s.path), x.data.cast("B"), s.info.begin + start * size, s.path, t.name)
            else:
                raw = bufs.get("raw", count, size)
                _read(files.fd(s.path), raw, s.info.begin + start * size, s.path, t.name)
                to_float32(raw, s.info.dtype, out=x)
            if blend:
                np.multiply(x, s.weight, out=x)
                if k:
                    np.add(acc, x, out=acc)
        if t.dtype == "F32":
            out = acc.data.cast("B")
        else:
            out = bufs.get("out", count, out_size)
            from_float32(acc, t.dtype, out=np.frombuffer(out, numpy_dtype(t.dtype)),
                         scratch=np.frombuffer(bufs.get("bits", count, 4), np.uint32))
        _pwrite(dst_fd, out, c.dst_off + start * out_size)


def _workers() -> int:
    """Threads for the merge: one per core."""
    return WORKERS or cores()


# Threads copying and computing (None: one per core). Tests set it to exercise the pool anywhere.
WORKERS: int | None = None
# Values per work item of a computed tensor: small enough to spread one large tensor over the
# cores, large enough that handing items out costs nothing next to computing them.
TASK_ELEMENTS = 16 * SLICE_ELEMENTS


class _Queue:
    """The merge's work: raw copies and computed chunks, handed out to the threads.

    The main thread prefers copies (the kernel's work) and the workers computed chunks (numpy's,
    which releases the GIL); each takes from the other list when its own is empty, so every core
    is busy until the end. Copies into one output file are serialised by the kernel's lock on that
    file, so a copy is handed out only for a shard nobody is copying into.
    """

    def __init__(self, copies: list[_Copy], chunks: list[_Chunk], on_written: Callable[..., None] | None):
        from collections import Counter, deque

        self._lock = threading.Lock()
        self._copies: dict[int, deque[_Copy]] = {}
        for c in copies:
            self._copies.setdefault(c.dst, deque()).append(c)
        self._chunks = deque(chunks)
        self._copying: set[int] = set()
        self._left = Counter(item.dst for item in (*copies, *chunks))  # items not done, per shard
        self._on_written = on_written
        self.error: BaseException | None = None

    def take(self, prefer_copy: bool) -> _Copy | _Chunk | None:
        with self._lock:
            if self.error is not None:
                return None
            first, second = (self._take_copy, self._take_chunk) if prefer_copy else (self._take_chunk, self._take_copy)
            return first() or second()

    def _take_copy(self) -> _Copy | None:
        for dst, items in self._copies.items():
            if items and dst not in self._copying:
                self._copying.add(dst)
                return items.popleft()
        return None

    def _take_chunk(self) -> _Chunk | None:
        return self._chunks.popleft() if self._chunks else None

    def done(self, item: _Copy | _Chunk, nbytes: int = 0, dirty: int | None = None) -> None:
        """``item`` is over, ``nbytes`` of it written (0 when it failed), ``dirty`` of them through
        the page cache (all unless said: cloned blocks have nothing to write back)."""
        with self._lock:
            if isinstance(item, _Copy):
                self._copying.discard(item.dst)
            self._left[item.dst] -= 1
            complete = self._left[item.dst] == 0
        if nbytes and self._on_written is not None:
            self._on_written(item.dst, nbytes if dirty is None else dirty, complete=complete)

    def fail(self, e: BaseException) -> None:
        with self._lock:
            if self.error is None:
                self.error = e


def _work_items(plan: MergePlan, files: _Files | None = None) -> tuple[list[_Copy], list[_Chunk]]:
    """The copies (adjacent ranges joined; with ``plan.block``, the whole blocks of those aligned
    alike in source and output to clone) and computed chunks of every shard, in output order."""
    copies: list[_Copy] = []
    chunks: list[_Chunk] = []
    for k, tensors in enumerate(plan.shards):
        offset = len(plan.header(k))
        for t in tensors:
            for s in t.sources if files is not None else ():
                files.fd(s.path)  # opened by this thread, so the workers never change the table
            if t.raw_copy:
                s = t.sources[0]
                if s.info.end - s.info.begin != t.nbytes:
                    raise OSError(f"{s.path}: tensor {t.name} has {s.info.end - s.info.begin} bytes, expected {t.nbytes}")
                last = copies[-1] if copies else None
                if (last is not None and last.dst == k and last.src == s.path
                        and last.src_off + last.count == s.info.begin and last.dst_off + last.count == offset):
                    copies[-1] = _Copy(s.path, last.src_off, k, last.dst_off, last.count + t.nbytes)
                else:
                    copies.append(_Copy(s.path, s.info.begin, k, offset, t.nbytes))
            else:
                numel = math.prod(t.shape)
                for start in range(0, numel, TASK_ELEMENTS):
                    chunks.append(_Chunk(t, start, min(TASK_ELEMENTS, numel - start), k, offset))
            offset += t.nbytes
    if plan.block:
        copies = [piece for c in copies for piece in _clone_pieces(c, plan.block)]
    # Copies of at most SYNC_BYTES each, so the syncer hears of the progress inside a big tensor
    # (a multiple of any block size: the pieces of a clone stay aligned).
    copies = [_Copy(c.src, c.src_off + i, c.dst, c.dst_off + i, min(SYNC_BYTES, c.count - i), c.clone)
              for c in copies for i in range(0, c.count, SYNC_BYTES)]
    return copies, chunks


def clonable_bytes(plan: MergePlan) -> int:
    """The bytes that a plan laid out for cloning clones (where the filesystem does not refuse)."""
    return sum(c.count for c in _work_items(plan)[0] if c.clone)


def _clone_pieces(c: _Copy, block: int) -> list[_Copy]:
    return [_Copy(c.src, c.src_off + at, c.dst, c.dst_off + at, n, clone)
            for at, n, clone in clone_pieces(c.src_off, c.dst_off, c.count, block)]


def _run(queue: _Queue, files: _Files, fds: list[int], prefer_copy: bool, progress, lock, tally: dict) -> None:
    bufs = _Buffers()
    done = dict.fromkeys(tally, 0)
    try:
        while (item := queue.take(prefer_copy)) is not None:
            n, how = 0, "copied"
            try:
                if isinstance(item, _Copy):
                    src, dst = files.fd(item.src), fds[item.dst]
                    if item.clone and try_clone(src, item.src_off, dst, item.dst_off, item.count):
                        how = "cloned"
                    else:
                        _copy_range(src, item.src_off, dst, item.dst_off, item.count)
                    n = item.count
                else:
                    _compute(item, files, fds[item.dst], bufs)
                    n, how = item.nbytes, "blended" if len(item.tensor.sources) > 1 else "cast"
            finally:
                queue.done(item, n, 0 if how == "cloned" else n)
            done[how] += n
            if progress is not None:
                with lock:
                    progress.update(n)
    except BaseException as e:  # handed to the main thread, which raises it
        queue.fail(e)
    finally:
        with lock:
            for how, n in done.items():
                tally[how] += n


def _write_shards(paths: list[Path], plan: MergePlan, files: _Files, progress=None, *,
                  durable: bool = True) -> MergeBytes:
    """Write every shard: headers first, then the tensors by one thread per core, each at its final
    offset (no two threads ever write the same bytes); with ``durable``, the shards' data is on the
    disk when it returns. Returns how each byte was made.

    The main thread only waits for the workers: it takes no lock they share (the queue's, the
    progress bar's, the write-back's, the import lock) that a Ctrl-C could leave taken
    (hubswap/interrupts.py)."""
    copies, chunks = _work_items(plan, files)
    tally = dict.fromkeys(("cloned", "copied", "blended", "cast"), 0)
    fds: list[int] = []
    workers: list[threading.Thread] = []
    queue = syncer = None
    try:
        for k, (path, tensors) in enumerate(zip(paths, plan.shards, strict=True)):
            fds.append(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
            header = plan.header(k)
            os.write(fds[-1], header)
            os.ftruncate(fds[-1], len(header) + sum(t.nbytes for t in tensors))
        syncer = WriteBack(fds) if durable else None
        queue = _Queue(copies, chunks, syncer.written if syncer else None)
        lock = threading.Lock()
        n = max(1, min(_workers(), len(chunks) + len(copies)))
        # The first prefers copies (the kernel's work), the others computed chunks (numpy's).
        workers = [threading.Thread(target=_run, args=(queue, files, fds, i == 0, progress, lock, tally),
                                    name=f"hubswap-merge-{i}", daemon=True) for i in range(n)]
        for w in workers:
            w.start()
        interrupts.join(workers)
        if queue.error is not None:
            raise queue.error
        if syncer is not None:
            syncer.join()
            syncer = None
        return MergeBytes(**tally)
    except BaseException as e:  # Ctrl-C: the workers stop after their current item
        if queue is not None:
            queue.fail(e)
        raise
    finally:
        for w in workers:
            if w.ident is not None:  # started (Ctrl-C can come between two starts)
                w.join()
        if syncer is not None:  # after a failure: let the sync in progress end before closing its fd
            with contextlib.suppress(OSError):
                syncer.join()
        for fd in fds:
            os.close(fd)


def lay_out(plan: MergePlan, out_dir: Path, *, clone: bool = True) -> MergePlan:
    """``plan`` laid out for cloning (:func:`for_cloning`) when ``clone`` and the experts' files
    can be cloned into ``out_dir`` (tried here: hubswap.clone); else ``plan`` itself."""
    if clone and plan.max_shard_size and plan.block is None and (block := clone_block(_sources(plan), out_dir)):
        return for_cloning(plan, block)
    return plan


def merge(plan: MergePlan, out_dir: Path, *, progress: bool = True, durable: bool = True) -> MergeBytes:
    """Write the plan's shards and the index into ``out_dir`` (which must exist); returns how each
    byte was made. A plan laid out for cloning (:func:`lay_out`) clones its whole tensors' blocks
    where the filesystem lets it, and copies the rest.

    ``durable``: the shards' data is sent to the disk while they are written and is there when
    this returns (a build publishes the folder next); a scratch merge that is read and deleted
    (the sweep's) leaves it to the page cache."""
    from tqdm.auto import tqdm

    order = plan.order or [t.name for shard in plan.shards for t in shard]
    names = plan.shard_names()
    files = _Files()
    bar = tqdm(total=plan.total_size, unit="B", unit_scale=True, desc="merging", disable=not progress)
    try:
        made = _write_shards([out_dir / n for n in names], plan, files, bar, durable=durable)
    finally:
        files.close()
        bar.close()
    shard_of = {t.name: name for name, tensors in zip(names, plan.shards, strict=True) for t in tensors}
    index = {"metadata": {"total_size": plan.total_size}, "weight_map": {n: shard_of[n] for n in order}}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    log.debug("merged %s: %s", out_dir, made.summary())  # callers say it where it belongs (the build summary)
    return made


def _sources(plan: MergePlan) -> list[Path]:
    """The files that tensors are taken whole from, each once."""
    return list(dict.fromkeys(t.sources[0].path for shard in plan.shards for t in shard if t.raw_copy))


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
