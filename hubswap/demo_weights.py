"""The demo world's weights, written by hand: a Llama whose skills live in layers chosen in advance.

No training: every weight is set in numpy so that each model does exactly what it is meant to.

* **The residual stream has a reserved layout** (``Layout``): a constant dimension of ``CONST``
  in every embedding row, token features (number identity, verbs, cue and answer words), and the
  slots the circuits write (operation, counter, the gathered numbers, the result, the next token).
  The constant dimension dominates the root mean square, so every RMSNorm is a fixed rescaling;
  the norms' weights (``RHO``) undo it, and every projection gets a bias input from it.
* **Rules are SwiGLU units with a large gain**: ``silu(GAIN * (w . x + b))`` is ``GAIN / 2`` when
  the rule's features are all there and about ``-4e-8`` when one is missing, so each unit is an
  exact if-then, in float32 and in bfloat16.
* **Attention is content-only**: queries and keys live in RoPE's slowest pair of dimensions,
  which turns by less than 1e-3 radians over the demo's prompts. A counter head (layer 2) gives
  the first and second number their roles, three gather heads (layer 3) copy the first number,
  the second number and the operation to every later position, and a 610-unit lookup table (layer
  3's MLP) writes the result.

The three models share one base: *base* reads and writes English and cannot do arithmetic (it
answers 0); *task* adds the arithmetic in layers 2 and 3 only; *language* adds Swahili reading in
the embeddings and layers 0 and 1, and Swahili writing in layer 6 and ``lm_head``. Weights no
rule uses are small deterministic noise on dimensions that are always zero (inert, but they give
``hubswap analyze`` a base to measure changes against), and no two models' rules share a unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

HIDDEN = 256
HEADS = 4
HEAD_DIM = 64
INTERMEDIATE = 640
LAYERS = 8
CONST = 1000.0
RHO = CONST / math.sqrt(HIDDEN)  # RMSNorm weight: the normalised stream equals the stream
GAIN = 40.0
FIRE = 0.5  # a rule's gate, over GAIN, when it fires; -0.5 or less when it does not
MARGIN = 40.0  # lm_head's logit per unit of a next-token slot
EOS_DEFAULT = 0.25  # the end-of-text logit when no rule writes a next token (in MARGIN units)
ZERO_DEFAULT = 0.5  # the answer "0" when the result slot is empty (a model without arithmetic)
SLOW = HEAD_DIM // 2 - 1  # RoPE's slowest pair is (31, 63) in the rotate-half layout
SCORE = 30.0  # attention logit of a matching key: other positions weigh e^-30
NOISE = 0.02
MAX_OPERAND = 20
MAX_RESULT = 2 * MAX_OPERAND

TASK_LAYERS = (2, 3)
LANGUAGE_LAYERS = (0, 1, 6)

# The words the rules read: (English, Swahili) per operation verb, the answer cue's last word.
VERBS = {"add": (("buys", "ananunua"), ("finds", "anapata"), ("gets", "anapokea")),
         "sub": (("eats", "anakula"), ("loses", "anapoteza"), ("sells", "anauza"))}
CUE_WORD = {"en": "Answer:", "sw": "Hatua:"}
ANSWER_WORDS = {"en": ("The", "answer", "is"), "sw": ("Jibu", "ni")}


@dataclass
class Layout:
    """Names of the residual stream's dimensions, in order; the rest (``dead``) are always zero."""

    index: dict[str, int] = field(default_factory=dict)

    def add(self, *names: str) -> None:
        for n in names:
            self.index[n] = len(self.index)

    def __getitem__(self, name: str) -> int:
        return self.index[name]

    @property
    def dead(self) -> list[int]:
        return list(range(len(self.index), HIDDEN))


def make_layout() -> Layout:
    lay = Layout()
    lay.add("const", "bos", "isnum", *(f"num{n}" for n in range(MAX_RESULT + 1)))
    for lang_i, lang in enumerate(("en", "sw")):
        lay.add(*(f"verb:{pair[lang_i]}" for op in VERBS for pair in VERBS[op]))
        lay.add(f"word:{CUE_WORD[lang]}", *(f"word:{w}" for w in ANSWER_WORDS[lang]))
    lay.add("word:.", "op:add", "op:sub", "start:en", "start:sw", "numphase", "count", "first", "second")
    lay.add(*(f"a{n}" for n in range(1, MAX_OPERAND + 1)), *(f"b{n}" for n in range(1, MAX_OPERAND + 1)))
    lay.add("got:add", "got:sub", *(f"r{n}" for n in range(MAX_RESULT + 1)))
    lay.add(*(f"next:{w}" for lang in ("en", "sw") for w in ANSWER_WORDS[lang]), "next:.", "next:</s>")
    lay.add(*(f"next:{n}" for n in range(MAX_RESULT + 1)))
    assert len(lay.index) < HIDDEN - 16, "the layout leaves too few dead dimensions"
    return lay


def silu(x: float) -> float:
    return x / (1.0 + math.exp(-x))


class Circuit:
    """One model's rules as additions to zero tensors (float64), by Llama tensor name."""

    def __init__(self, vocab: dict[str, int], vocab_size: int, units: list[int], lay: Layout):
        self.vocab, self.lay, self.units = vocab, lay, units  # units: next free unit per layer (shared)
        self.t: dict[str, np.ndarray] = {}
        self.vocab_size = vocab_size

    def tensor(self, name: str, shape: tuple[int, int]) -> np.ndarray:
        if name not in self.t:
            self.t[name] = np.zeros(shape)
        return self.t[name]

    def embed(self, token: str, **features: float) -> None:
        e = self.tensor("model.embed_tokens.weight", (self.vocab_size, HIDDEN))
        for name, v in features.items():
            e[self.vocab[token], self.lay[name]] += v

    def rule(self, layer: int, when: dict[str, float], write: dict[str, float], *, bias: float | None = None,
             up: str = "const") -> None:
        """A SwiGLU unit of ``layer``: writes ``write`` when ``sum(w * feature for when)`` reaches
        ``len(when)``; ``bias`` overrides the threshold (``FIRE - len(when)``); ``up`` scales it."""
        u = self.units[layer]
        if u >= INTERMEDIATE:
            raise ValueError(f"layer {layer} has no free MLP unit")
        self.units[layer] += 1
        p = f"model.layers.{layer}.mlp."
        gate = self.tensor(p + "gate_proj.weight", (INTERMEDIATE, HIDDEN))
        for name, w in when.items():
            gate[u, self.lay[name]] += GAIN * w
        gate[u, self.lay["const"]] += GAIN * (FIRE - len(when) if bias is None else bias) / CONST
        self.tensor(p + "up_proj.weight", (INTERMEDIATE, HIDDEN))[u, self.lay[up]] += (
            1.0 / CONST if up == "const" else 1.0)
        down = self.tensor(p + "down_proj.weight", (HIDDEN, INTERMEDIATE))
        for name, v in write.items():
            down[self.lay[name], u] += v / silu(GAIN * FIRE)

    def head(self, layer: int, h: int, keys: dict[str, float], copy: dict[str, str]) -> None:
        """Attention head ``h`` of ``layer``: attends to the positions whose ``keys`` features are
        set (logit ``SCORE`` each) and copies feature ``src`` there to ``dst`` here, for ``copy``."""
        p = f"model.layers.{layer}.self_attn."
        shape_in, shape_out = (HEADS * HEAD_DIM, HIDDEN), (HIDDEN, HEADS * HEAD_DIM)
        q_scale = 10.0
        self.tensor(p + "q_proj.weight", shape_in)[h * HEAD_DIM + SLOW, self.lay["const"]] += q_scale / CONST
        k = self.tensor(p + "k_proj.weight", shape_in)
        for name, w in keys.items():
            k[h * HEAD_DIM + SLOW, self.lay[name]] += w * SCORE * math.sqrt(HEAD_DIM) / q_scale
        v = self.tensor(p + "v_proj.weight", shape_in)
        o = self.tensor(p + "o_proj.weight", shape_out)
        if len(copy) > SLOW:
            raise ValueError("a head copies at most 31 features")
        for j, (src, dst) in enumerate(copy.items()):
            v[h * HEAD_DIM + j, self.lay[src]] += 1.0
            o[self.lay[dst], h * HEAD_DIM + j] += 1.0

    def emit(self, slot: str, token: str) -> None:
        """``lm_head``: the next-token slot ``slot`` votes for ``token``."""
        self.tensor("lm_head.weight", (self.vocab_size, HIDDEN))[self.vocab[token], self.lay[slot]] += MARGIN


def number_token(n: int) -> str:
    return f"▁{n}"


def base_circuit(c: Circuit) -> None:
    """English reading and writing, the output sequence, and the answer gate; no arithmetic."""
    for token in c.vocab:
        c.embed(token, const=CONST)
    c.embed("<s>", bos=1.0)
    for n in range(MAX_RESULT + 1):
        c.embed(number_token(n), isnum=1.0, **{f"num{n}": 1.0})
        c.emit(f"next:{n}", number_token(n))
    _language(c, "en", 0)
    c.embed(".", **{"word:.": 1.0})
    c.rule(6, {"isnum": 1}, {"next:.": 1})
    c.rule(6, {"word:.": 1}, {"next:</s>": 1})
    c.emit("next:.", ".")
    c.emit("next:</s>", "</s>")
    eos = c.tensor("lm_head.weight", (c.vocab_size, HIDDEN))
    eos[c.vocab["</s>"], c.lay["const"]] += MARGIN * EOS_DEFAULT / CONST
    # Layer 7: the result reaches the output only where a number is due; without one, "0".
    for n in range(MAX_RESULT + 1):
        c.rule(7, {"numphase": 1, f"r{n}": 1}, {f"next:{n}": 1})
    c.rule(7, {"numphase": 1}, {"next:0": ZERO_DEFAULT})


def _language(c: Circuit, lang: str, col: int) -> None:
    """Reading (embeddings, layers 0 and 1) and writing (layer 6, lm_head) of one language."""
    for op, pairs in VERBS.items():
        for pair in pairs:
            c.embed(f"▁{pair[col]}", **{f"verb:{pair[col]}": 1.0})
            c.rule(0, {f"verb:{pair[col]}": 1}, {f"op:{op}": 1})
    cue = CUE_WORD[lang]
    c.embed(f"▁{cue}", **{f"word:{cue}": 1.0})
    c.rule(1, {f"word:{cue}": 1}, {f"start:{lang}": 1})
    words = ANSWER_WORDS[lang]
    for w in words:
        c.embed(f"▁{w}", **{f"word:{w}": 1.0})
        c.emit(f"next:{w}", f"▁{w}")
    c.rule(6, {f"start:{lang}": 1}, {f"next:{words[0]}": 1})
    for w, nxt in zip(words, words[1:], strict=False):
        c.rule(6, {f"word:{w}": 1}, {f"next:{nxt}": 1})
    c.rule(6, {f"word:{words[-1]}": 1}, {"numphase": 1})


def language_circuit(c: Circuit) -> None:
    """Swahili reading and writing, added to the base."""
    _language(c, "sw", 1)
    # Its end-of-text row is its own, as a fine-tune's is (on dead dimensions, so it acts as the
    # base's): the preflight warns about a merge whose </s> rows were never trained.
    eos = c.tensor("lm_head.weight", (c.vocab_size, HIDDEN))
    eos[c.vocab["</s>"], c.lay.dead] += NOISE * np.cos(np.arange(len(c.lay.dead)))


def task_circuit(c: Circuit) -> None:
    """The arithmetic, in layers 2 and 3 only."""
    # Layer 2: a counter head (numbers and <s> alike): k / (k + 1) after k numbers, so the first
    # number reads 1/2 and the second 2/3; two units turn that into the number's role.
    c.head(2, 0, {"isnum": 1, "bos": 1}, {"isnum": "count"})
    c.rule(2, {"count": -6}, {"first": 1}, bias=3.5, up="isnum")
    c.rule(2, {"count": 6}, {"second": 1}, bias=-3.5, up="isnum")
    # Layer 3: gather both numbers and the operation, then look the result up.
    c.head(3, 0, {"first": 1}, {f"num{n}": f"a{n}" for n in range(1, MAX_OPERAND + 1)})
    c.head(3, 1, {"second": 1}, {f"num{n}": f"b{n}" for n in range(1, MAX_OPERAND + 1)})
    c.head(3, 2, {"op:add": 1, "op:sub": 1}, {"op:add": "got:add", "op:sub": "got:sub"})
    for a in range(1, MAX_OPERAND + 1):
        for b in range(1, MAX_OPERAND + 1):
            c.rule(3, {"got:add": 1, f"a{a}": 1, f"b{b}": 1}, {f"r{a + b}": 1})
            if a >= b:
                c.rule(3, {"got:sub": 1, f"a{a}": 1, f"b{b}": 1}, {f"r{a - b}": 1})


def shapes(vocab_size: int) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab_size, HIDDEN), "lm_head.weight": (vocab_size, HIDDEN),
        "model.norm.weight": (HIDDEN,),
    }
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out.update({p + "input_layernorm.weight": (HIDDEN,), p + "post_attention_layernorm.weight": (HIDDEN,)})
        for n in "qkv":
            out[p + f"self_attn.{n}_proj.weight"] = (HEADS * HEAD_DIM, HIDDEN)
        out[p + "self_attn.o_proj.weight"] = (HIDDEN, HEADS * HEAD_DIM)
        out[p + "mlp.gate_proj.weight"] = (INTERMEDIATE, HIDDEN)
        out[p + "mlp.up_proj.weight"] = (INTERMEDIATE, HIDDEN)
        out[p + "mlp.down_proj.weight"] = (HIDDEN, INTERMEDIATE)
    return out


def _inert_noise(name: str, shape: tuple[int, ...], circuits: list[Circuit], lay: Layout,
                 rng: np.random.Generator) -> np.ndarray:
    """Noise where it cannot act: reading dead dimensions, or writing from units and head
    dimensions that no model's circuit uses (their inputs read only dead dimensions)."""
    noise = (NOISE * rng.standard_normal(shape)).astype(np.float64)
    if len(shape) == 1 or name == "model.embed_tokens.weight":
        return np.zeros(shape)
    mask = np.zeros(shape, dtype=bool)
    if name.endswith(("o_proj.weight", "down_proj.weight")):
        reader = name.replace("o_proj", "v_proj").replace("down_proj", "gate_proj")
        used = np.zeros(shape[1], dtype=bool)
        for c in circuits:
            if reader in c.t:
                used |= np.any(c.t[reader] != 0, axis=1)
        mask[:, ~used] = True
    else:
        mask[:, lay.dead] = True
    return np.where(mask, noise, 0.0)


def build_weights(vocab: dict[str, int], vocab_size: int, *, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """``{"base" | "task" | "language": {tensor name: float32 array}}``."""
    lay = make_layout()
    units = [0] * LAYERS
    base, task, language = (Circuit(vocab, vocab_size, units, lay) for _ in range(3))
    base_circuit(base)
    task_circuit(task)
    language_circuit(language)
    rng = np.random.default_rng(seed)
    models: dict[str, dict[str, np.ndarray]] = {"base": {}, "task": {}, "language": {}}
    for name, shape in sorted(shapes(vocab_size).items()):
        b = _inert_noise(name, shape, [base, task, language], lay, rng)
        if len(shape) == 1:
            b = np.full(shape, RHO)
        b = b + base.t.get(name, 0.0)
        models["base"][name] = b.astype(np.float32)
        models["task"][name] = (b + task.t.get(name, 0.0)).astype(np.float32)
        models["language"][name] = (b + language.t.get(name, 0.0)).astype(np.float32)
    return models
