"""What the evaluation workers' server imports once (``worker.py``), so that each worker process
starts with its engine's libraries loaded instead of importing them itself.

``import vllm`` is lazy: most of vLLM (3000 modules) is imported when the first engine of a
process starts. Measured on the 2-core test machines under load: a fresh process's first vLLM
engine started in 31 s and its second in 7 s; with the modules below preloaded, the first took
7 s too. For transformers: 12.9 s against 0.4 s. The server runs no model and never touches CUDA;
on a GPU host only modules that do not depend on the device are preloaded.

Which engine: ``$HUBSWAP_WORKER_BACKEND`` (``vllm`` or ``transformers``) and
``$HUBSWAP_WORKER_CUDA`` (``1`` or ``0``), set by ``worker.py`` for the server only; with
``$HUBSWAP_WORKER_LOG`` (a file; not with ``-v``) the server's stdout and stderr, and so its
workers', go to that file instead of the console. A module that
fails to import is skipped: the worker imports what it needs itself.
"""

from __future__ import annotations

import importlib
import os

TRANSFORMERS = [
    "torch", "transformers", "transformers.modeling_utils", "transformers.generation.utils",
    "transformers.models.auto.modeling_auto", "transformers.models.auto.tokenization_auto",
    "transformers.models.llama.modeling_llama", "transformers.models.qwen2.modeling_qwen2",
]
VLLM = [
    "vllm", "vllm.entrypoints.llm", "vllm.v1.engine.llm_engine", "vllm.v1.engine.core",
    "vllm.model_executor.models.llama", "vllm.model_executor.models.qwen2",
]
VLLM_CPU = ["vllm.v1.worker.cpu_worker", "vllm.v1.worker.cpu_model_runner"]


def modules(backend: str, cuda: bool) -> list[str]:
    if backend == "vllm":
        return [*VLLM, *([] if cuda else VLLM_CPU), *TRANSFORMERS]
    if backend == "transformers":
        return TRANSFORMERS
    return []


def preload(backend: str, cuda: bool) -> list[str]:
    """Import ``backend``'s modules; returns those that imported."""
    done = []
    for name in modules(backend, cuda):
        try:
            importlib.import_module(name)
        except Exception:  # a preload is an optimisation: the worker imports it again
            continue
        done.append(name)
    return done


if os.environ.get("HUBSWAP_WORKER_LOG"):  # the server, quiet: its and its workers' output to the log
    _fd = os.open(os.environ["HUBSWAP_WORKER_LOG"], os.O_WRONLY | os.O_APPEND)
    os.dup2(_fd, 1)
    os.dup2(_fd, 2)
    os.close(_fd)

if os.environ.get("HUBSWAP_WORKER_BACKEND"):
    preload(os.environ["HUBSWAP_WORKER_BACKEND"], os.environ.get("HUBSWAP_WORKER_CUDA") == "1")
