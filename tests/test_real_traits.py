"""What the flagship recipe's real repos bring, one trait per test (issue 12).

The stand-ins of tests/support/standins.py carry every trait at once; each test here also makes the
trait's counterpart (a real difference) and checks that it is still refused or reported.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from hubswap.errors import IncompatibleModelsError
from hubswap.layermap import layer_map
from hubswap.preflight import LocalModelFiles, check_compatible, check_layer_map, resolved_config
from hubswap.recipe import Swap
from tests.support.helpers import headers_only


def models(**paths: Path) -> dict:
    return {role: LocalModelFiles(role, p) for role, p in paths.items()}


@pytest.fixture(scope="module")
def heads(standins, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("heads")
    return {r: headers_only(p, root / r) for r, p in standins.items()}


def variant(src: Path, dst: Path, *, config=None, tokenizer=None) -> Path:
    """A copy of a (headers-only) model folder with its config or tokenizer.json edited in place."""
    shutil.copytree(src, dst)
    for name, edit in (("config.json", config), ("tokenizer.json", tokenizer)):
        if edit is not None:
            data = json.loads((dst / name).read_text())
            edit(data)
            (dst / name).write_text(json.dumps(data))
    return dst


def test_standins_pass_preflight_with_only_the_stale_index_reported(heads):
    # head_dim on one side only, v4 next to v5 spellings, fp32 next to bf16 and both merges
    # spellings are told the same by preflight (each trait's own test below shows it is read, and
    # that its counterpart, a real difference, is refused): only the stale index is reported.
    pre = check_compatible(models(**heads))
    assert pre.num_layers == 32 and len(pre.tensors["language"]) == len(pre.tensors["task"]) == 291
    assert len(pre.warnings) == 1, pre.warnings
    assert "score.weight" in pre.warnings[0] and "lm_head.weight" in pre.warnings[0]
    assert pre.warnings[0].startswith("language model") and "the headers are used" in pre.warnings[0]


def test_config_meaning_resolves_head_dim_rope_and_dtype_spellings(heads):
    lang, task = (resolved_config(json.loads((heads[r] / "config.json").read_text())) for r in ("language", "task"))
    assert lang["head_dim"] == task["head_dim"] == 32
    assert lang["rope"] == task["rope"] and lang["rope"]["rope_theta"] == 500000.0
    assert (lang["dtype"], task["dtype"]) == ("float32", "bfloat16")


def test_spelling_rules_by_hand_agree_with_transformers_and_spare_its_import(heads):
    import subprocess
    import sys

    for role in heads:
        cfg = json.loads((heads[role] / "config.json").read_text())
        by_hand, library = resolved_config(cfg, library=False), resolved_config(cfg)
        for key in ("head_dim", "rope", "dtype", "num_key_value_heads", "tie_word_embeddings"):
            assert by_hand[key] == library[key], (role, key)
    # Configs that mean the same by the spelling rules never import transformers (nor torch).
    code = ("import sys; from hubswap.preflight import LocalModelFiles as M, check_compatible; "
            f"check_compatible({{r: M(r, p) for r, p in {({r: str(p) for r, p in heads.items()})!r}.items()}}); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_a_real_head_dim_difference_is_still_refused(heads, tmp_path):
    odd = variant(heads["language"], tmp_path / "odd", config=lambda c: c.update(head_dim=16))
    with pytest.raises(IncompatibleModelsError, match=r"config.json head_dim: 16 != 32"):
        check_compatible(models(task=heads["task"], language=odd))


def test_a_real_rope_scaling_difference_is_a_warning_naming_both_values(heads, tmp_path):
    odd = variant(heads["language"], tmp_path / "odd",
                  config=lambda c: c["rope_parameters"].update(factor=32.0, rope_theta=1e6))
    pre = check_compatible(models(task=heads["task"], language=odd))
    rope = [w for w in pre.warnings if "config.json rope:" in w]
    assert len(rope) == 1, pre.warnings
    assert "'factor': 32.0" in rope[0] and "'factor': 8.0" in rope[0] and "1000000.0" in rope[0], rope[0]


def test_merges_spelling_is_not_a_vocabulary_difference_but_other_merges_are(heads, tmp_path):
    # Same tokens and merges, the language side in "a b" and the task side in ["a", "b"]: passes.
    check_compatible(models(task=heads["task"], language=heads["language"]))

    def reorder(t):
        m = t["model"]["merges"]
        m[0], m[1] = m[1], m[0]

    odd = variant(heads["language"], tmp_path / "odd", tokenizer=reorder)
    with pytest.raises(IncompatibleModelsError, match="same tokens, different merges"):
        check_compatible(models(task=heads["task"], language=odd))


def _with_tensor(src: Path, dst: Path, name: str, shape=(2, 64)) -> Path:
    """A copy of a full model folder whose last shard also holds ``name`` (and the index lists it)."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(src, dst)
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    last = sorted(set(index["weight_map"].values()))[-1]
    state = load_file(str(dst / last))
    state[name] = torch.zeros(shape, dtype=next(iter(state.values())).dtype)
    save_file(state, str(dst / last), metadata={"format": "pt"})
    index["weight_map"][name] = last
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    return dst


def test_a_tensor_only_one_expert_has_is_named_and_refused_only_when_the_map_needs_it(standins, tmp_path):
    swap = Swap(bottom=5, top=2, transition=1, non_layer="language")
    # The language expert has score.weight (its classification head): named, never merged.
    lang = _with_tensor(standins["language"], tmp_path / "lang", "score.weight")
    pre = check_compatible(models(task=standins["task"], language=lang))
    assert any("only the language model has: score.weight" in w for w in pre.warnings), pre.warnings
    check_layer_map(pre, layer_map(swap, pre.num_layers, pre.stack))

    # The task expert has it: harmless while non-layer tensors come from the task expert ...
    task = _with_tensor(standins["task"], tmp_path / "task", "score.weight")
    pre = check_compatible(models(task=task, language=standins["language"]))
    assert any("only the task expert has: score.weight" in w for w in pre.warnings), pre.warnings
    check_layer_map(pre, layer_map(swap.model_copy(update={"non_layer": "task"}), pre.num_layers, pre.stack))
    # ... and a refusal naming it when the map takes non-layer tensors from the language expert.
    with pytest.raises(IncompatibleModelsError, match="language expert lacks 1 tensor.*score.weight"):
        check_layer_map(pre, layer_map(swap, pre.num_layers, pre.stack))


def test_a_layer_tensor_only_the_task_expert_has_is_refused_when_the_map_blends_that_layer(standins, tmp_path):
    """bottom=5, transition=1 on 32 layers: layer 5 is a blend (half language), layer 10 is the
    task expert's alone. A tensor only the task expert has may be in layer 10, not in layer 5."""
    swap = Swap(bottom=5, top=2, transition=1, non_layer="task")
    for layer, refused in ((10, False), (5, True)):
        name = f"model.layers.{layer}.mlp.extra_bias"
        task = _with_tensor(standins["task"], tmp_path / f"task-{layer}", name)
        pre = check_compatible(models(task=task, language=standins["language"]))
        lmap = layer_map(swap, pre.num_layers, pre.stack)
        if refused:
            with pytest.raises(IncompatibleModelsError, match=f"language expert lacks 1 tensor.*{re.escape(name)}"):
                check_layer_map(pre, lmap)
        else:
            check_layer_map(pre, lmap)


@pytest.mark.parametrize("text,lang,gold", [
    (r"Hivyo jumla ni $\boxed{18}$.", "sw", 18),
    (r"\boxed{18} and 3 more steps follow", "en", 18),  # the box wins over a later number
    (r"The total is \boxed{1,250} dollars; check: 1000 + 250", "en", 1250),
])
def test_the_robust_score_reads_a_boxed_answer(text, lang, gold):
    from hubswap.evaluate.scoring import score_response

    assert score_response(text, lang, gold).correct


def test_each_models_eos_set_is_read_from_its_own_files(standins):
    """OpenMath2 lists the instruct eos tokens in generation_config.json; Lugha-Llama has none, so
    its tokenizer's eos token is the set."""
    from transformers import AutoTokenizer

    from hubswap.evaluate.backends import eos_set
    from tests.support.standins import special_id

    task = eos_set(standins["task"], AutoTokenizer.from_pretrained(str(standins["task"])))
    assert task == {"source": "generation_config.json",
                    "ids": [special_id(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")],
                    "tokens": ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]}
    lang = eos_set(standins["language"], AutoTokenizer.from_pretrained(str(standins["language"])))
    assert lang == {"source": "tokenizer", "ids": [special_id("<|end_of_text|>")], "tokens": ["<|end_of_text|>"]}


def test_untrained_chat_tokens_taken_through_non_layer_are_a_warning(standins):
    """Lugha-Llama's rows for Llama 3's chat tokens are the base's; OpenMath2's eos set and chat
    template need them. Rows are compared as read from the shards (a few byte ranges)."""
    from hubswap.preflight import untrained_token_warnings

    fam = models(**standins)
    pre = check_compatible(fam)
    warn = untrained_token_warnings(fam, pre, non_layer="language", files_from="task", prompt="native-cot")
    assert len(warn) == 1, warn
    w = warn[0]
    assert "rows for <|start_header_id|>, <|end_header_id|>, <|eom_id|>, <|eot_id|> equal the base's" in w, w
    assert "the end-of-sequence set uses <|eom_id|>, <|eot_id|>" in w and "the chat template uses" in w, w
    assert "<|end_of_text|>" not in w.split("while")[0]  # continued pretraining trained that one
    chat = untrained_token_warnings(fam, pre, non_layer="language", files_from="task", prompt="chat")
    assert "the chat prompt mode uses" in chat[0]
    # The task expert trained them: taking its embeddings is fine; so is a model without a chat template.
    assert untrained_token_warnings(fam, pre, non_layer="task", files_from="task", prompt="chat") == []
    assert untrained_token_warnings(fam, pre, non_layer="language", files_from="language", prompt="native-cot") == []
    # Without a base there is nothing to compare with.
    no_base = {r: m for r, m in fam.items() if r != "base"}
    assert untrained_token_warnings(no_base, pre, non_layer="language", files_from="task", prompt="chat") == []


def test_transformers_backend_loads_the_stale_index_model_and_stops_on_its_eos(standins):
    """The language stand-in (index listing score.weight, no generation_config.json) loads in the
    transformers backend in bf16 and stops on its tokenizer's eos token at once, as recorded."""
    from hubswap.evaluate.backends import TransformersBackend
    from hubswap.evaluate.prompts import Prompt
    from tests.support.standins import special_id

    with TransformersBackend(standins["language"], dtype="bfloat16") as backend:
        assert backend.engine_args["dtype"] == "bfloat16"
        assert backend.engine_args["eos"] == {"source": "tokenizer", "ids": [special_id("<|end_of_text|>")],
                                              "tokens": ["<|end_of_text|>"]}
        out = backend.generate([Prompt("sw", 0, 1, ("Swali:",), text="Swali: 1 + 1?\nJibu:")],
                               max_new_tokens=16, progress=False)
    assert (out[0].finish_reason, out[0].tokens, out[0].token_ids) == ("stop", 1, (special_id("<|end_of_text|>"),))
