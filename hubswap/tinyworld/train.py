"""Train the tiny world's family on the CPU: a base, a math (task) expert, a language expert.

Written by hand because no well-kept library trains a model this small on two cores in minutes
with per-layer freezing and bit-for-bit repeatable runs (``transformers.Trainer`` adds seconds of
set-up and data-loader processes per phase; the loop below is the few lines it would run).

Every phase is deterministic: one ``torch.Generator`` per phase, ``torch.set_num_threads(2)``,
deterministic algorithms, data drawn by ``random.Random(seed)`` before training starts.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hubswap.tinyworld import language as L

SPECIALS = ["<pad>", "<s>", "</s>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
)


@dataclass(frozen=True)
class Phase:
    """One training run: which mixture of texts, how long, which parameters may change."""

    name: str
    mixture: dict[str, float]
    """Weights of text kinds: ``story_en``, ``story_sw``, ``parallel``, ``mixed``, ``lookup_en``,
    ``lookup_sw``, ``problem_en``, ``problem_sw``, ``drill``."""
    steps: int
    lr: float
    train: str = "all"
    """``all``, ``middle`` (layers [bottom, L-top) only) or ``outer`` (embeddings, lm_head, final
    norm and the layers outside the middle)."""
    init: str | None = None
    """The phase whose weights this one starts from (None: random init)."""
    seed: int = 0
    loss: str = "all"
    """``all`` tokens, or ``answer``: only the worked answers of question kinds count (their
    questions are context; needs ``Design.packing = "documents"``)."""
    lr_floor: float = 0.0
    """The cosine schedule ends at ``lr * lr_floor``."""


@dataclass(frozen=True)
class Design:
    name: str
    phases: tuple[Phase, ...]
    layers: int = 8
    hidden: int = 64
    intermediate: int = 256
    heads: int = 2
    """Head size ``hidden / heads`` = 32: vLLM's CPU attention needs at least 32."""
    outer_bottom: int = 2
    outer_top: int = 2
    seq_len: int = 128
    batch: int = 12
    vocab_size: int = 1024
    tokenizer: str = "digits"
    """``digits``: every digit its own token, apart from the space before it (`` 12`` is three
    tokens); ``spaced-digits``: a digit keeps the space before it (`` 12`` is `` 1`` ``2``), so a
    number copied from the context is the same tokens wherever it stands."""
    packing: str = "cut"
    """``cut``: each row is documents joined by blank lines, the last one cut at the row's end;
    ``documents``: whole ``<s>document</s>`` only, the rest of a row padding outside the loss."""
    notes: str = ""


# -- data ----------------------------------------------------------------------------------------

def text_of(kind: str, rng: random.Random) -> str:
    """One document of a kind; question-answer kinds come as MGSM few-shot blocks."""
    if kind.startswith(("copy_", "lookupm_", "parallelqa")):
        return "".join(document(kind, rng))
    if kind in ("story_en", "story_sw"):
        t = L.story(rng)
        return L.relexify(t) if kind.endswith("sw") else t
    if kind == "parallel":  # a sentence and its translation, either order
        t = L.story(rng)
        pair = [t, L.relexify(t)]
        rng.shuffle(pair)
        return "\n".join(pair)
    if kind == "mixed":  # code-mixed: each sentence in either language
        parts = re.split(r"(?<=\.) ", L.story(rng))
        return " ".join(L.relexify(p) if rng.random() < 0.5 else p for p in parts)
    if kind == "drill":
        return L.drill(rng)
    base, lang = kind.rsplit("_", 1)
    make = L.lookup if base == "lookup" else (lambda r: L.problem(r)[:3])
    q, a, _ = make(rng)
    t = L.qa_text(q, a)
    return L.relexify(t) if lang == "sw" else t



def document(kind: str, rng: random.Random) -> tuple[str, str]:
    """``(context, target)`` of one document: a question kind's question is its context (outside
    an ``answer`` loss), its worked answer the target; other kinds are all target.

    Besides ``text_of``'s kinds: ``copy_<lang>`` (a story, then the same story again: copying
    practice), ``lookupm_<lang>`` (``language.lookup_multi``) and ``parallelqa`` (a worked lookup
    in both languages)."""
    if kind == "parallelqa":
        q, a, _ = L.lookup(rng)
        pair = [L.qa_text(q, a), L.relexify(L.qa_text(q, a))]
        rng.shuffle(pair)
        return "", "\n\n".join(pair)
    lang = kind.rsplit("_", 1)[1] if kind.endswith(("_en", "_sw")) else "en"
    tr = L.relexify if lang == "sw" else (lambda t: t)
    if kind.startswith("copy_"):
        s = L.story(rng)
        return "", tr(s + "\n" + s)
    if kind.startswith(("lookup_", "lookupm_", "problem_")):
        make = {"lookup": L.lookup, "lookupm": L.lookup_multi, "problem": lambda r: L.problem(r)[:3]}
        q, a, _ = make[kind.rsplit("_", 1)[0]](rng)
        t = L.qa_text(q, a)
        cut = t.index("Step-by-Step Answer:") + len("Step-by-Step Answer:")
        return tr(t[:cut]), tr(t[cut:])
    return "", text_of(kind, rng)


def document_rows(tok, mixture: dict[str, float], n_rows: int, seq_len: int, seed: int, loss: str = "all"):
    """``(input ids, labels)``, ``n_rows`` of ``seq_len``: whole ``<s>document</s>`` packed, never cut
    (a document that does not fit starts the next row), padding labelled -100; with ``loss =
    "answer"`` the questions of question kinds are labelled -100 too."""
    import torch

    rng = random.Random(seed)
    kinds, weights = list(mixture), list(mixture.values())
    X = torch.full((n_rows, seq_len), tok.pad_token_id, dtype=torch.long)
    Y = torch.full((n_rows, seq_len), -100, dtype=torch.long)
    pending = None
    for r in range(n_rows):
        ids, lab = [], []
        while True:
            if pending is None:
                context, target = document(rng.choices(kinds, weights)[0], rng)
                a = [tok.bos_token_id] + tok.encode(context, add_special_tokens=False)
                b = tok.encode(target, add_special_tokens=False) + [tok.eos_token_id]
                hide = loss == "answer" and context
                pending = (a + b, ([-100] * len(a) if hide else [-100] + a[1:]) + b)
            d_ids, d_lab = pending
            if len(ids) + len(d_ids) > seq_len:
                if ids:
                    break
                d_ids, d_lab = d_ids[:seq_len], d_lab[:seq_len]  # longer than a row: cut (rare)
            ids += d_ids
            lab += d_lab
            pending = None
        X[r, : len(ids)] = torch.tensor(ids)
        Y[r, : len(lab)] = torch.tensor(lab)
    return X, Y


def corpus_rows(tok, mixture: dict[str, float], n_rows: int, seq_len: int, seed: int):
    """``n_rows`` token rows of ``seq_len``: <s> then documents of one kind joined by blank lines."""
    import torch

    rng = random.Random(seed)
    kinds, weights = list(mixture), list(mixture.values())
    rows = []
    for _ in range(n_rows):
        kind = rng.choices(kinds, weights)[0]
        ids = [tok.bos_token_id]
        while len(ids) < seq_len + 1:
            ids += tok.encode(text_of(kind, rng) + "\n\n", add_special_tokens=False)
        rows.append(ids[: seq_len + 1])
    return torch.tensor(rows)


# -- tokenizer and model -------------------------------------------------------------------------

def make_tokenizer(out_dir: Path | None, vocab_size: int, seed: int = 0, scheme: str = "digits"):
    """A byte-level BPE with single-digit tokens, trained on both languages' texts (``scheme``:
    see ``Design.tokenizer``)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    kinds = ["story_en", "story_sw", "lookup_en", "lookup_sw", "problem_en", "problem_sw", "drill"]
    texts = [text_of(k, rng) for _ in range(400) for k in kinds]
    tok = Tokenizer(models.BPE())
    if scheme == "digits":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ])
    elif scheme == "spaced-digits":
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(r" ?[0-9]| ?[A-Za-z]+|\n| ?[^\sA-Za-z0-9]| +"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    else:
        raise ValueError(scheme)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   chat_template=CHAT_TEMPLATE, model_max_length=512)
    if out_dir is not None:
        fast.save_pretrained(str(out_dir))
    return fast


def model_config(d: Design, vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=d.hidden, intermediate_size=d.intermediate, num_hidden_layers=d.layers,
        num_attention_heads=d.heads, num_key_value_heads=d.heads, vocab_size=vocab_size,
        max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        tie_word_embeddings=False, rope_theta=10000.0,
    )


def trainable(model, d: Design, which: str) -> list:
    if which == "all":
        return list(model.parameters())
    lo, hi = d.outer_bottom, d.layers - d.outer_top
    layers = model.model.layers
    if which == "middle":
        mods = [layers[i] for i in range(lo, hi)]
    elif which == "outer":
        mods = [model.model.embed_tokens, model.lm_head, model.model.norm,
                *(layers[i] for i in range(d.layers) if not lo <= i < hi)]
    else:
        raise ValueError(which)
    keep = {id(p) for m in mods for p in m.parameters()}
    out = []
    for p in model.parameters():
        p.requires_grad_(id(p) in keep)
        if id(p) in keep:
            out.append(p)
    return out


def train_phase(model, tok, d: Design, ph: Phase, progress: Callable | None = None) -> list[tuple[int, float]]:
    """Train ``model`` in place for one phase; returns the loss curve (step, mean loss)."""
    import torch

    torch.manual_seed(ph.seed)
    if d.packing == "documents":
        rows, labels = document_rows(tok, ph.mixture, ph.steps * d.batch, d.seq_len, 1000 + ph.seed, ph.loss)
    else:
        if ph.loss != "all":
            raise ValueError("an answer-only loss needs packing = 'documents'")
        rows = labels = corpus_rows(tok, ph.mixture, ph.steps * d.batch, d.seq_len, seed=1000 + ph.seed)
    params = trainable(model, d, ph.train)
    opt = torch.optim.AdamW(params, lr=ph.lr, betas=(0.9, 0.98), weight_decay=0.0)
    warm = max(1, ph.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm)
        * (ph.lr_floor + (1 - ph.lr_floor) * 0.5 * (1 + math.cos(math.pi * min(s, ph.steps) / ph.steps))))
    model.train()
    curve, acc, t0 = [], [], time.time()
    for step in range(ph.steps):
        b = slice(step * d.batch, (step + 1) * d.batch)
        out = model(input_ids=rows[b], labels=labels[b])
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        acc.append(out.loss.item())
        if (step + 1) % 25 == 0 or step + 1 == ph.steps:
            curve.append((step + 1, sum(acc) / len(acc)))
            acc = []
        if progress:
            progress(step, time.time() - t0, curve[-1][1] if curve else float("nan"))
    model.eval()
    return curve
