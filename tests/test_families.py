"""Every model family the README lists, as tiny random instances made from transformers' own config
classes: the merge follows the layer map bit for bit, the result loads with its Auto class and
computes what an in-memory swap computes, and the real vLLM (CPU build) serves it where it can.

The references here know where each family keeps its language-model layers (the ``stack`` and
``memory_stack`` columns, written by hand): they do not use hubswap's layer-stack detection.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from safetensors import safe_open

from hubswap.pipeline import BuildOptions, build
from hubswap.recipe import Swap
from tests.support.recipes import write_recipe

pytestmark = pytest.mark.engine  # transformers' config classes, torch references, the vLLM engine

if TYPE_CHECKING:
    import torch

LAYERS = 6
# Language weights 1, 2/3, 1/3, 0, 1/2, 1 (L~~T~L): inexact blends in float32. Multimodal models
# take their vision side from the task expert, everything else outside the layers from the language's.
SWAP = Swap(bottom=1, top=1, transition_bottom=2, transition_top=1, non_layer="language", vision="task")
# Head size 32 (hidden 128, 4 heads): the smallest vLLM's CPU attention serves.
TEXT = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=LAYERS, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, max_position_embeddings=4096, bos_token_id=1,
            eos_token_id=2, pad_token_id=0)
NO_TORCHVISION = ("vLLM's multimodal model code imports torchvision, which has no build for this CPU torch "
                  "(PyPI's breaks torch 2.13+cpu)")


@dataclass(frozen=True)
class Family:
    name: str
    make: str  # transformers config class
    kwargs: dict | Callable[[], dict]  # a callable: configs that need transformers' classes to write
    stack: str = "model.layers"  # where the saved checkpoint keeps the language model's layers
    memory_stack: str = "model.layers"  # where the loaded model keeps them
    vision: tuple[str, ...] = ()  # saved names of the vision side
    memory_vision: tuple[str, ...] = ()
    auto: str = "AutoModelForCausalLM"
    vllm_skip: str | None = None  # why vLLM's CPU build cannot serve the family here
    extra: dict = field(default_factory=dict)

    def config(self):
        import transformers

        kwargs = self.kwargs() if callable(self.kwargs) else self.kwargs
        return getattr(transformers, self.make)(**kwargs)


def _llava():
    import transformers

    vision = transformers.CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_attention_heads=2,
                                           num_hidden_layers=LAYERS, image_size=32, patch_size=8, projection_dim=64)
    # As deep as the language model: the stack is told apart by the token embeddings beside it.
    return dict(text_config=transformers.LlamaConfig(**TEXT).to_dict(), vision_config=vision.to_dict(),
                image_token_index=5)


def _gemma3():
    import transformers

    vision = transformers.SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_attention_heads=2,
                                             num_hidden_layers=3, image_size=32, patch_size=8)
    return dict(text_config=transformers.Gemma3TextConfig(**TEXT, head_dim=32).to_dict(), vision_config=vision.to_dict(),
                mm_tokens_per_image=4, image_token_index=5, boi_token_index=6, eoi_token_index=7)


def _qwen2_vl():
    text = dict(TEXT, rope_scaling={"type": "mrope", "mrope_section": [4, 6, 6]})
    vision = dict(depth=3, embed_dim=64, hidden_size=128, num_heads=2, patch_size=8, spatial_merge_size=2,
                  temporal_patch_size=2)
    return dict(text_config=text, vision_config=vision, image_token_id=5, video_token_id=6, vision_start_token_id=7)


FAMILIES = [
    Family("llama", "LlamaConfig", TEXT),
    Family("mistral", "MistralConfig", dict(TEXT, sliding_window=64)),
    Family("qwen2", "Qwen2Config", dict(TEXT, tie_word_embeddings=True)),
    Family("qwen3", "Qwen3Config", dict(TEXT, head_dim=32)),
    Family("gemma2", "Gemma2Config", dict(TEXT, head_dim=32)),
    Family("phi3", "Phi3Config", TEXT),
    Family("olmo2", "Olmo2Config", TEXT),
    # As many experts per layer as layers: the experts' numbering must not pass for a second stack.
    Family("mixtral", "MixtralConfig", dict(TEXT, intermediate_size=64, num_local_experts=LAYERS, num_experts_per_tok=2)),
    Family("llava", "LlavaConfig", _llava, stack="language_model.model.layers",
           memory_stack="model.language_model.layers", vision=("vision_tower.", "multi_modal_projector."),
           memory_vision=("model.vision_tower.", "model.multi_modal_projector."),
           auto="AutoModelForImageTextToText", vllm_skip=NO_TORCHVISION),
    Family("gemma3", "Gemma3Config", _gemma3, stack="language_model.model.layers",
           memory_stack="model.language_model.layers", vision=("vision_tower.", "multi_modal_projector."),
           memory_vision=("model.vision_tower.", "model.multi_modal_projector."),
           auto="AutoModelForImageTextToText", vllm_skip=NO_TORCHVISION),
    Family("qwen2_vl", "Qwen2VLConfig", _qwen2_vl, stack="model.layers", memory_stack="model.language_model.layers",
           vision=("visual.",), memory_vision=("model.visual.",), auto="AutoModelForImageTextToText",
           vllm_skip=NO_TORCHVISION),
]
BY_NAME = {f.name: f for f in FAMILIES}
PROMPT = "Question: Janet has 3 apples and buys 5 more. How many apples does she have? Step-by-step Answer:"


def language_weight(name: str, stack: str, vision: tuple[str, ...]) -> float:
    """The layer map of the README's table, for a tensor name, with the stack known by hand."""
    m = re.match(re.escape(stack) + r"\.(\d+)\.", name)
    if m is None:
        source = SWAP.vision if name.startswith(vision) else SWAP.non_layer
        return 1.0 if source == "language" else 0.0
    i, n, s = int(m.group(1)), LAYERS, SWAP
    if i < s.bottom or i >= n - s.top:
        return 1.0
    if i < s.bottom + s.tb:
        return 1 - (i - s.bottom + 1) / (s.tb + 1)
    if i >= n - s.top - s.tu:
        return (i - (n - s.top - s.tu) + 1) / (s.tu + 1)
    return 0.0


def load_all(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / "model.safetensors.index.json"
    shards = sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists() else ["model.safetensors"]
    out = {}
    for shard in shards:
        with safe_open(folder / shard, "pt") as f:
            out.update({k: f.get_tensor(k) for k in f.keys()})
    return out


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """family name -> its experts, build and transformers' greedy tokens, made once on first use."""
    cache: dict[str, dict] = {}

    def get(name: str) -> dict:
        if name not in cache:
            from hubswap.demo import make_family

            fam = BY_NAME[name]
            root = tmp_path_factory.mktemp(f"family-{name}")
            experts = make_family(root / "experts", config=fam.config(), seed=11, with_base=False)
            swap = {"transition_bottom": SWAP.tb, "transition_top": SWAP.tu, "vision": SWAP.vision if fam.vision else None}
            recipe = write_recipe(root / "r.toml", experts, bottom=SWAP.bottom, top=SWAP.top, transition=0,
                                  non_layer=SWAP.non_layer, name=f"tiny-{name}", swap=swap)
            result = build(recipe, BuildOptions(output=root / "build", evaluate=False, progress=False,
                                                max_shard_size="400KB"))
            cache[name] = {"experts": experts, "model": result.model_dir, "recipe": recipe}
        return cache[name]

    return get


@pytest.mark.parametrize("family", [f.name for f in FAMILIES])
def test_family_merges_bit_for_bit_and_computes_like_an_in_memory_swap(built, family):
    import torch
    import transformers
    fam = BY_NAME[family]
    b = built(family)
    model_dir, experts = b["model"], b["experts"]

    # 1. Every tensor is the layer map applied to the experts' tensors, bit for bit.
    merged, lang, task = load_all(model_dir), load_all(experts["language"]), load_all(experts["task"])
    assert set(merged) == set(task) == set(lang)
    assert any(name.startswith(fam.stack + ".") for name in merged)
    for name, t in merged.items():
        w = language_weight(name, fam.stack, fam.vision)
        want = lang[name] if w == 1 else task[name] if w == 0 else w * lang[name] + (1 - w) * task[name]
        assert t.dtype == want.dtype and torch.equal(t.view(torch.uint8), want.view(torch.uint8)), name

    # 2. The vision side is the chosen expert's, whole, and that is a real choice (the experts differ).
    vision = [n for n in merged if n.startswith(fam.vision)] if fam.vision else []
    if fam.vision:
        assert len(vision) > 20 and {n.split(".")[0] for n in vision} == {v.rstrip(".") for v in fam.vision}
        assert all(torch.equal(merged[n], task[n]) and not torch.equal(merged[n], lang[n]) for n in vision)

    # 3. The lock records the stack and which expert each whole part came from.
    lock = json.loads((model_dir / "hubswap" / "lock.json").read_text())["layer_map"]
    assert lock["stack"] == fam.stack and lock["non_layer"] == "language"
    assert [x["language_weight"] for x in lock["layers"]] == [1.0, 0.666667, 0.333333, 0.0, 0.5, 1.0]
    assert lock.get("vision") == ("task" if fam.vision else None)
    assert lock["modules"]["vision"] == sorted(v.rstrip(".") for v in fam.vision)

    # 4. It loads with its Auto class and computes exactly what swapping the loaded experts computes.
    auto = getattr(transformers, fam.auto)
    ids = torch.randint(8, 500, (2, 13), generator=torch.Generator().manual_seed(0))  # no image tokens
    ref = auto.from_pretrained(experts["task"], dtype=torch.float32).eval()
    lang_params = dict(auto.from_pretrained(experts["language"], dtype=torch.float32).named_parameters())
    with torch.no_grad():
        task_logits = ref(ids).logits
        for name, p in ref.named_parameters():
            w = language_weight(name, fam.memory_stack, fam.memory_vision)
            q = lang_params[name]
            p.copy_(q if w == 1 else p if w == 0 else w * q + (1 - w) * p)
        logits = auto.from_pretrained(model_dir).eval()(ids).logits
        assert torch.equal(logits, ref(ids).logits)
        assert not torch.allclose(logits, task_logits)  # and not trivially


def test_plan_card_and_transformers_evaluation_of_a_multimodal_merge(built, capsys):
    """plan and the card say where the vision side comes from; the transformers backend (what
    `[eval] backend = "transformers"` runs) loads the merge with its image-text-to-text class."""
    from hubswap.cli import main
    from hubswap.evaluate.backends import TransformersBackend
    from hubswap.evaluate.prompts import Prompt

    b = built("llava")
    card = (b["model"] / "README.md").read_text()
    assert "| vision tower, projector (`multi_modal_projector`, `vision_tower`) | vision | task expert | 0 | 1 |" in card
    assert "the vision tower and projector from the task expert." in card
    # tagged and loaded as what it is: the snippet's class is the one that loads it (below)
    assert "\npipeline_tag: image-text-to-text\n" in card
    assert "from transformers import AutoModelForImageTextToText, AutoProcessor" in card
    assert "AutoModelForCausalLM" not in card
    assert main(["plan", str(b["recipe"])]) == 0
    out = capsys.readouterr().out
    assert f"tiny-llava: {LAYERS} layers (config.json text_config.num_hidden_layers)" in out
    assert "multimodal: the vision tower and projector, whole, from the task expert" in out
    with TransformersBackend(b["model"], batch_size=1) as hf:
        assert type(hf.model).__name__ == "LlavaForConditionalGeneration"
        g = hf.generate([Prompt(lang="en", index=0, gold=8, stop=(), text=PROMPT)], max_new_tokens=6, progress=False)[0]
    assert 0 < g.tokens == len(g.token_ids) <= 6


@pytest.mark.skipif(find_spec("torchvision") is not None, reason="torchvision is installed here")
def test_vllm_without_torchvision_refuses_a_multimodal_model_in_one_line(built):
    from hubswap.errors import EvaluationError
    from hubswap.evaluate.backends import VllmBackend

    with pytest.raises(EvaluationError, match="vLLM needs torchvision to serve the multimodal "
                                              "LlavaForConditionalGeneration") as e:
        VllmBackend(built("llava")["model"])
    assert 'backend = "transformers"' in e.value.hint


VLLM_FAMILIES = [pytest.param(f.name, marks=pytest.mark.skip(reason=f.vllm_skip)) if f.vllm_skip else f.name
                 for f in FAMILIES]


@pytest.fixture(scope="module")
def vllm_in_process(vllm_cpu):
    """vLLM inspects each new architecture's class in a fresh interpreter (so that CUDA stays
    uninitialised in the caller), ~20-40 s per architecture here, cached only under the session's
    temporary VLLM_CACHE_ROOT. On the CPU there is no CUDA to protect: register vLLM's own class of
    each architecture tested so that it is inspected in this process. The engine is the same."""
    from vllm import ModelRegistry

    def register(arch: str) -> None:
        ModelRegistry.register_model(arch, ModelRegistry._try_load_model_cls(arch))

    return register


@pytest.mark.parametrize("family", VLLM_FAMILIES)
def test_vllm_serves_the_merged_family_like_transformers(built, vllm_in_process, family):
    """One in-process engine per family (a few seconds each): greedy fp32 tokens equal transformers'."""
    from hubswap.evaluate.backends import TransformersBackend, VllmBackend
    from hubswap.evaluate.prompts import Prompt

    model_dir = built(family)["model"]
    prompt = Prompt(lang="en", index=0, gold=8, stop=(), text=PROMPT)
    with TransformersBackend(model_dir, batch_size=1) as hf:
        want = hf.generate([prompt], max_new_tokens=12, progress=False)[0]
    vllm_in_process(json.loads((model_dir / "config.json").read_text())["architectures"][0])
    with VllmBackend(model_dir, seed=0, options={"kv_cache_memory_bytes": 32 << 20, "max_model_len": 256}) as engine:
        got = engine.generate([prompt], max_new_tokens=12, progress=False)[0]
    assert got.tokens == 12 and got.token_ids == want.token_ids



def test_analyze_counts_only_the_language_models_layers_of_a_multimodal_model(tmp_path):
    """The vision tower's own numbered layers are non-layer rows, not layers 0..L-1 of the stack."""
    from hubswap.analysis import analyze
    from hubswap.demo import make_family, region

    fam = make_family(tmp_path / "fam", config=BY_NAME["llava"].config(), seed=5, non_layer_change=0.0,
                      task_change=region(range(2, 4), 0.1), language_change=region(range(0, 2), 0.1))
    result = analyze(write_recipe(tmp_path / "r.toml", fam), tmp_path / "analysis", progress=False)
    layers = [r for r in result.rows if r.kind == "all"]
    assert [r.layer for r in layers] == list(range(LAYERS))
    assert [r.task > 0 for r in layers] == [False, False, True, True, False, False]
    assert [r.language > 0 for r in layers] == [True, True, False, False, False, False]
    tower = [r for r in result.rows if r.kind.startswith("vision_tower.encoder.layers.")]
    assert len(tower) > LAYERS and all(r.layer is None and r.task == r.language == 0 for r in tower)
