"""Finding the language model's layer stack in a model's tensor names (``hubswap.layermap``), and
the preflight error when it cannot be found. Real tiny families are in test_families.py."""

from __future__ import annotations

import json

import pytest

from tests.support.recipes import write_recipe


def _shapes(prefixes: dict[str, int], vocab: int = 512, extra: tuple[str, ...] = ()) -> dict[str, list[int]]:
    out = {f"{p}.{i}.mlp.weight": [8, 8] for p, n in prefixes.items() for i in range(n)}
    return out | {name: [vocab, 8] for name in extra}


@pytest.mark.engine  # a text_config without a layer count: transformers' config class knows the default
def test_the_stack_is_the_one_prefix_numbered_exactly_0_to_L_minus_1():
    from hubswap.layermap import LayerStack, find_layer_stack

    cfg = {"num_hidden_layers": 4, "vocab_size": 512}
    # a truncated copy of a stack and nested numbering (experts, a projector's Sequential) do not count
    shapes = _shapes({"model.layers": 4, "mtp.layers": 3}) | {"model.layers.2.experts.3.w": [8], "proj.mlp.0.w": [8]}
    assert find_layer_stack(cfg, shapes) == LayerStack("model.layers", 4)
    # GPT-2 style names and count
    assert find_layer_stack({"n_layer": 2}, _shapes({"transformer.h": 2})).prefix == "transformer.h"
    # the count is the text part's; a text_config without it means its model type's default
    mm = {"text_config": {"model_type": "llama", "vocab_size": 512}, "vision_config": {"num_hidden_layers": 32}}
    assert find_layer_stack(mm, _shapes({"language_model.model.layers": 32, "vision_tower.encoder.layers": 24})) \
        == LayerStack("language_model.model.layers", 32, multimodal=True)


def test_a_one_part_prefix_is_a_stack_too():
    """Meta's original Llama and Mistral checkpoints name their layers ``layers.0.attention.wq.weight``:
    a prefix of one part, beside ``tok_embeddings``, ``norm`` and ``output`` at the top."""
    from hubswap.layermap import LayerStack, LayerStackError, find_layer_stack, numbered_prefixes

    names = {"tok_embeddings.weight": [512, 8], "norm.weight": [8], "output.weight": [512, 8]}
    names |= {f"layers.{i}.{t}.weight": [8, 8] for i in range(3) for t in ("attention.wq", "feed_forward.w1")}
    assert numbered_prefixes(names) == {"layers": {0, 1, 2}}
    stack = find_layer_stack({"num_hidden_layers": 3, "vocab_size": 512}, names)
    assert stack == LayerStack("layers", 3)
    assert [stack.index(n) for n in ("layers.2.attention.wq.weight", "layers.3.attention.wq.weight",
                                      "tok_embeddings.weight", "layers_norm.weight")] == [2, None, None, None]
    assert stack.part("output.weight") == stack.part("norm.weight") == "non-layer"
    assert stack.modules(names) == {"non-layer": ["norm", "output", "tok_embeddings"], "vision": []}
    # two one-part stacks as deep share the top module with the embeddings: nothing tells them apart
    both = names | {f"blocks.{i}.mlp.weight": [8, 8] for i in range(3)}
    with pytest.raises(LayerStackError, match="cannot tell which is the language model's: blocks, layers$"):
        find_layer_stack({"num_hidden_layers": 3, "vocab_size": 512}, both)


def test_equally_deep_stacks_are_told_apart_by_the_token_embeddings_beside_one():
    from hubswap.layermap import find_layer_stack

    cfg = {"text_config": {"num_hidden_layers": 3, "vocab_size": 512}}
    both = {"model.language_model.layers": 3, "model.vision_tower.encoder.layers": 3}
    stack = find_layer_stack(cfg, _shapes(both, extra=("model.language_model.embed_tokens.weight",)))
    assert stack.prefix == "model.language_model.layers"
    assert stack.part("model.vision_tower.encoder.layers.0.mlp.weight") == "vision"
    assert stack.part("model.language_model.norm.weight") == stack.part("lm_head.weight") == "non-layer"


def test_a_flat_config_with_a_vision_config_is_multimodal_too():
    """The first Qwen2-VL checkpoints: text keys at the top, the vision tower's in vision_config."""
    from hubswap.layermap import find_layer_stack

    cfg = {"num_hidden_layers": 2, "vocab_size": 512, "vision_config": {"depth": 3}}
    stack = find_layer_stack(cfg, _shapes({"model.layers": 2, "visual.blocks": 3}, extra=("model.embed_tokens.weight",)))
    assert (stack.prefix, stack.multimodal) == ("model.layers", True)
    assert stack.modules(["visual.blocks.0.mlp.weight", "visual.merger.mlp.0.weight", "lm_head.weight",
                          "model.embed_tokens.weight"]) == {"non-layer": ["lm_head", "model.embed_tokens"],
                                                            "vision": ["visual"]}


@pytest.mark.parametrize("cfg,shapes,message", [
    ({"num_hidden_layers": 4}, _shapes({"model.layers": 3, "model.extra": 5}),
     "no tensor-name prefix is followed by exactly the layers 0..3 that config.json num_hidden_layers = 4 asks "
     "for; numbered prefixes: model.extra (0..4), model.layers (0..2)"),
    ({"text_config": {"num_hidden_layers": 2}}, _shapes({"a.layers": 2, "b.blocks": 2}),
     "2 tensor-name prefixes are followed by exactly the layers 0..1 of config.json "
     "text_config.num_hidden_layers = 2, and hubswap cannot tell which is the language model's: a.layers, b.blocks"),
    ({"vision_config": {}}, _shapes({"model.layers": 2}),
     "config.json has neither num_hidden_layers nor text_config.num_hidden_layers"),
])
def test_no_stack_or_two_stacks_is_an_error_naming_the_prefixes(cfg, shapes, message):
    from hubswap.layermap import LayerStackError, find_layer_stack

    with pytest.raises(LayerStackError) as e:
        find_layer_stack(cfg, shapes)
    assert str(e.value) == message


def test_build_refuses_two_candidate_stacks_before_merging(tmp_path, capsys):
    """Through the CLI: exit 3, one error naming both prefixes, no traceback, no build folder."""
    import numpy as np
    from safetensors.numpy import save_file

    from hubswap.cli import main

    experts = {}
    for role in ("task", "language"):
        folder = tmp_path / role
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "toy", "num_hidden_layers": 2}))
        save_file({f"{p}.{i}.w": np.zeros(4, dtype=np.float32) for p in ("enc.layers", "dec.layers") for i in range(2)},
                  str(folder / "model.safetensors"))
        experts[role] = folder
    recipe = write_recipe(tmp_path / "r.toml", experts, bottom=1, top=0, transition=0)
    assert main(["build", str(recipe), "--no-eval", "-o", str(tmp_path / "out")]) == 3
    err = capsys.readouterr().err
    assert "2 tensor-name prefixes are followed by exactly the layers 0..1" in err
    assert "dec.layers, enc.layers" in err and "Traceback" not in err
    assert not (tmp_path / "out" / "model").exists()
