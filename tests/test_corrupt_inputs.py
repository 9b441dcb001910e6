"""Corrupt safetensors inputs are refused at preflight, as strictly as the safetensors library
refuses them: exit 3, one line naming the file and the problem, nothing built, no lock written.

Each corruption is a real file on disk (or on the test Hub), and the library's own ``safe_open``
is asked first, so the test shows both sides agree on what is corrupt. The corrupt shard of the
language expert holds only a middle layer's tensors, which the merge takes from the task expert:
the file is refused although no byte of it would be used.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path

import pytest

from tests.support.cli import run_hubswap
from tests.support.recipes import write_recipe

REPO = Path(__file__).resolve().parent.parent


def _read(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write(path: Path, header: dict, data: bytes, *, length: int | None = None) -> None:
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text) if length is None else length) + text + data)


def _tensors_by_offset(header: dict) -> list[str]:
    return sorted((n for n in header if n != "__metadata__"), key=lambda n: header[n]["data_offsets"])


def truncated(path: Path) -> str:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return "past the end of the file"


def header_length_past_eof(path: Path) -> str:
    header, data = _read(path)
    _write(path, header, data, length=path.stat().st_size + 100)
    return "corrupt safetensors header (length"


def offset_past_eof(path: Path) -> str:
    header, data = _read(path)
    last = _tensors_by_offset(header)[-1]
    b, e = header[last]["data_offsets"]
    header[last]["data_offsets"] = [b + 4096, e + 4096]  # same length, starting past the data
    _write(path, header, data)
    return f"tensor {last}: its data ends at byte"


def overlapping(path: Path) -> str:
    header, data = _read(path)
    first, second = _tensors_by_offset(header)[:2]
    b, e = header[second]["data_offsets"]
    header[second]["data_offsets"] = [b - 8, e - 8]  # 8 bytes over the end of the first tensor
    _write(path, header, data)
    return f"tensors {first} and {second} overlap"


def size_mismatch(path: Path) -> str:
    header, data = _read(path)
    first = _tensors_by_offset(header)[0]
    header[first]["shape"] = [*header[first]["shape"], 2]  # twice the elements in the same bytes
    _write(path, header, data)
    return f"tensor {first}: F32"


def unknown_dtype(path: Path) -> str:
    header, data = _read(path)
    first = _tensors_by_offset(header)[0]
    header[first]["dtype"] = "F31"
    _write(path, header, data)
    return f"tensor {first}: unknown dtype 'F31'"


def trailing_bytes(path: Path) -> str:
    with open(path, "ab") as f:
        f.write(b"\0" * 64)
    return "64 bytes after the last tensor's data"


CORRUPTIONS = [truncated, header_length_past_eof, offset_past_eof, overlapping, size_mismatch, unknown_dtype,
               trailing_bytes]


def _unused_shard(folder: Path) -> str:
    """A shard of the language expert holding only middle layers, which the merge (bottom 2, top 1,
    transition 1) takes from the task expert."""
    layers = json.loads((folder / "config.json").read_text())["num_hidden_layers"]
    middle = {f"model.layers.{i}." for i in range(3, layers - 2)}
    index = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]
    shards = {}
    for name, shard in index.items():
        shards.setdefault(shard, []).append(name)
    return next(s for s, names in sorted(shards.items()) if all(n[: n.index(".", 13) + 1] in middle for n in names
                                                              if n.startswith("model.layers.")) and
                all(n.startswith("model.layers.") for n in names))


def _library_refuses(path: Path) -> bool:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            for k in f.keys():
                f.get_tensor(k)
    except Exception:
        return True
    return False


@pytest.fixture
def family(tiny_llama, tmp_path) -> dict[str, Path]:
    """A copy of the tiny family whose language expert the test may damage."""
    out = {role: path for role, path in tiny_llama.items() if role != "language"}
    out["language"] = Path(shutil.copytree(tiny_llama["language"], tmp_path / "language"))
    return out


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda f: f.__name__)
def test_a_corrupt_local_shard_is_refused_at_preflight(family, tmp_path, corrupt):
    shard = family["language"] / _unused_shard(family["language"])
    assert not _library_refuses(shard)
    problem = corrupt(shard)
    assert _library_refuses(shard), "the safetensors library accepts this file: not a corruption"

    recipe = write_recipe(tmp_path / "r.toml", family)
    for args in (["build", str(recipe), "--no-eval", "-o", str(tmp_path / "build")], ["lock", str(recipe)]):
        r = run_hubswap(*args, cwd=tmp_path)
        assert r.returncode == 3, r.stderr
        error = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
        assert len(error) == 1 and "Traceback" not in r.stderr, r.stderr
        assert error[0].startswith(f"error: {shard}: corrupt safetensors "), error[0]
        assert problem in error[0], error[0]
    assert not (tmp_path / "build" / "model").exists()
    assert not (tmp_path / "r.lock.json").exists()  # the corrupt file's hash is never recorded as good


@pytest.mark.parametrize("corrupt", [truncated, offset_past_eof, overlapping], ids=lambda f: f.__name__)
def test_a_corrupt_hub_shard_is_refused_before_any_weight_is_downloaded(hub, tiny_llama, tmp_path, corrupt):
    """On the Hub, the header (two ranged reads) is checked against the file size in the LFS record."""
    bad = Path(shutil.copytree(tiny_llama["language"], tmp_path / "language"))
    shard = _unused_shard(bad)
    problem = corrupt(bad / shard)
    recipe = write_recipe(tmp_path / "merge.toml", {"task": "org/task", "language": "org/language"}, name="hub-corrupt")
    hub.upload_folder("org/task", tiny_llama["task"])
    hub.upload_folder("org/language", bad)
    env = {"HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / "hf_home")}
    for args in (["lock", str(recipe)], ["build", str(recipe), "--no-eval", "-o", str(tmp_path / "build")]):
        r = run_hubswap(*args, cwd=tmp_path, env=env)
        assert r.returncode == 3, r.stderr
        error = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
        assert len(error) == 1 and "Traceback" not in r.stderr, r.stderr
        assert re.match(rf"error: language model org/language@main \([0-9a-f]{{12}}\): {shard}: corrupt safetensors ",
                        error[0]), error[0]
        assert problem in error[0], error[0]
    whole = [p for m, p, rng in hub.requests if m == "GET" and p.endswith(".safetensors") and rng is None]
    assert not whole, f"weights downloaded: {whole}"
    assert not (tmp_path / "merge.lock.json").exists()
    assert not (tmp_path / "build" / "model").exists()
