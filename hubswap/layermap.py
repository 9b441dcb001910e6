"""The layer map: which expert, and with what weight, every tensor of the merged model comes from.

``find_layer_stack`` finds the language model's transformer layers in a model's tensor names;
``layer_map`` implements the method's semantics (docs/DESIGN.md, "Layer map") over them. Planning, the merge,
the lock file and the model card all read its result.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction

from hubswap.recipe import Swap

# The parts of a model a layer map assigns: its transformer layers, the language model's other
# tensors (embeddings, final norm, LM head) and, in multimodal models, everything outside the
# language model (vision tower, projector).
LAYER, NON_LAYER, VISION = "layer", "non-layer", "vision"


@dataclass(frozen=True)
class LayerStack:
    """The language model's transformer layers: the tensors named ``{prefix}.{i}.…``, ``i`` in 0..L-1.

    ``multimodal`` models (``is_multimodal``) have a vision side: every tensor that
    is neither in the stack, nor beside it in the language model's module, nor an ``lm_head``.
    """

    prefix: str  # "model.layers", "language_model.model.layers", "transformer.h", ...
    num_layers: int
    multimodal: bool = False

    @property
    def parent(self) -> tuple[str, ...]:
        """The language model's module path: the stack's prefix without its last name."""
        return tuple(self.prefix.split(".")[:-1])

    def index(self, name: str) -> int | None:
        """The layer a tensor belongs to, or ``None`` outside the stack."""
        head = self.prefix + "."
        if not name.startswith(head):
            return None
        i, _, rest = name[len(head):].partition(".")
        if not rest or not i.isdigit():
            return None
        return int(i) if int(i) < self.num_layers else None

    def part(self, name: str) -> str:
        """``layer``, ``non-layer`` (embeddings, final norm, LM head) or ``vision``."""
        if self.index(name) is not None:
            return LAYER
        if not self.multimodal:
            return NON_LAYER
        parts = name.split(".")
        if tuple(parts[: len(self.parent)]) == self.parent or "lm_head" in parts[:-1]:
            return NON_LAYER
        return VISION

    def module(self, name: str) -> str:
        """The top module of a tensor outside the stack, for people: ``model.embed_tokens``,
        ``lm_head``, ``vision_tower``, ``multi_modal_projector``."""
        parts = name.split(".")
        k = 0
        while k < min(len(parts) - 1, len(self.parent)) and parts[k] == self.parent[k]:
            k += 1
        return ".".join(parts[: min(k + 1, len(parts) - 1) or 1])

    def modules(self, names: Iterable[str]) -> dict[str, list[str]]:
        """``non-layer`` and ``vision`` -> the sorted top modules of ``names`` outside the stack."""
        out: dict[str, set[str]] = {NON_LAYER: set(), VISION: set()}
        for n in names:
            part = self.part(n)
            if part != LAYER:
                out[part].add(self.module(n))
        return {k: sorted(v) for k, v in out.items()}

    def to_json(self) -> dict:
        return {"prefix": self.prefix, "num_layers": self.num_layers, "multimodal": self.multimodal}


class LayerStackError(ValueError):
    """No tensor prefix, or more than one, can be the language model's layer stack."""


def text_layer_count(config: Mapping) -> tuple[int, str]:
    """The language model's layer count from config.json and the key it came from.

    Multimodal configs keep it in ``text_config``; a ``text_config`` that leaves it out means the
    default of its model type, which transformers' config class knows (never remote code).
    """
    if not isinstance(config, Mapping):
        raise LayerStackError(f"config.json is a JSON {type(config).__name__}, not an object")
    text = config.get("text_config")
    where, part = ("text_config.", text) if isinstance(text, Mapping) else ("", config)
    for key in ("num_hidden_layers", "n_layer"):
        n = part.get(key)
        if n is not None:
            if type(n) is not int or n < 1:
                raise LayerStackError(f"config.json {where}{key} is {n!r}, not a positive integer")
            return n, f"{where}{key}"
    if where and isinstance(part.get("model_type"), str):
        try:
            from transformers import AutoConfig

            n = AutoConfig.for_model(part["model_type"]).num_hidden_layers
        except Exception:  # no transformers (core install), an unknown type, a config without layers
            n = None
        if type(n) is int and n > 0:
            return n, f"text_config.num_hidden_layers (the {part['model_type']} default)"
    raise LayerStackError("config.json has neither num_hidden_layers nor text_config.num_hidden_layers")


def is_multimodal(config: Mapping) -> bool:
    """Whether a config.json describes more than a language model: a ``text_config`` (transformers
    v5 and most multimodal models) or a ``vision_config`` beside a flat text config (the first
    Qwen2-VL checkpoints)."""
    return isinstance(config, Mapping) and any(isinstance(config.get(k), Mapping) for k in ("text_config", "vision_config"))


def numbered_prefixes(names: Iterable[str]) -> dict[str, set[int]]:
    """Every tensor-name prefix followed by a number, with the numbers that follow it.

    Only a name's first number counts, so ``model.layers.3.mlp.experts.5.w1`` gives
    ``model.layers`` -> 3: stacks nested in a layer (a mixture's experts) are never candidates.
    """
    out: dict[str, set[int]] = {}
    for name in names:
        parts = name.split(".")
        for k, p in enumerate(parts[:-1]):
            if p.isdigit():
                if k:
                    out.setdefault(".".join(parts[:k]), set()).add(int(p))
                break
    return out


def find_layer_stack(config: Mapping, shapes: Mapping[str, Iterable[int]]) -> LayerStack:
    """The language model's layer stack of a model, from its config.json and its tensors' shapes.

    The layer count ``L`` comes from the config's text part; the stack is the one tensor-name
    prefix followed by exactly ``0 … L-1``. When several prefixes qualify (a vision encoder as
    deep as the language model), the language model's is the one whose module also holds the
    token embeddings (a ``[vocab_size, …]`` tensor). Raises ``LayerStackError`` naming the
    prefixes when none or several remain.
    """
    n, key = text_layer_count(config)
    text = config.get("text_config") if isinstance(config.get("text_config"), Mapping) else config
    found = numbered_prefixes(shapes)
    want = set(range(n))
    candidates = sorted(p for p, idx in found.items() if idx == want)
    if len(candidates) > 1:
        vocab = text.get("vocab_size")
        beside = [p for p in candidates if _holds_embeddings(p, shapes, vocab)]
        candidates = beside if len(beside) == 1 else candidates
    if len(candidates) == 1:
        return LayerStack(candidates[0], n, multimodal=is_multimodal(config))
    seen = ", ".join(f"{p} ({_span(idx)})" for p, idx in sorted(found.items())) or "none"
    if not candidates:
        raise LayerStackError(f"no tensor-name prefix is followed by exactly the layers 0..{n - 1} that "
                              f"config.json {key} = {n} asks for; numbered prefixes: {seen}")
    raise LayerStackError(f"{len(candidates)} tensor-name prefixes are followed by exactly the layers "
                          f"0..{n - 1} of config.json {key} = {n}, and hubswap cannot tell which is the "
                          f"language model's: {', '.join(candidates)}")


def _holds_embeddings(prefix: str, shapes: Mapping[str, Iterable[int]], vocab) -> bool:
    parent = prefix.rsplit(".", 1)[0] + "." if "." in prefix else ""
    return isinstance(vocab, int) and any(
        name.startswith(parent) and name.count(".") == parent.count(".") + 1 and list(shape)[:1] == [vocab]
        for name, shape in shapes.items()
    )


def _span(idx: set[int]) -> str:
    lo, hi = min(idx), max(idx)
    return f"{lo}..{hi}" if len(idx) == hi - lo + 1 else f"{len(idx)} numbers in {lo}..{hi}"


@dataclass(frozen=True)
class LayerSource:
    """Where one layer comes from: the language expert's weight ``w`` (task gets ``1 - w``)."""

    index: int
    weight: Fraction
    region: str  # "bottom" | "transition-bottom" | "middle" | "transition-top" | "top" | "non-layer" | "vision"

    @property
    def source(self) -> str:
        """``language``, ``task`` or ``blend``."""
        if self.weight == 1:
            return "language"
        if self.weight == 0:
            return "task"
        return "blend"

    @property
    def language_weight(self) -> float:
        return float(self.weight)

    @property
    def task_weight(self) -> float:
        return float(1 - self.weight)


@dataclass(frozen=True)
class LayerMap:
    num_layers: int
    layers: tuple[LayerSource, ...]
    non_layer: LayerSource
    vision: LayerSource  # the vision side of multimodal models (whole, from one expert)
    stack: LayerStack | None = None  # None: planned from a layer count alone, without the model

    def for_tensor(self, tensor_name: str) -> LayerSource:
        if self.stack is None:
            raise ValueError("this layer map was made from a layer count, without the model's layer stack")
        part = self.stack.part(tensor_name)
        if part == LAYER:
            return self.layers[self.stack.index(tensor_name)]
        return self.vision if part == VISION else self.non_layer

    def picture(self) -> str:
        """One line, bottom to top: L = language, T = task, ~ = blend."""
        glyph = {"language": "L", "task": "T", "blend": "~"}
        return "".join(glyph[s.source] for s in self.layers)

    def to_json(self, names: Iterable[str] = ()) -> dict:
        """The map as the lock records it; with the model's tensor ``names``, also the top modules
        of each whole part (``modules``: non_layer and vision)."""
        out = {
            "num_layers": self.num_layers,
            "non_layer": self.non_layer.source,
            "layers": [
                {"index": s.index, "region": s.region, "source": s.source,
                 "language_weight": round(s.language_weight, 6), "task_weight": round(s.task_weight, 6)}
                for s in self.layers
            ],
        }
        if self.stack is not None:
            out["stack"] = self.stack.prefix
            if self.stack.multimodal:
                out["vision"] = self.vision.source
            names = list(names)
            if names:
                mods = self.stack.modules(names)
                out["modules"] = {"non_layer": mods[NON_LAYER], "vision": mods[VISION]}
        return out


def uniform_map(num_layers: int, stack: LayerStack | None = None, weight: Fraction = Fraction(1, 2)) -> LayerMap:
    """Every tensor, layers and non-layer alike, blended with the language expert's ``weight``: the
    "soup" baseline (weight 1/2) that ``[eval] baselines`` builds with the same merge as the swap."""
    layers = tuple(LayerSource(i, weight, "uniform") for i in range(num_layers))
    whole = LayerSource(-1, weight, "non-layer")
    return LayerMap(num_layers, layers, whole, LayerSource(-1, weight, "vision"), stack)


def layer_map(swap: Swap, num_layers: int, stack: LayerStack | None = None) -> LayerMap:
    """The source and language-expert weight of each of ``num_layers`` layers and of non-layer tensors.

    Raises ``ValueError`` when the swap does not fit in ``num_layers``.
    """
    if stack is not None and stack.num_layers != num_layers:
        raise ValueError(f"a {num_layers}-layer map for a stack of {stack.num_layers} layers")
    swap.check_layers(num_layers)
    b, u, tb, tu, n = swap.bottom, swap.top, swap.tb, swap.tu, num_layers
    layers = []
    for i in range(n):
        if i < b:
            w, region = Fraction(1), "bottom"
        elif i < b + tb:
            w, region = 1 - Fraction(i - b + 1, tb + 1), "transition-bottom"
        elif i >= n - u:
            w, region = Fraction(1), "top"
        elif i >= n - u - tu:
            w, region = Fraction(i - (n - u - tu) + 1, tu + 1), "transition-top"
        else:
            w, region = Fraction(0), "middle"
        layers.append(LayerSource(i, w, region))
    whole = {"language": Fraction(1), "task": Fraction(0)}
    nl = LayerSource(-1, whole[swap.non_layer], "non-layer")
    vision = LayerSource(-1, whole[swap.vision or swap.non_layer], "vision")
    return LayerMap(n, tuple(layers), nl, vision, stack)
