"""The real vLLM engine in this process on a tiny fp32 Llama: greedy tokens equal transformers',
the engine's memory is released on close, CPU defaults and recipe options reach vllm.LLM."""

from __future__ import annotations

import pytest

from hubswap.errors import EvaluationError
from hubswap.evaluate.backends import TransformersBackend, VllmBackend, vllm_engine_args
from hubswap.evaluate.data import load_language
from hubswap.evaluate.prompts import build_prompts

MAX_NEW = 16


@pytest.fixture(scope="module")
def prompts(mgsm_dir):
    few = [p for lang in ("sw", "en", "zh", "te") for p in
           build_prompts(load_language(mgsm_dir, lang), "native-cot", num_fewshot=2, limit=3)]
    chat = build_prompts(load_language(mgsm_dir, "sw"), "chat", limit=3)
    return few, chat


@pytest.fixture(scope="module")
def hf_outputs(tiny_llama_vllm, prompts):
    """The transformers reference, made before any engine of this module starts."""
    import torch

    few, chat = prompts
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two threads on a busy two-core machine make this 10x slower
    try:
        with TransformersBackend(tiny_llama_vllm["task"], batch_size=8) as hf:
            return (hf.generate(few, max_new_tokens=MAX_NEW, progress=False),
                    hf.generate(chat, max_new_tokens=MAX_NEW, progress=False), hf.render(chat[0]))
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vllm_outputs(vllm_cpu, tiny_llama_vllm, prompts, hf_outputs):
    import psutil

    few, chat = prompts
    rss = psutil.Process().memory_info
    before = rss().rss
    # a 1 GiB KV cache, so that releasing the engine's memory shows clearly in the RSS
    with VllmBackend(tiny_llama_vllm["task"], seed=0, options={"kv_cache_memory_bytes": 1 << 30}) as engine:
        held = rss().rss
        assert engine.engine_args["dtype"] == "float32"  # stored dtype, not vLLM's half-precision "auto"
        assert engine.engine_args["enforce_eager"] is True
        out = engine.generate(few, max_new_tokens=MAX_NEW, progress=False)
        out_chat = engine.generate(chat, max_new_tokens=MAX_NEW, progress=False)
        rendered = engine.render(chat[0])
        assert engine.generate(few[:3], max_new_tokens=MAX_NEW, progress=False) == out[:3]  # repeats exactly
    assert engine.llm is None
    released = rss().rss
    assert released - before < (held - before) / 2, (before >> 20, held >> 20, released >> 20)
    return out, out_chat, rendered


def test_vllm_greedy_equals_transformers(vllm_outputs, hf_outputs):
    out, out_chat, rendered = vllm_outputs
    ref, ref_chat, ref_rendered = hf_outputs
    assert ref_rendered == rendered
    assert [g.token_ids for g in out] == [g.token_ids for g in ref]
    assert [g.token_ids for g in out_chat] == [g.token_ids for g in ref_chat]
    assert [g.prompt_tokens for g in out] == [g.prompt_tokens for g in ref]
    assert all(g.tokens == len(g.token_ids) > 0 for g in out)
    assert {g.finish_reason for g in out} <= {"stop", "length"}


def test_chat_prompt_starts_with_one_bos(tiny_llama_vllm, vllm_outputs):
    _, out_chat, rendered = vllm_outputs
    assert rendered.startswith("<s><|user|>\n") and rendered.count("<s>") == 1
    assert rendered.endswith("<|assistant|>\n")


def test_cpu_defaults_and_recipe_overrides(tiny_llama_vllm):
    path = tiny_llama_vllm["task"]
    cpu = vllm_engine_args(path, {}, seed=3, cuda=False)
    assert cpu["enforce_eager"] and cpu["kv_cache_memory_bytes"] == 256 << 20 and cpu["seed"] == 3
    assert cpu["max_model_len"] <= 8192
    gpu = vllm_engine_args(path, {"tensor_parallel_size": 2, "distributed_executor_backend": "ray",
                                  "dtype": "bfloat16"}, seed=0, cuda=True)
    assert "enforce_eager" not in gpu and "kv_cache_memory_bytes" not in gpu
    assert gpu["tensor_parallel_size"] == 2 and gpu["distributed_executor_backend"] == "ray"
    assert gpu["dtype"] == "bfloat16"


@pytest.mark.may_skip_on_ci(reason="a CI on a GPU host has no CPU attention to check")
def test_unsupported_head_size_is_a_user_error(tiny_llama):
    # tiny_llama has head size 16: vLLM's CPU attention would fail deep inside the first step.
    import torch

    if torch.cuda.is_available():
        pytest.skip("the head-size check applies to vLLM on the CPU")
    with pytest.raises(EvaluationError, match="head size 16") as e:
        VllmBackend(tiny_llama["task"])
    assert "transformers" in e.value.hint


def test_missing_engine_is_a_user_error(tiny_llama_vllm, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "vllm", None)  # what `import vllm` meets when it is not installed
    with pytest.raises(EvaluationError, match="vLLM engine is not installed") as e:
        VllmBackend(tiny_llama_vllm["task"])
    assert "transformers" in e.value.hint
