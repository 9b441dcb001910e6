"""Tiny stand-ins for the three repos of recipes/llama-swahili-math.toml, with their real traits.

Each is a 32-layer Llama with Llama 3.1 8B's tensor names, rope settings and special-token layout
(the 256 special tokens after the ordinary vocabulary, ``<|eot_id|>`` at offset 9), shrunk to a
hidden size of 64 (head size 32: vLLM's CPU attention needs >= 32) and a 512-token byte-level BPE.
What each one carries from its real repo (issue 12):

meta-llama/Llama-3.1-8B (``base``)
    bf16, 4 shards, transformers v4 config (``rope_theta`` + ``rope_scaling`` llama3,
    ``torch_dtype``, no ``head_dim``), no chat template, merges saved as pairs, and the pickled
    ``original/consolidated.00.pth`` + ``params.json`` + ``original/tokenizer.model`` beside them.
nvidia/OpenMath2-Llama3.1-8B (``task``)
    bf16, 2 shards, v4 config without ``head_dim``, the Llama 3.1 instruct chat template,
    generation_config eos ``<|end_of_text|>``, ``<|eom_id|>``, ``<|eot_id|>``; its special
    tokens' rows were trained (they differ from the base's).

All three end every answer at once (``_answer_nothing``), so evaluating them takes seconds.
Lugha-Llama/Lugha-Llama-8B-wura (``language``)
    float32, 7 shards, a v5 config (``rope_parameters``, ``dtype``) with ``head_dim``, no
    generation_config.json, bos/eos ``<|begin_of_text|>``/``<|end_of_text|>`` and no pad, merges
    saved as ``"a b"`` strings, the chat tokens' rows equal to the base's (never trained), and a
    stale index that lists ``score.weight`` (from its first, sequence-classification upload) where
    the last shard's header holds ``lm_head.weight``.
"""

from __future__ import annotations

import json
from pathlib import Path

REPOS = {
    "base": "meta-llama/Llama-3.1-8B",
    "task": "nvidia/OpenMath2-Llama3.1-8B",
    "language": "Lugha-Llama/Lugha-Llama-8B-wura",
}
SHARDS = {"base": 4, "task": 2, "language": 7}
# What the three repos' cards state (their YAML metadata) and the licence files they carry, as
# `hubswap build` reads them to decide the merge's licence (hubswap.licenses). The agreement's
# text is shortened to its first lines.
LLAMA_3_1_AGREEMENT = (
    "LLAMA 3.1 COMMUNITY LICENSE AGREEMENT\nLlama 3.1 Version Release Date: July 23, 2024\n\n"
    "“Agreement” means the terms and conditions for use, reproduction, distribution and modification of the\n"
    "Llama Materials set forth herein. (A stand-in: the agreement's first lines only.)\n"
)
USE_POLICY = "# Llama 3.1 Acceptable Use Policy\n\n(A stand-in: the policy's title only.)\n"
CARDS = {
    "base": {"license": "llama3.1", "datasets": [], "files": {"LICENSE": LLAMA_3_1_AGREEMENT, "USE_POLICY.md": USE_POLICY}},
    "task": {"license": "llama3.1", "datasets": ["nvidia/OpenMathInstruct-2"], "files": {"LICENSE": LLAMA_3_1_AGREEMENT}},
    "language": {"license": "llama3.1", "datasets": ["castorini/wura"], "files": {}},
}


def write_card(folder: Path, title: str, *, license: str | None = None, datasets=(), files=None, **meta) -> None:
    """A model's README.md with YAML metadata (what huggingface_hub's ModelCard reads), and its
    licence files (``files``: name -> text)."""
    header = {k: v for k, v in {"license": license, "datasets": list(datasets) or None, **meta}.items() if v}
    yaml = "".join(f"{k}: {json.dumps(v)}\n" for k, v in header.items())
    (folder / "README.md").write_text((f"---\n{yaml}---\n" if yaml else "") + f"# {title}\n")
    for name, text in (files or {}).items():
        (folder / name).write_text(text)
ORDINARY = 512  # learned BPE tokens; Llama 3 has 128000
# Llama 3.1's special tokens at their offsets from the end of the ordinary vocabulary.
SPECIAL = {
    "<|begin_of_text|>": 0, "<|end_of_text|>": 1, "<|finetune_right_pad_id|>": 4,
    "<|start_header_id|>": 6, "<|end_header_id|>": 7, "<|eom_id|>": 8, "<|eot_id|>": 9, "<|python_tag|>": 10,
}
VOCAB = ORDINARY + 256
ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192, "rope_type": "llama3"}
# The Llama 3.1 instruct template, shortened (no tools): bos, header, content, <|eot_id|>.
CHAT_TEMPLATE = (
    "{{- bos_token }}{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def special_id(token: str) -> int:
    return ORDINARY + SPECIAL[token]


def _special_names() -> list[str]:
    names = [f"<|reserved_special_token_{k}|>" for k in range(256)]
    for tok, off in SPECIAL.items():
        names[off] = tok
    # Keep the real reserved numbering out of the way: the names only need to be distinct.
    return names


def make_tokenizers(root: Path) -> dict[str, dict]:
    """tokenizer.json (as a dict) trained once; each role saves it in its own spelling."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from hubswap.demo import _CORPUS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=ORDINARY, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    assert tok.get_vocab_size() == ORDINARY, tok.get_vocab_size()
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(n, special=True, normalized=False) for n in _special_names()])
    bos = special_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
        special_tokens=[("<|begin_of_text|>", bos)])
    root.mkdir(parents=True, exist_ok=True)
    tok.save(str(root / "tokenizer.json"))
    pairs = json.loads((root / "tokenizer.json").read_text())
    assert isinstance(pairs["model"]["merges"][0], list), "tokenizers >= 0.20 saves merges as pairs"
    strings = json.loads(json.dumps(pairs))
    strings["model"]["merges"] = [" ".join(m) for m in pairs["model"]["merges"]]
    return {"pairs": pairs, "strings": strings}


def _tokenizer_files(folder: Path, tokenizer: dict, *, eos: str, chat: bool) -> None:
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    cfg = {"bos_token": "<|begin_of_text|>", "eos_token": eos, "clean_up_tokenization_spaces": True,
           "model_input_names": ["input_ids", "attention_mask"], "model_max_length": 131072,
           "tokenizer_class": "PreTrainedTokenizerFast"}
    if chat:
        cfg["chat_template"] = CHAT_TEMPLATE
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<|begin_of_text|>", "eos_token": eos}))


def _config(role: str) -> dict:
    cfg = {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": special_id("<|begin_of_text|>"), "eos_token_id": special_id("<|end_of_text|>"),
        "hidden_act": "silu", "hidden_size": 64, "initializer_range": 0.02, "intermediate_size": 128,
        "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama",
        "num_attention_heads": 2, "num_hidden_layers": 32, "num_key_value_heads": 1, "pretraining_tp": 1,
        "rms_norm_eps": 1e-05, "tie_word_embeddings": False, "use_cache": True, "vocab_size": VOCAB,
    }
    if role == "language":  # saved by transformers v5: rope_parameters, dtype, head_dim
        cfg.update(head_dim=32, dtype="float32", transformers_version="5.0.0",
                   rope_parameters={**ROPE, "rope_theta": 500000.0})
    else:  # transformers v4.4x, as the real files: no head_dim
        cfg.update(rope_theta=500000.0, rope_scaling=dict(ROPE), torch_dtype="bfloat16",
                   transformers_version="4.43.0.dev0")
    if role == "task":
        cfg["eos_token_id"] = [special_id(t) for t in ("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>")]
    return cfg


def _save_shards(folder: Path, state: dict, n: int, *, stale_index: bool = False) -> None:
    """``n`` shards named like transformers', tensors in order, and the index."""
    from safetensors.torch import save_file

    names = list(state)
    per = -(-len(names) // n)
    groups = [names[k * per:(k + 1) * per] for k in range(n)]
    weight_map, total = {}, 0
    for k, group in enumerate(groups, 1):
        shard = f"model-{k:05d}-of-{n:05d}.safetensors"
        save_file({g: state[g].contiguous() for g in group}, str(folder / shard), metadata={"format": "pt"})
        for g in group:
            weight_map[g] = shard
            total += state[g].numel() * state[g].element_size()
    if stale_index:  # first uploaded as LlamaForSequenceClassification; the index never re-uploaded
        weight_map["score.weight"] = weight_map.pop("lm_head.weight")
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))


def _answer_nothing(state: dict) -> None:
    """Make the family end every generation at once with ``<|end_of_text|>``, so that evaluating
    it costs one decoding step per question: hidden dimension 0 carries a large constant from
    every token's embedding that no layer writes to, and only ``<|end_of_text|>``'s lm_head row
    reads it. The experts' noise leaves this intact."""
    state["model.embed_tokens.weight"][:, 0] = 100.0
    for name, t in state.items():
        if name.endswith(("self_attn.o_proj.weight", "mlp.down_proj.weight")):
            t[0, :] = 0.0
    state["lm_head.weight"][:, 0] = 0.0
    state["lm_head.weight"][special_id("<|end_of_text|>"), 0] = 10.0


def make_standins(root: Path, seed: int = 0) -> dict[str, Path]:
    """Write base/, task/ and language/ under ``root``; returns their folders."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from hubswap.layermap import LayerStack

    root = Path(root)
    toks = make_tokenizers(root / "_tokenizer")
    torch.manual_seed(seed)
    cfg = {k: v for k, v in _config("base").items() if k not in ("architectures", "transformers_version")}
    base_model = LlamaForCausalLM(LlamaConfig(**cfg))
    base = {k: v.detach() for k, v in base_model.state_dict().items()}
    _answer_nothing(base)
    base = {k: v.to(torch.bfloat16) for k, v in base.items()}
    layer_index = LayerStack("model.layers", cfg["num_hidden_layers"]).index
    # Continued pretraining saw <|begin_of_text|> and <|end_of_text|>, never the chat tokens.
    trained = {special_id("<|begin_of_text|>"), special_id("<|end_of_text|>")}
    untrained = [i for i in range(ORDINARY, VOCAB) if i not in trained]
    out = {}
    for n, role in enumerate(("base", "task", "language")):
        gen = torch.Generator().manual_seed(seed * 100 + n)
        state = {}
        for name, t in base.items():
            if role == "base":
                state[name] = t.clone()
                continue
            x = t.float()
            i = layer_index(name)
            scale = 0.02 if i is None else 0.05
            changed = x + scale * torch.randn(x.shape, generator=gen)
            if role == "language" and name in ("model.embed_tokens.weight", "lm_head.weight"):
                changed[untrained] = x[untrained]  # rows continued pretraining never trained
            state[name] = changed.to(torch.float32 if role == "language" else torch.bfloat16)
        folder = root / role
        folder.mkdir(parents=True, exist_ok=True)
        _save_shards(folder, state, SHARDS[role], stale_index=role == "language")
        (folder / "config.json").write_text(json.dumps(_config(role), indent=2, sort_keys=True))
        eos = "<|eot_id|>" if role == "task" else "<|end_of_text|>"
        _tokenizer_files(folder, toks["strings" if role == "language" else "pairs"], eos=eos, chat=role == "task")
        if role != "language":
            gen_eos = _config(role)["eos_token_id"]
            (folder / "generation_config.json").write_text(json.dumps(
                {"bos_token_id": special_id("<|begin_of_text|>"), "eos_token_id": gen_eos,
                 "do_sample": True, "temperature": 0.6, "top_p": 0.9, "transformers_version": "4.43.0.dev0"},
                indent=2))
        if role == "base":  # Meta's original checkpoint beside the safetensors: pickled, never read
            (folder / "original").mkdir()
            (folder / "original" / "consolidated.00.pth").write_bytes(b"\x80\x02not a real pickle")
            (folder / "original" / "params.json").write_text('{"dim": 64, "n_layers": 32}')
            (folder / "original" / "tokenizer.model").write_bytes(b"tiktoken ranks stand-in")
        write_card(folder, f"stand-in for {REPOS[role]}: tiny random weights for hubswap's tests", **CARDS[role])
        out[role] = folder
    return out
