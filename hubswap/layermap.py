"""The layer map: which expert, and with what weight, every tensor of the merged model comes from.

One pure function, ``layer_map``, implements the method's semantics (docs/DESIGN.md); planning,
the merge, the lock file and the model card all read its result.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from hubswap.recipe import Swap

# ``model.layers.3.mlp`` (Llama, Qwen, Mistral...), ``transformer.h.3.`` (GPT-2 family),
# ``blocks.3.`` (others).
_LAYER = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


def layer_index(tensor_name: str) -> int | None:
    """The transformer layer a tensor belongs to, or ``None`` for non-layer tensors."""
    m = _LAYER.search(tensor_name)
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class LayerSource:
    """Where one layer comes from: the language expert's weight ``w`` (task gets ``1 - w``)."""

    index: int
    weight: Fraction
    region: str  # "bottom" | "transition-bottom" | "middle" | "transition-top" | "top" | "non-layer"

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

    def for_tensor(self, tensor_name: str) -> LayerSource:
        i = layer_index(tensor_name)
        if i is None:
            return self.non_layer
        if i >= self.num_layers:
            raise ValueError(f"tensor {tensor_name!r} names layer {i} of a {self.num_layers}-layer model")
        return self.layers[i]

    def picture(self) -> str:
        """One line, bottom to top: L = language, T = task, ~ = blend."""
        glyph = {"language": "L", "task": "T", "blend": "~"}
        return "".join(glyph[s.source] for s in self.layers)

    def to_json(self) -> dict:
        return {
            "num_layers": self.num_layers,
            "non_layer": self.non_layer.source,
            "layers": [
                {"index": s.index, "region": s.region, "source": s.source,
                 "language_weight": round(s.language_weight, 6), "task_weight": round(s.task_weight, 6)}
                for s in self.layers
            ],
        }


def layer_map(swap: Swap, num_layers: int) -> LayerMap:
    """The source and language-expert weight of each of ``num_layers`` layers and of non-layer tensors.

    Raises ``ValueError`` when the swap does not fit in ``num_layers``.
    """
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
    nl = LayerSource(-1, Fraction(1 if swap.non_layer == "language" else 0), "non-layer")
    return LayerMap(n, tuple(layers), nl)
