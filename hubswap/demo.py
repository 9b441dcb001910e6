"""Tiny model families made on the spot, offline: for the demo, the tests and the benchmarks.

A family is a random *base* model and two experts (``task`` and ``language``) that each add their
own random changes to it, optionally concentrated in a region of layers, like real fine-tunes. The
tokenizer is a byte-level BPE trained on a few built-in sentences, so any text encodes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

# Enough text for a byte-level BPE to learn a few hundred merges in the MGSM languages' scripts.
_CORPUS = [
    "Question: Janet has 3 apples and buys 5 more. How many apples does she have? Step-by-step Answer: 8.",
    "The answer is 42. Let's think step by step. 1 000 + 250 = 1 250 dollars.",
    "Swali: Juma ana machungwa 12. Jibu la Hatua kwa Hatua: Jibu ni 12.",
    "Frage: Wie viele Eier? Schritt-für-Schritt-Antwort: Die Antwort lautet 16.",
    "Pregunta: ¿Cuántos huevos? Respuesta paso a paso: La respuesta es 16.",
    "Question : Combien d'œufs ? Réponse étape par étape : La réponse est 16.",
    "Задача: Сколько яиц? Пошаговое решение: Ответ — 16.",
    "问题：有多少个鸡蛋？逐步解答：答案是16。",
    "問題：卵はいくつですか？ステップごとの答え：答えは16です。",
    "โจทย์: มีไข่กี่ฟอง? คำตอบทีละขั้นตอน: คำตอบคือ 16",
    "প্রশ্ন: কতগুলি ডিম? ধাপে ধাপে উত্তর: উত্তর হল ১৬।",
    "ప్రశ్న: ఎన్ని గుడ్లు? దశలవారీగా సమాధానం: సమాధానం 16.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 100 1000 3.5 18.00 $5",
]

CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def make_tokenizer(out_dir: str | Path, vocab_size: int = 512):
    """Train and save a byte-level BPE tokenizer with a chat template; returns it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        chat_template=CHAT_TEMPLATE, model_max_length=2048,
    )
    fast.save_pretrained(str(out_dir))
    return fast


def tiny_config(arch: str = "llama", *, num_layers: int = 8, vocab_size: int = 512, hidden: int = 64):
    """A tiny config of a real architecture: ``llama`` (untied embeddings) or ``qwen2`` (biases, tied)."""
    common = dict(
        hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=num_layers,
        num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab_size,
        max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    if arch == "llama":
        from transformers import LlamaConfig

        return LlamaConfig(tie_word_embeddings=False, **common)
    if arch == "qwen2":
        from transformers import Qwen2Config

        return Qwen2Config(tie_word_embeddings=True, **common)
    raise ValueError(f"unknown tiny architecture {arch!r} (llama | qwen2)")


def uniform(scale: float) -> Callable[[int], float]:
    return lambda i: scale


def region(layers: range, inside: float, outside: float = 0.0) -> Callable[[int], float]:
    """A change profile concentrated on ``layers`` (how a fine-tune's skill is localised)."""
    return lambda i: inside if i in layers else outside


def make_family(
    root: str | Path,
    *,
    arch: str = "llama",
    config=None,
    num_layers: int = 8,
    vocab_size: int = 512,
    hidden: int = 64,
    dtype: str = "float32",
    seed: int = 0,
    task_change: Callable[[int], float] | None = None,
    language_change: Callable[[int], float] | None = None,
    non_layer_change: float = 0.02,
    max_shard_size: str | int = "200KB",
    with_base: bool = True,
) -> dict[str, Path]:
    """Write ``base``, ``task`` and ``language`` model folders under ``root``; returns their paths.

    ``config`` (a transformers config of any decoder-only or image-text-to-text architecture)
    replaces the ``arch`` presets. Each expert is the base plus ``N(0, s^2)`` noise where ``s`` is
    the expert's change profile at that layer of the language model (default: a uniform 0.05)
    and ``non_layer_change`` elsewhere (vision tower included), so analysis can find where each
    one changed the base. ``with_base=False`` writes only the two experts.
    """
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, GenerationConfig
    except ImportError as e:  # the core install has neither
        from hubswap.errors import HubswapError

        raise HubswapError(
            f"the demo makes its tiny experts with torch and transformers, which are not installed ({e})",
            hint='pip install "hubswap[demo]" (evaluating them needs "hubswap[eval]" and an engine too: '
            "see scripts/install.sh)",
        ) from None

    from hubswap.layermap import find_layer_stack

    root = Path(root)
    cfg = config if config is not None else tiny_config(arch, num_layers=num_layers, vocab_size=vocab_size, hidden=hidden)
    auto = AutoModelForImageTextToText if getattr(cfg, "vision_config", None) is not None else AutoModelForCausalLM
    torch.manual_seed(seed)
    base = auto.from_config(cfg, dtype=torch.float32)
    base_state = {k: v.detach().clone() for k, v in base.state_dict().items()}
    stack = find_layer_stack(cfg.to_dict(), {k: v.shape for k, v in base_state.items()})
    profiles = {
        "base": None,
        "task": task_change or uniform(0.05),
        "language": language_change or uniform(0.05),
    }
    if not with_base:
        del profiles["base"]

    out = {}
    for n, (role, profile) in enumerate(profiles.items()):
        gen = torch.Generator().manual_seed(seed * 1000 + n)
        state = {}
        for name, t in base_state.items():
            if profile is None:
                state[name] = t.clone()
                continue
            i = stack.index(name)
            s = non_layer_change if i is None else profile(i)
            state[name] = t + s * torch.randn(t.shape, generator=gen) if s else t.clone()
        model = auto.from_config(cfg, dtype=torch.float32)
        model.load_state_dict(state, strict=False)
        model.tie_weights()  # a no-op unless the config ties the LM head to the embeddings
        model = model.to(getattr(torch, dtype))
        path = root / role
        model.save_pretrained(str(path), max_shard_size=max_shard_size)
        GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=False).save_pretrained(str(path))
        make_tokenizer(path, vocab_size=vocab_size)
        _set_model_card(path, role)
        out[role] = path
    return out


def _set_model_card(path: Path, role: str) -> None:
    (path / "README.md").write_text(f"# tiny {role} model\n\nRandom weights made by `hubswap.demo` for tests.\n")


DEMO_RECIPE = """\
# The embedded default of `hubswap demo`: a layer swap of two experts whose weights were written
# by hand (constructed, not trained) so that each skill sits in known layers, evaluated on a
# synthetic MGSM (English and a relexified "Swahili") with the real vLLM engine on the CPU, offline.
#   hubswap demo --output demo        (writes the world and this file to demo/, and builds it)
#   hubswap build demo/recipe.toml    (rebuilds it)
schema_version = 1
name = "demo-world-swahili-math"

[models.base]                 # reads and writes English; no arithmetic (it answers 0)
path = "{experts}/base"

[models.task]                 # the base plus arithmetic in layers 2 and 3 only
path = "{experts}/task"

[models.language]             # the base plus Swahili: embeddings, layers 0, 1 and 6, lm_head
path = "{experts}/language"

[swap]                        # what `hubswap analyze` suggests for these experts
bottom = 2
top = 2
transition = 0
non_layer = "language"
files_from = "task"
dtype = "bfloat16"

[eval]
dataset = "{dataset}"
languages = ["sw", "en"]
prompt = "native-cot"
num_fewshot = 0               # the models answer " Jibu ni 8." / " The answer is 8." directly
max_new_tokens = 8
compare = ["task", "language"]
baselines = ["soup"]          # the experts averaged (every tensor 1/2 each): the paper's other merge
backend = "vllm"

[eval.vllm]
max_model_len = 128

[gate]                        # the paper's claim: the swap beats both experts, and averaging, in Swahili
must_beat = ["task", "language", "soup"]
min_accuracy = 0.9
"""


def write_demo_recipe(path: Path, experts: Path, dataset: Path) -> Path:
    """Write the demo recipe for the world's experts in ``experts`` and its MGSM in ``dataset``,
    both named relative to the recipe (no path of this machine in the recipe, the lock or the card)."""
    def rel(p: Path) -> str:
        r = Path(os.path.relpath(p, path.parent)).as_posix()
        return r if r.startswith(".") else f"./{r}"

    path.write_text(DEMO_RECIPE.format(experts=rel(experts), dataset=rel(dataset)), encoding="utf-8")
    return path


def make_scripted_model(out_dir: str | Path, script: dict[str, str], *, hidden: int = 64,
                        vocab_size: int = 640, vocab: tuple[str, ...] = (), num_layers: int = 1,
                        mlp_bias: bool = False) -> Path:
    """A tiny Llama whose greedy continuation of a prompt ending in a key of ``script`` is the value.

    Every key and value becomes one added token of the demo tokenizer. The model is a bigram model:
    the attention and MLP output projections are zero, so the residual stream at the last position
    is that token's embedding; each scripted token's embedding is a basis vector of its own, and
    ``lm_head`` maps it to its successor (key -> value -> ``</s>``) with a margin of sqrt(hidden) in
    the logits, so greedy decoding is exact in float32. Two heads of size 32: vLLM's CPU attention
    needs a head size of at least 32. For tests that need a model to write given answers.

    ``vocab`` pieces are added first, in order: models made with the same ``vocab`` (holding every
    piece of their scripts) share one tokenizer, so they can be merged. ``num_layers`` layers, all
    with zero output; ``mlp_bias`` gives their MLPs biases (zero) that a test may set.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tok = make_tokenizer(out_dir, vocab_size=512)
    pieces = list(dict.fromkeys([*vocab, *script, *script.values()]))
    tok.add_tokens(pieces)
    tok.save_pretrained(str(out_dir))
    ids = {p: tok.convert_tokens_to_ids(p) for p in pieces}
    if len(pieces) > hidden or len(tok) > vocab_size:
        raise ValueError(f"{len(pieces)} scripted pieces need hidden >= {len(pieces)} and vocab_size >= {len(tok)}")
    cfg = LlamaConfig(
        hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=num_layers, num_attention_heads=hidden // 32,
        num_key_value_heads=hidden // 32, vocab_size=vocab_size, max_position_embeddings=4096,
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False, dtype="float32",
        mlp_bias=mlp_bias,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
            if mlp_bias:
                for proj in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                    proj.bias.zero_()
        model.model.embed_tokens.weight.zero_()
        model.lm_head.weight.zero_()
        for k, piece in enumerate(pieces):
            model.model.embed_tokens.weight[ids[piece], k] = 1.0
            successor = ids[script[piece]] if piece in script else cfg.eos_token_id
            model.lm_head.weight[successor, k] = 1.0
    model.save_pretrained(str(out_dir))
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, do_sample=False).save_pretrained(str(out_dir))
    (out_dir / "README.md").write_text("# scripted tiny model\n\nA bigram model made by `hubswap.demo` for tests.\n")
    return out_dir


def run_demo(output: Path, *, limit: int = 0, evaluate: bool = True) -> int:
    """Write the demo world (hubswap.demo_world: seconds, so never cached), the demo recipe beside
    it, and build it: merge, MGSM on both experts and the merge, gate, card."""
    import time

    from hubswap.demo_world import write_world
    from hubswap.pipeline import BuildOptions, build

    try:
        import tokenizers  # noqa: F401  (the world's word-level tokenizer; the core install lacks it)
    except ImportError as e:
        from hubswap.errors import HubswapError

        raise HubswapError(
            f"the demo writes its world's tokenizer with the tokenizers library, which is not installed ({e})",
            hint='pip install "hubswap[demo]" (evaluating it needs "hubswap[eval]" and an engine too: '
            "see scripts/install.sh)",
        ) from None
    output = output.resolve()
    t = time.perf_counter()
    world = write_world(output / "experts", mgsm=output / "mgsm")
    log.info("wrote the demo world (3 constructed models, MGSM en/sw) in %.1f s", time.perf_counter() - t)
    recipe = write_demo_recipe(output / "recipe.toml", output / "experts", world["mgsm"])
    result = build(recipe, BuildOptions(output=output / "build", evaluate=evaluate, limit=limit or None))
    print(result.summary())
    print(f"\nmodel card: {result.model_dir / 'README.md'}")
    return 0
