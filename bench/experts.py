"""Benchmark inputs: pairs of random experts with real model shapes, made once and cached.

Each tensor is drawn and written directly with ``safetensors`` (no model is instantiated), sharded
the way ``save_pretrained`` shards Hub checkpoints: ``model-0000k-of-0000n.safetensors`` of at most
``max_shard_bytes`` plus ``model.safetensors.index.json``. The config is a real ``LlamaConfig``, so
``AutoModelForCausalLM`` and mergekit load the experts; the tokenizer is the small offline BPE of
``hubswap.demo`` (a 128k vocabulary cannot be trained from a few sentences, and the merge never
reads the tokenizer's size), while ``vocab_size`` stays the real model's.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

FORMAT_VERSION = 1  # bump when what is written changes, so caches are remade


@dataclass(frozen=True)
class Shape:
    name: str
    num_layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool = True
    max_shard_bytes: int = 1_000_000_000  # "1GB", as in save_pretrained(max_shard_size="1GB")
    language_dtype: str = "bfloat16"  # "float32": every tensor taken from it is cast to bf16
    # Another shape's name whose task expert this pair shares (same tensors), instead of its own:
    # saves making, storing and caching the same bytes twice. ``task`` is then a relative symlink.
    task_from: str | None = None

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def tensors(self) -> list[tuple[str, tuple[int, ...]]]:
        """Names and shapes in the order ``LlamaForCausalLM.state_dict()`` lists them."""
        h, i, kv = self.hidden, self.intermediate, self.kv_heads * self.head_dim
        out: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (self.vocab, h))]
        for n in range(self.num_layers):
            p = f"model.layers.{n}."
            out += [
                (p + "self_attn.q_proj.weight", (h, h)),
                (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.o_proj.weight", (h, h)),
                (p + "mlp.gate_proj.weight", (i, h)),
                (p + "mlp.up_proj.weight", (i, h)),
                (p + "mlp.down_proj.weight", (h, i)),
                (p + "input_layernorm.weight", (h,)),
                (p + "post_attention_layernorm.weight", (h,)),
            ]
        out.append(("model.norm.weight", (h,)))
        if not self.tied:
            out.append(("lm_head.weight", (self.vocab, h)))
        return out

    def num_values(self) -> int:
        total = 0
        for _, shape in self.tensors():
            n = 1
            for d in shape:
                n *= d
            total += n
        return total

    def num_bytes(self, dtype: str = "bfloat16") -> int:
        """Tensor bytes of one expert in ``dtype``."""
        return self.num_values() * DTYPE_BYTES[dtype]

    def pair_bytes(self) -> int:
        """Bytes on disk of the pair (the task expert counted once, even when shared)."""
        task = 0 if self.task_from else self.num_bytes()
        return task + self.num_bytes(self.language_dtype)


DTYPE_BYTES = {"bfloat16": 2, "float32": 4}

# Llama 3.2 1B: 16 layers, hidden 2048, 128k vocabulary, tied embeddings, about 2.5 GB in bf16.
LLAMA_1B = Shape("llama-3.2-1b", num_layers=16, hidden=2048, intermediate=8192, heads=32, kv_heads=8,
                 vocab=128256)
# Same tensor shapes, 16 then 32 layers: what changes between the two is only the number of layers.
WIDE_16 = Shape("h1024-16L", num_layers=16, hidden=1024, intermediate=4096, heads=16, kv_heads=4,
                vocab=128256)
WIDE_32 = Shape("h1024-32L", num_layers=32, hidden=1024, intermediate=4096, heads=16, kv_heads=4,
                vocab=128256)
# The flagship case (issue 14): the same 1B pair, but the language expert is float32, so the bottom
# and top layers and the embeddings are cast to bf16. The task expert is the bf16 pair's.
LLAMA_1B_F32 = Shape("llama-3.2-1b-f32lang", num_layers=16, hidden=2048, intermediate=8192, heads=32,
                     kv_heads=8, vocab=128256, language_dtype="float32", task_from="llama-3.2-1b")
# 8B shapes for hosts with the disk and the cores (bench/merge.py --shape 8b): Llama 3.1 8B (untied,
# 5 GB shards as on the Hub, 16 GB per expert), and a 24-layer pair of that width whose language
# expert is float32 (task 12.6 GB, language 25.1 GB).
LLAMA_8B = Shape("llama-3.1-8b", num_layers=32, hidden=4096, intermediate=14336, heads=32, kv_heads=8,
                 vocab=128256, tied=False, max_shard_bytes=5_000_000_000)
LLAMA_8B_F32 = Shape("llama-8b-24L-f32lang", num_layers=24, hidden=4096, intermediate=14336, heads=32,
                     kv_heads=8, vocab=128256, tied=False, max_shard_bytes=5_000_000_000,
                     language_dtype="float32")
SHAPES = {s.name: s for s in (LLAMA_1B, LLAMA_1B_F32, WIDE_16, WIDE_32, LLAMA_8B, LLAMA_8B_F32)}


def _config(shape: Shape, dtype: str) -> dict:
    from transformers import LlamaConfig

    cfg = LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.num_layers, num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads, head_dim=shape.head_dim, max_position_embeddings=131072,
        rms_norm_eps=1e-5, tie_word_embeddings=shape.tied, bos_token_id=1, eos_token_id=2,
        pad_token_id=0, architectures=["LlamaForCausalLM"], dtype=dtype,
    )
    return cfg.to_dict()


def _write_expert(shape: Shape, out: Path, seed: int, dtype: str = "bfloat16") -> None:
    import torch
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    # On a GPU host the values are drawn on the GPU (an 8B expert in ~20 s instead of minutes).
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator(device=device).manual_seed(seed)
    tdtype, width = getattr(torch, dtype), DTYPE_BYTES[dtype]
    size = 0
    # Shard boundaries first (sizes are known), so each shard is drawn, written and freed in turn.
    plan: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    for name, dims in shape.tensors():
        nbytes = width * int(torch.Size(dims).numel())
        if plan[-1] and size + nbytes > shape.max_shard_bytes:
            plan.append([])
            size = 0
        plan[-1].append((name, dims))
        size += nbytes
    weight_map, total = {}, 0
    for k, group in enumerate(plan, start=1):
        fname = f"model-{k:05d}-of-{len(plan):05d}.safetensors"
        shard = {}
        for name, dims in group:
            if len(dims) == 1:  # RMSNorm weights sit around 1
                t = 1 + 0.05 * torch.randn(dims, generator=gen, device=device)
            else:
                t = 0.02 * torch.randn(dims, generator=gen, device=device)
            shard[name] = t.to(tdtype).cpu()
            del t
            weight_map[name] = fname
            total += shard[name].numel() * width
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        del shard
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    (out / "config.json").write_text(json.dumps(_config(shape, dtype), indent=2) + "\n")
    gen_cfg = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen_cfg, indent=2) + "\n")
    from hubswap.demo import make_tokenizer

    make_tokenizer(out, vocab_size=512)


RECIPE = """\
# Benchmark recipe (bench/merge.py): the layer swap of issue 6 on a pair of random experts.
#   hubswap build {name}.toml --no-eval --no-push --output OUT
schema_version = 1
name = "{name}"

[models.task]
path = "task"

[models.language]
path = "language"

[swap]
bottom = 5
top = 2
transition = 1
non_layer = "language"
files_from = "task"
dtype = "bfloat16"
"""


def _stamp(shape: Shape) -> dict:
    return {"format": FORMAT_VERSION, **asdict(shape)}


def pair_ready(shape: Shape, cache: Path) -> bool:
    """Whether ``shape``'s pair is already made under ``cache`` (and its shared task expert)."""
    f = cache / "experts" / shape.name / "stamp.json"
    ok = f.exists() and json.loads(f.read_text()) == _stamp(shape)
    return ok and (not shape.task_from or pair_ready(SHAPES[shape.task_from], cache))


def ensure_pair(shape: Shape, cache: Path, log=print) -> Path:
    """The folder holding ``task/``, ``language/`` and ``recipe.toml`` for ``shape``; made if missing."""
    if shape.task_from:
        ensure_pair(SHAPES[shape.task_from], cache, log)
    root = cache / "experts" / shape.name
    stamp = _stamp(shape)
    stamp_file = root / "stamp.json"
    if stamp_file.exists() and json.loads(stamp_file.read_text()) == stamp:
        return root
    if root.exists():
        shutil.rmtree(root)
    tmp = root.with_name(root.name + ".partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    log(f"making the {shape.name} expert pair ({shape.pair_bytes() / 1e9:.1f} GB) under {root} ...")
    if shape.task_from:
        tmp.mkdir(parents=True)
        (tmp / "task").symlink_to(Path("..") / shape.task_from / "task")
    else:
        _write_expert(shape, tmp / "task", 1)
    _write_expert(shape, tmp / "language", 2, shape.language_dtype)
    (tmp / "recipe.toml").write_text(RECIPE.format(name=f"bench-{shape.name}"))
    (tmp / "stamp.json").write_text(json.dumps(stamp, indent=2) + "\n")
    tmp.rename(root)
    return root
