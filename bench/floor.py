"""The copy floor: move exactly the bytes a layer swap must move, and nothing else.

    python bench/floor.py PLAN.json OUT_FILE

PLAN.json lists ``[op, file, offset, length]`` in output order. ``copy`` ranges go into OUT_FILE
with ``os.copy_file_range`` (in the kernel, no user-space buffer: the fastest way Linux offers to
move bytes between files); ``read`` ranges (the other expert's side of each blended tensor) are read
into a reused buffer and dropped; ``cast`` ranges (``[op, file, offset, length, out_length]``, a
float32 tensor that the merge casts to bf16) are read into the buffer and ``out_length/length`` of
each piece written, with no arithmetic. So the floor reads every byte the merge needs from both experts
and writes a file of the merged model's size, with no arithmetic, no headers, no tokenizer.
Only the standard library is imported: its start-up is part of the floor.
"""

from __future__ import annotations

import json
import os
import sys

CHUNK = 64 << 20


def main(plan_path: str, out_path: str) -> None:
    with open(plan_path) as f:
        plan = json.load(f)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    files: dict[str, int] = {}
    out = os.open(out_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for op, path, offset, length, *out_length in plan:
            fd = files.get(path)
            if fd is None:
                fd = files[path] = os.open(path, os.O_RDONLY)
            end = offset + length
            while offset < end:
                if op == "copy":
                    n = os.copy_file_range(fd, out, min(end - offset, 1 << 30), offset)
                else:
                    n = os.preadv(fd, [view[: min(end - offset, CHUNK)]], offset)
                    if op == "cast":
                        os.write(out, view[: n * out_length[0] // length])
                if n <= 0:
                    raise OSError(f"short {op} of {path} at {offset}")
                offset += n
    finally:
        os.close(out)
        for fd in files.values():
            os.close(fd)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
