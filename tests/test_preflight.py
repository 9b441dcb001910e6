"""Preflight: incompatible experts are rejected from configs, tokenizers and headers alone."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hubswap.cli import main
from hubswap.demo import make_family
from hubswap.errors import IncompatibleModelsError, RecipeError, UnsafeWeightsError
from hubswap.pipeline import BuildOptions, build
from hubswap.preflight import LocalModelFiles, check_compatible
from tests.support.helpers import headers_only
from tests.support.recipes import write_recipe


def models(**paths: Path) -> dict:
    return {role: LocalModelFiles(role, p) for role, p in paths.items()}


def test_compatible_family_passes_from_headers_only(tiny_llama, tmp_path):
    fam = {r: headers_only(p, tmp_path / r) for r, p in tiny_llama.items()}
    pre = check_compatible(models(**fam))
    assert pre.num_layers == 8 and len(pre.tensors["task"]) == 75


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory, tiny_llama):
    """Variants of the tiny Llama, each incompatible in one way, truncated to their headers."""
    root = tmp_path_factory.mktemp("odd")
    out = {}
    out["layers"] = make_family(root / "layers", num_layers=6, seed=1)["task"]
    out["shapes"] = make_family(root / "shapes", hidden=32, seed=1)["task"]
    out["vocab_size"] = make_family(root / "vocab_size", vocab_size=640, seed=1)["task"]
    # Same vocabulary size, different token ids: swap two tokens in tokenizer.json.
    same_size = root / "vocab_ids"
    shutil.copytree(tiny_llama["language"], same_size)
    tok = json.loads((same_size / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (same_size / "tokenizer.json").write_text(json.dumps(tok))
    out["vocab_ids"] = same_size
    return {k: headers_only(p, root / f"{k}-headers") for k, p in out.items()}


@pytest.mark.parametrize("kind,words", [
    ("layers", ["config.json num_hidden_layers: 6 != 8"]),
    ("shapes", ["config.json hidden_size: 32 != 64", "tensor model.embed_tokens.weight has shape [512, 32] != [512, 64]"]),
    ("vocab_size", ["config.json vocab_size: 640 != 512", "tensor lm_head.weight has shape [640, 64] != [512, 64]",
                    "tokenizer vocabulary differs"]),
    ("vocab_ids", ["tokenizer vocabulary differs (2 token ids differ, e.g. id 300"]),
])
def test_incompatible_language_expert_rejected_before_weights(tiny_llama, odd_models, kind, words):
    with pytest.raises(IncompatibleModelsError) as e:
        check_compatible(models(base=tiny_llama["base"], task=tiny_llama["task"], language=odd_models[kind]))
    msg = str(e.value)
    for w in words:
        assert w in msg, msg
    assert all(m.startswith("language (") or m.startswith("language vs task") for m in e.value.mismatches), msg


def test_base_is_checked_too_and_every_mismatch_listed(tiny_llama, odd_models):
    with pytest.raises(IncompatibleModelsError) as e:
        check_compatible(models(base=odd_models["shapes"], task=tiny_llama["task"], language=odd_models["layers"]))
    roles = {m.split(" ")[0] for m in e.value.mismatches}
    assert roles == {"base", "language"} and len(e.value.mismatches) >= 4


def test_build_reports_incompatibility_and_writes_nothing(tiny_llama, odd_models, tmp_path, capsys):
    fam = dict(tiny_llama, language=odd_models["layers"])
    recipe = write_recipe(tmp_path / "r.toml", fam)
    assert main(["build", str(recipe), "--no-eval", "-o", str(tmp_path / "out")]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: models are not compatible") and "hint: layer swapping needs" in err
    assert not (tmp_path / "out").exists()


def test_pickled_weights_refused(tiny_llama, tmp_path, capsys):
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_llama["language"], pickled)
    for f in pickled.glob("model*.safetensors*"):
        f.unlink()
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded, ever")
    with pytest.raises(UnsafeWeightsError, match="only pickled weights"):
        check_compatible(models(task=tiny_llama["task"], language=pickled))
    recipe = write_recipe(tmp_path / "r.toml", dict(tiny_llama, language=pickled))
    assert main(["build", str(recipe), "--no-eval", "-o", str(tmp_path / "out")]) == 3
    assert "hint: hubswap reads safetensors only" in capsys.readouterr().err


def test_swap_too_large_for_the_model(tiny_llama, tmp_path, capsys):
    recipe = write_recipe(tmp_path / "r.toml", tiny_llama, bottom=5, top=3, transition=1)
    with pytest.raises(RecipeError) as e:
        build(recipe, BuildOptions(output=tmp_path / "out", evaluate=False, progress=False))
    assert "exceeds the model's 8 layers" in str(e.value) and f"{recipe}:" in str(e.value)
    assert not (tmp_path / "out").exists()
