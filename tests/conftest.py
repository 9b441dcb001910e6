"""Shared fixtures: isolated caches, tiny model families made once per session."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MGSM = (REPO.parent / "shared" / "mgsm").resolve()

# Keep every cache of the ecosystem out of the user's home, before anything imports it.
_TMP = Path(tempfile.mkdtemp(prefix="hubswap-tests-"))
os.environ["HF_HOME"] = str(_TMP / "hf_home")
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_XET"] = "1"
os.environ.setdefault("VLLM_CACHE_ROOT", str(_TMP / "vllm"))
os.environ.pop("HF_TOKEN", None)


@pytest.fixture(scope="session")
def mgsm_dir() -> Path:
    if not (MGSM / "sw" / "test.jsonl").exists():
        pytest.fail(f"MGSM copy not found at {MGSM} (expected ../shared/mgsm beside the repo)")
    return MGSM


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory) -> dict[str, Path]:
    """base/task/language: a tiny Llama (untied embeddings), fp32, sharded, random weights."""
    from hubswap.demo import make_family

    return make_family(tmp_path_factory.mktemp("tiny_llama"), arch="llama", seed=1)


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory) -> dict[str, Path]:
    """base/task/language: a tiny Qwen2 (attention biases, tied embeddings), fp32."""
    from hubswap.demo import make_family

    return make_family(tmp_path_factory.mktemp("tiny_qwen2"), arch="qwen2", seed=2)
