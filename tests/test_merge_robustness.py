"""A merge killed mid-write leaves no model folder; peak memory stays bounded by the chunk size."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hubswap.demo import make_family
from hubswap.swap import CHUNK_BYTES
from tests.support.cli import hubswap_argv, hubswap_env
from tests.support.recipes import write_recipe

# Module fixtures that make models with torch: their users are `engine` (tests/conftest.py).
ENGINE_FIXTURES = {"medium"}

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def medium(tmp_path_factory) -> dict[str, Path]:
    """A 16-layer model of ~46M parameters (177 MB in fp32): about 11x its largest tensor."""
    return make_family(tmp_path_factory.mktemp("medium"), num_layers=16, hidden=512, vocab_size=8192,
                       max_shard_size="50MB")


def _build_cmd(recipe: Path, out: Path) -> list[str]:
    return hubswap_argv("build", recipe, "--no-eval", "-o", out)


def _env() -> dict:
    return hubswap_env()


def test_killed_merge_leaves_no_model_folder_and_rerun_succeeds(medium, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", medium, dtype="bfloat16")  # every tensor is cast: a slow merge
    out = tmp_path / "build"
    proc = subprocess.Popen(_build_cmd(recipe, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    killed_while_writing = False
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        shards = list(out.glob(".model.partial-*/model-*.safetensors"))
        if shards and any(s.stat().st_size > 0 for s in shards):
            proc.send_signal(signal.SIGKILL)
            killed_while_writing = True
            break
        time.sleep(0.002)
    proc.wait()
    assert killed_while_writing, "the merge finished before it could be killed"
    assert not (out / "model").exists()
    assert list(out.glob(".model.partial-*"))  # what was being written stays hidden, never as model/

    rerun = subprocess.run(_build_cmd(recipe, out), env=_env(), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert (out / "model" / "model.safetensors.index.json").exists()
    assert not list(out.glob(".model.partial-*"))  # stale staging folders are swept


def _peak_rss_mib(cmd: list[str]) -> float:
    """Peak RSS of a fresh child process, as the kernel accounts it (no timing involved)."""
    code = (
        "import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run([sys.executable, "-c", code, *cmd], env=_env(), capture_output=True, text=True, check=True)
    return int(out.stdout.strip()) / 1024


def test_peak_memory_is_bounded_by_the_chunk_not_the_model(medium, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", medium, dtype="bfloat16")
    model_mib = sum(f.stat().st_size for role in ("task", "language")
                    for f in medium[role].glob("*.safetensors")) / 2**20
    # The same process importing everything a build imports, but merging nothing.
    baseline = _peak_rss_mib([sys.executable, "-c", "import hubswap.cli, hubswap.pipeline, hubswap.card, numpy, tqdm"])
    merge = _peak_rss_mib(_build_cmd(recipe, tmp_path / "out"))
    extra = merge - baseline
    print(f"inputs {model_mib:.0f} MiB, baseline {baseline:.0f} MiB, merge {merge:.0f} MiB, extra {extra:.0f} MiB")
    assert (tmp_path / "out" / "model").is_dir()
    # Four chunk-sized buffers (raw bytes, float32 operands, result) plus slack; far below the inputs.
    assert extra < 4 * CHUNK_BYTES / 2**20 + 40
    assert extra < model_mib / 3
