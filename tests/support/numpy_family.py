"""A tiny Llama family written with numpy and ``safetensors.numpy`` only: no torch, no transformers.

The core-install tests run this file with the Python of a venv that holds only hubswap's core
dependencies, so the experts they merge never passed through torch. The tensors have the names,
shapes and config of ``LlamaForCausalLM`` (what ``hubswap.demo.make_family`` writes through
transformers), in two shards with an index; the tokenizer files are copied from ``--tokenizer``
(made by ``hubswap.demo.make_tokenizer``, which needs ``tokenizers`` but not torch).

    python tests/support/numpy_family.py OUT --tokenizer TOKENIZER_DIR
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

LAYERS, HIDDEN, HEADS, KV_HEADS, VOCAB = 6, 64, 4, 2, 512
INTERMEDIATE = 2 * HIDDEN
# Where each expert changed the base, per layer: the task expert its middle, the language expert
# its bottom and top layer (like the fine-tunes the paper swaps).
PROFILES = {"base": None, "task": (0, 0.05, 0.05, 0.05, 0.05, 0), "language": (0.05, 0, 0, 0, 0, 0.05)}
NON_LAYER_CHANGE = 0.02


def config() -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE, "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "head_dim": HIDDEN // HEADS, "vocab_size": VOCAB,
        "hidden_act": "silu", "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "attention_bias": False,
        "mlp_bias": False, "max_position_embeddings": 4096, "tie_word_embeddings": False,
        "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "dtype": "float32",
    }


def base_tensors(rng: np.random.Generator) -> dict[str, np.ndarray]:
    kv = KV_HEADS * HIDDEN // HEADS
    shapes = {"model.embed_tokens.weight": (VOCAB, HIDDEN), "model.norm.weight": (HIDDEN,),
              "lm_head.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.k_proj.weight": (kv, HIDDEN),
            p + "self_attn.v_proj.weight": (kv, HIDDEN), p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": (INTERMEDIATE, HIDDEN), p + "mlp.up_proj.weight": (INTERMEDIATE, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, INTERMEDIATE),
            p + "input_layernorm.weight": (HIDDEN,), p + "post_attention_layernorm.weight": (HIDDEN,),
        }
    return {name: (np.ones(shape) if len(shape) == 1 else rng.normal(0, 0.02, shape)).astype(np.float32)
            for name, shape in shapes.items()}


def layer_of(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[2]) if parts[:2] == ["model", "layers"] else None


def write_model(path: Path, tensors: dict[str, np.ndarray], tokenizer: Path) -> None:
    """Two shards (embeddings and the bottom half; the rest) and their index, like save_pretrained."""
    path.mkdir(parents=True)
    names = sorted(tensors)
    first = [n for n in names if n == "model.embed_tokens.weight" or (layer_of(n) or LAYERS) < LAYERS // 2]
    shards = [first, [n for n in names if n not in first]]
    weight_map = {}
    for k, shard in enumerate(shards, 1):
        fname = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: tensors[n] for n in shard}, str(path / fname), metadata={"format": "pt"})
        weight_map |= {n: fname for n in shard}
    total = sum(t.nbytes for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (path / "config.json").write_text(json.dumps(config(), indent=2))
    gen = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "do_sample": False}
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2))
    for f in tokenizer.iterdir():
        shutil.copy2(f, path / f.name)


def write_tokenizer(out: Path) -> Path:
    """A byte-level BPE tokenizer's files, written with ``tokenizers`` only (no transformers): for
    tests that merge and check models but never run them (``hubswap.demo.make_tokenizer`` makes
    one a model can be evaluated with)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    specials = ["<pad>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["Swahili and math, layer by layer."] * 4, trainer=trainer)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "model_max_length": 2048}, indent=2))
    return out


def make_family(root: Path, tokenizer: Path, seed: int = 0) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    base = base_tensors(rng)
    out = {}
    for role, profile in PROFILES.items():
        tensors = {}
        for name, t in base.items():
            i = layer_of(name)
            scale = 0.0 if profile is None else NON_LAYER_CHANGE if i is None else profile[i]
            tensors[name] = (t + scale * rng.standard_normal(t.shape)).astype(np.float32) if scale else t
        write_model(root / role, tensors, tokenizer)
        out[role] = root / role
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--tokenizer", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    for role, path in make_family(args.out, args.tokenizer, args.seed).items():
        print(role, path)
