"""The demo world: a word-level English and a relexified "Swahili", a synthetic MGSM in both, and
three Llama models written by construction (``hubswap.demo_weights``) that share its tokenizer.

``write_world(root)`` writes ``root/{base,task,language}`` (safetensors, config, tokenizer,
generation config, a README saying what they are) and ``root/mgsm`` (``en`` and ``sw`` in the
layout of ``juletxara/mgsm``: 100 test problems and 8 cued exemplars each, read by the same
``datasets`` loader, prompts and scorers as the real MGSM). Every byte is a function of the code:
no clock, no randomness without a seed, no machine path, so two runs write identical files.

A problem has two numbers (1 to 20) whose operation is named only by a verb ("buys" adds, "eats"
subtracts); the answer cue of the 0-shot native chain-of-thought prompt is followed by
" The answer is 8." or " Jibu ni 8.". The "Swahili" uses MGSM's real Swahili cues and some
Swahili words but is a relexification made for the demo, not Swahili.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from hubswap.demo_weights import (
    ANSWER_WORDS,
    CUE_WORD,
    HEAD_DIM,
    HEADS,
    HIDDEN,
    INTERMEDIATE,
    LAYERS,
    MAX_OPERAND,
    MAX_RESULT,
    VERBS,
    build_weights,
    number_token,
)

ROLES = ("base", "task", "language")
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
VOCAB_SIZE = 128
TEST_PROBLEMS = 100
SEED = 23

NAMES = ("Juma", "Amina", "Baraka", "Neema", "Tom", "Anna")
OBJECTS = (("apples", "matofaa"), ("oranges", "machungwa"), ("eggs", "mayai"), ("books", "vitabu"),
           ("pens", "kalamu"), ("cups", "vikombe"))
CUES = {"en": ("Question:", "Step-by-Step Answer:"), "sw": ("Swali:", "Jibu la Hatua kwa Hatua:")}
OTHER_WORDS = ("has", "How", "many", "does", "have", "now", "ana", "ngapi", "sasa", "Step-by-Step",
               "Jibu", "la", "Hatua", "kwa", "+", "-", "=", "Question:", "Swali:")


def vocabulary() -> dict[str, int]:
    """Token -> id: the specials, the two sentence-initial cues, then every word with its ``▁``."""
    # "abcdef": transformers' stop-string matcher (generate(stop_strings=...)) measures every
    # token's text after that probe word, which a word-level vocabulary must therefore know.
    words: list[str] = ["Question:", "Swali:", ".", "?", "abcdef"]
    words += [number_token(n) for n in range(MAX_RESULT + 1)]
    words += [f"▁{w}" for w in (*NAMES, *(o for pair in OBJECTS for o in pair), *OTHER_WORDS)]
    words += [f"▁{pair[i]}" for op in VERBS for pair in VERBS[op] for i in (0, 1)]
    words += [f"▁{w}" for lang in ("en", "sw") for w in (CUE_WORD[lang], *ANSWER_WORDS[lang])]
    tokens = list(dict.fromkeys([*SPECIALS, *words]))
    if len(tokens) > VOCAB_SIZE:
        raise ValueError(f"{len(tokens)} tokens do not fit a vocabulary of {VOCAB_SIZE}")
    return {t: i for i, t in enumerate(tokens)}


def tokenizer_json(vocab: dict[str, int]) -> str:
    """tokenizer.json: WordLevel over Metaspace words, ``.`` and ``?`` split off, newlines as spaces."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Replace("\n", " "), normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[.?]"), behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never"),
    ])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", vocab["<s>"])])
    tok.add_special_tokens(list(SPECIALS))
    return tok.to_str(pretty=True)


def config(vocab: dict[str, int]) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "attention_bias": False,
        "attention_dropout": 0.0, "bos_token_id": vocab["<s>"], "eos_token_id": vocab["</s>"],
        "pad_token_id": vocab["<pad>"], "head_dim": HEAD_DIM, "hidden_act": "silu", "hidden_size": HIDDEN,
        "initializer_range": 0.02, "intermediate_size": INTERMEDIATE, "max_position_embeddings": 512,
        "mlp_bias": False, "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
        "num_key_value_heads": HEADS, "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 1000000.0,
        "tie_word_embeddings": False, "torch_dtype": "float32", "use_cache": True, "vocab_size": VOCAB_SIZE,
    }


TOKENIZER_CONFIG = {
    "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
    "unk_token": "<unk>", "model_max_length": 512, "clean_up_tokenization_spaces": False,
    "add_bos_token": True, "add_eos_token": False,
}

MODEL_README = """\
# demo world: {role}

A Llama (8 layers, hidden 256) whose weights were **written by hand, not trained**, by
`hubswap.demo_world` for `hubswap demo`. {what}

Its skills sit in layers chosen in advance, so a layer swap can be seen to work exactly; it says
nothing about how real fine-tunes spread their skills. Made by `hubswap demo`, not a model to use.
"""
WHAT = {
    "base": "It reads and writes the demo's English and cannot do arithmetic (it answers 0).",
    "task": "The base plus the arithmetic in layers 2 and 3 only: it solves English problems.",
    "language": "The base plus the demo's Swahili: reading in the embeddings and layers 0 and 1, "
                "writing in layer 6 and lm_head. It cannot do arithmetic.",
}


def problems(count: int, seed: int) -> list[tuple[str, int, int, int, int, int]]:
    """``(op, a, b, verb index, name index, object index)``; subtraction keeps ``a >= b``."""
    rnd = random.Random(seed)
    out = []
    for _ in range(count):
        op = rnd.choice(("add", "sub"))
        a, b = rnd.randint(1, MAX_OPERAND), rnd.randint(1, MAX_OPERAND)
        if op == "sub" and a < b:
            a, b = b, a
        out.append((op, a, b, rnd.randrange(3), rnd.randrange(len(NAMES)), rnd.randrange(len(OBJECTS))))
    return out


def question(p, lang: str) -> str:
    op, a, b, v, n, o = p
    name, obj, verb = NAMES[n], OBJECTS[o][lang == "sw"], VERBS[op][v][lang == "sw"]
    if lang == "en":
        return f"{name} has {a} {obj}. {name} {verb} {b} {obj}. How many {obj} does {name} have now?"
    return f"{name} ana {obj} {a}. {name} {verb} {obj} {b}. {name} ana {obj} ngapi sasa?"


def answer(p) -> int:
    op, a, b = p[:3]
    return a + b if op == "add" else a - b


def mgsm_rows(lang: str) -> dict[str, list[dict]]:
    """MGSM's fields: test rows with ``answer_number``; train rows (exemplars) with the cues."""
    q_cue, a_cue = CUES[lang]
    line = "The answer is {}." if lang == "en" else "Jibu ni {}."
    test = [{"question": question(p, lang), "answer": None, "answer_number": answer(p), "equation_solution": None}
            for p in problems(TEST_PROBLEMS, SEED)]
    train = []
    for p in problems(8, SEED + 1):
        sign = "+" if p[0] == "add" else "-"
        eq = f"{p[1]} {sign} {p[2]} = {answer(p)}."
        train.append({"question": f"{q_cue} {question(p, lang)}", "answer": f"{a_cue} {eq} {line.format(answer(p))}",
                      "answer_number": answer(p), "equation_solution": eq})
    return {"train": train, "test": test}  # train first: datasets types "answer" from it (test has null)


def write_mgsm(dest: Path) -> Path:
    from hubswap.evaluate.data import write_local

    write_local(dest, {lang: mgsm_rows(lang) for lang in ("en", "sw")}, title="hubswap demo world MGSM (synthetic)")
    return dest


def write_model(dest: Path, role: str, tensors: dict, vocab: dict[str, int], tokenizer: str) -> Path:
    from safetensors.numpy import save_file

    dest.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    files = {
        "config.json": json.dumps(config(vocab), indent=2, sort_keys=True),
        "generation_config.json": json.dumps({"bos_token_id": vocab["<s>"], "eos_token_id": vocab["</s>"],
                                              "pad_token_id": vocab["<pad>"], "do_sample": False}, indent=2),
        "tokenizer.json": tokenizer,
        "tokenizer_config.json": json.dumps(TOKENIZER_CONFIG, indent=2),
        "special_tokens_map.json": json.dumps({k: TOKENIZER_CONFIG[k] for k in
                                               ("bos_token", "eos_token", "pad_token", "unk_token")}, indent=2),
        "README.md": MODEL_README.format(role=role, what=WHAT[role]),
    }
    for name, text in files.items():
        (dest / name).write_text(text + ("" if text.endswith("\n") else "\n"), encoding="utf-8")
    return dest


def write_world(root: str | Path, *, mgsm: str | Path | None = None) -> dict[str, Path]:
    """Write the three models under ``root`` and the synthetic MGSM in ``mgsm`` (``root/mgsm``);
    returns ``{role or "mgsm": path}``."""
    root = Path(root)
    vocab = vocabulary()
    tokenizer = tokenizer_json(vocab)
    weights = build_weights(vocab, VOCAB_SIZE)
    out = {role: write_model(root / role, role, weights[role], vocab, tokenizer) for role in ROLES}
    out["mgsm"] = write_mgsm(Path(mgsm) if mgsm is not None else root / "mgsm")
    return out
