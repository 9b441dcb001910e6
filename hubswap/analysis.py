"""Where did each expert change the base? Per layer and module kind, and a suggested swap.

``hubswap analyze RECIPE`` streams the base and both experts tensor by tensor (one tensor, or one
slice of a large tensor, in memory at a time) and measures the relative change of each expert,
``||expert - base|| / ||base||``, over every group of tensors: each layer as a whole, each layer's
attention, MLP and norm tensors, and each non-layer tensor. The paper chose its swap from exactly
this picture (math changes in the middle layers, language changes in the first and last ones);
``suggest`` turns it into a bottom/top/transition with one line of reasoning each.

Outputs, in the analysis folder: ``changes.csv`` and ``changes.json`` (the table and the
suggestion) and ``changes.svg`` (both experts' change per layer, side by side).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

from hubswap.errors import HubswapError, IncompatibleModelsError, ModelFilesError
from hubswap.figures import axis, document, headings
from hubswap.files import check_writable
from hubswap.inputs import EXPERTS, prepare_inputs
from hubswap.layermap import LayerStack, layer_map
from hubswap.preflight import TensorInfo
from hubswap.recipe import LoadedRecipe, Swap, load_recipe
from hubswap.safetensors_format import DTYPE_SIZE, to_float32

log = logging.getLogger(__name__)

KINDS = ("attention", "mlp", "norm", "other")
# Largest slice of a tensor read at once (elements): a 128k x 4096 embedding is read in 128 slices,
# so memory stays near two slices of 4M float64 values (64 MB) whatever the model size.
CHUNK_ELEMENTS = 4 * 1024 * 1024
# A boundary layer whose smaller share is at least this fraction of the larger one was changed
# comparably by both experts: blend it instead of cutting there.
MIXED_RATIO = 0.5
# ... and only if it holds at least this fraction of an average layer's share of change.
SIGNIFICANT = 0.5
# Swaps whose score is within TIE / num_layers of the best count as ties (the smallest one wins).
TIE = 0.1
MAX_TRANSITION = 2


def module_kind(tensor_name: str) -> str:
    """``attention``, ``mlp``, ``norm`` or ``other`` for a layer tensor, from its name."""
    parts = tensor_name.lower().split(".")
    if any("norm" in p or p.startswith("ln") for p in parts):
        return "norm"
    if any(p in ("self_attn", "attn", "attention", "self_attention", "cross_attn") for p in parts):
        return "attention"
    if any(p in ("mlp", "feed_forward", "ffn", "block_sparse_moe", "experts") for p in parts):
        return "mlp"
    return "other"


@dataclass(frozen=True)
class Change:
    """The relative change of both experts over one group of tensors.

    ``layer`` is the layer index, or ``None`` for a non-layer tensor (then ``kind`` is its name);
    for layers ``kind`` is ``all`` or one of ``KINDS``.
    """

    layer: int | None
    kind: str
    params: int
    task: float
    language: float

    def of(self, role: str) -> float:
        return self.task if role == "task" else self.language


@dataclass(frozen=True)
class Suggestion:
    bottom: int
    top: int
    transition_bottom: int
    transition_top: int
    reasons: tuple[str, str, str]  # bottom, top, transition

    def swap(self) -> Swap:
        t = self.transition_bottom if self.transition_bottom == self.transition_top else 0
        extra = {} if self.transition_bottom == self.transition_top else {
            "transition_bottom": self.transition_bottom, "transition_top": self.transition_top}
        return Swap(bottom=self.bottom, top=self.top, transition=t, **extra)

    def toml(self) -> str:
        """The ``[swap]`` keys to paste into a recipe."""
        if self.transition_bottom == self.transition_top:
            t = f"transition = {self.transition_bottom}"
        else:
            t = f"transition_bottom = {self.transition_bottom}, transition_top = {self.transition_top}"
        return f"bottom = {self.bottom}, top = {self.top}, {t}"


@dataclass(frozen=True)
class Analysis:
    name: str
    num_layers: int
    rows: tuple[Change, ...]
    suggestion: Suggestion
    files: dict[str, Path]

    def per_layer(self, role: str) -> list[float]:
        by_layer = {r.layer: r.of(role) for r in self.rows if r.kind == "all" and r.layer is not None}
        return [by_layer[i] for i in range(self.num_layers)]

    def report(self) -> str:
        """The per-layer table, the non-layer tensors and the suggestion, for the terminal."""
        task, lang = self.per_layer("task"), self.per_layer("language")
        top = max([*task, *lang]) or 1.0
        picture = layer_map(self.suggestion.swap(), self.num_layers)
        out = [f"relative change ||expert - base|| / ||base|| of {self.name}, per layer:",
               f"  {'layer':>5}  {'task':>9}  {'language':>9}  swap"]
        for i in range(self.num_layers):
            bar_t = "#" * round(12 * task[i] / top)
            bar_l = "=" * round(12 * lang[i] / top)
            out.append(f"  {i:>5}  {task[i]:>9.4f}  {lang[i]:>9.4f}  {picture.layers[i].source:<8}  "
                       f"{bar_t:<12} {bar_l}")
        for r in self.rows:
            if r.layer is None:
                out.append(f"  {'':>5}  {r.task:>9.4f}  {r.language:>9.4f}  {r.kind}")
        s = self.suggestion
        out += ["", f"suggested swap: {s.toml()}   ({picture.picture()}: L language, T task, ~ blend)",
                *(f"  {line}" for line in s.reasons), "",
                "wrote " + ", ".join(str(p) for p in self.files.values())]
        return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Reading weights, one tensor at a time


def measure_changes(dirs: dict[str, Path], tensors: dict[str, dict[str, TensorInfo]],
                    stack: LayerStack, *, progress: bool = False) -> list[Change]:
    """Stream the base and both experts of ``dirs`` and return the table of changes.

    ``tensors`` is the preflight's tensor table per role (names, shapes, dtypes and byte ranges
    from the safetensors headers), so the models are known to match before any weight is read.
    Tensors are read as flat slices of at most ``CHUNK_ELEMENTS`` with ``pread`` (no memory map
    that would grow with the model), in float64 so that sums over billions of squares stay exact
    enough.
    """
    import numpy as np
    from tqdm.auto import tqdm

    experts = [r for r in EXPERTS if r in dirs]
    layer_index, num_layers = stack.index, stack.num_layers
    # A tensor some expert lacks (preflight named it) has no change to measure.
    names = sorted((n for n in tensors["base"] if all(n in tensors[r] for r in experts)),
                   key=lambda n: (layer_index(n) is None, layer_index(n) or 0, n))
    # Sums of squares per tensor; groups add them up, so a group's change is the norm over all
    # its parameters (a big MLP weighs more than a norm vector, as it should).
    base_sq: dict[str, float] = {}
    diff_sq: dict[tuple[str, str], float] = {}
    fds: dict[Path, int] = {}

    def read(role: str, name: str, start: int, count: int):
        info = tensors[role][name]
        path = dirs[role] / info.file
        if path not in fds:
            fds[path] = os.open(path, os.O_RDONLY)
        return _decode(os.pread(fds[path], count * DTYPE_SIZE[info.dtype], info.begin + start * DTYPE_SIZE[info.dtype]),
                       info, path, count)

    total = sum(tensors[r][n].end - tensors[r][n].begin for r in ("base", *experts) for n in names)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="analyzing", disable=not progress)
    try:
        for name in names:
            info = tensors["base"][name]
            if info.dtype not in DTYPE_SIZE:
                raise ModelFilesError(f"{name}: dtype {info.dtype} cannot be analyzed (expected {', '.join(DTYPE_SIZE)})")
            numel = math.prod(info.shape)
            b_sq, d_sq = 0.0, dict.fromkeys(experts, 0.0)
            for start in range(0, numel, CHUNK_ELEMENTS):
                count = min(CHUNK_ELEMENTS, numel - start)
                b = read("base", name, start, count)
                b_sq += float(np.dot(b, b))
                for role in experts:
                    d = read(role, name, start, count)
                    np.subtract(d, b, out=d)
                    d_sq[role] += float(np.dot(d, d))
            base_sq[name] = b_sq
            for role in experts:
                diff_sq[name, role] = d_sq[role]
            bar.update(sum(tensors[r][name].end - tensors[r][name].begin for r in ("base", *experts)))
    finally:
        bar.close()
        for fd in fds.values():
            os.close(fd)

    def group(layer: int | None, kind: str, members: list[str]) -> Change:
        b = sum(base_sq[n] for n in members)
        rel = {r: (math.sqrt(sum(diff_sq[n, r] for n in members) / b) if b else 0.0) for r in experts}
        params = sum(math.prod(tensors["base"][n].shape) for n in members)
        return Change(layer, kind, params, rel.get("task", 0.0), rel.get("language", 0.0))

    table = []
    for i in range(num_layers):
        members = [n for n in names if layer_index(n) == i]
        table.append(group(i, "all", members))
        for kind in KINDS:
            of_kind = [n for n in members if module_kind(n) == kind]
            if of_kind:
                table.append(group(i, kind, of_kind))
    table += [group(None, n, [n]) for n in names if layer_index(n) is None]
    return table


def _decode(buf: bytes, info: TensorInfo, path: Path, count: int):
    """``count`` elements of ``info``'s dtype, as float64 for the sums of squares."""
    import numpy as np

    if len(buf) != count * DTYPE_SIZE[info.dtype]:
        raise ModelFilesError(f"{path}: truncated while reading tensor {info.name}")
    return to_float32(buf, info.dtype).astype(np.float64)


# ---------------------------------------------------------------------------------------------
# The suggestion


def suggest(task: list[float], language: list[float]) -> Suggestion:
    """A bottom/top/transition from each expert's change per layer, with one reason each.

    Each profile is turned into shares of that expert's total change, so a fine-tune that moved
    every weight more than the other does not claim every layer. The bottom and top are the
    prefix and suffix of layers that maximise (language share - task share), the smallest among
    near-ties, leaving at least one middle layer; a boundary layer that both experts changed
    substantially and comparably becomes a transition layer.
    """
    n = len(task)
    if n < 2:
        raise HubswapError(f"a {n}-layer model leaves nothing to swap")
    st, sl = sum(task), sum(language)
    if st == 0 or sl == 0:
        who = "task" if st == 0 else "language"
        raise HubswapError(f"the {who} expert is identical to the base in every layer",
                           hint="check [models.base] and the experts in the recipe")
    pt = [x / st for x in task]
    pl = [x / sl for x in language]
    d = [a - b for a, b in zip(pl, pt, strict=True)]
    prefix = [0.0]
    for x in d:
        prefix.append(prefix[-1] + x)
    suffix = [0.0]
    for x in reversed(d):
        suffix.append(suffix[-1] + x)
    # Near-ties go to the smaller swap: a layer neither expert cared about stays with the task expert.
    scores = {(b, u): prefix[b] + suffix[u] for b in range(n) for u in range(n - b)}
    best = max(scores.values())
    b, u = min((bu for bu, v in scores.items() if v >= best - TIE / n), key=lambda bu: (sum(bu), bu))

    def mixed(i: int) -> bool:
        hi, lo = max(pt[i], pl[i]), min(pt[i], pl[i])
        return hi >= SIGNIFICANT / n and lo / hi >= MIXED_RATIO

    # A boundary layer changed comparably by both experts is blended rather than cut: first the
    # swapped layers next to the boundary, then the middle ones, at most MAX_TRANSITION per side
    # and always keeping one pure task layer.
    tb = tu = 0
    while b > 0 and tb < MAX_TRANSITION and mixed(b - 1):
        b, tb = b - 1, tb + 1
    while u > 0 and tu < MAX_TRANSITION and mixed(n - u):
        u, tu = u - 1, tu + 1
    while tb < MAX_TRANSITION and b + tb + tu + u + 1 < n and mixed(b + tb):
        tb += 1
    while tu < MAX_TRANSITION and b + tb + tu + u + 1 < n and mixed(n - u - 1 - tu):
        tu += 1

    def span(lo: int, hi: int) -> str:
        return f"layer {lo}" if hi - lo == 1 else f"layers {lo}-{hi - 1}"

    def pct(xs: list[float], lo: int, hi: int) -> str:
        return f"{100 * sum(xs[lo:hi]):.0f}%"

    if b:
        r_bottom = (f"bottom = {b}: {span(0, b)} hold {pct(pl, 0, b)} of the language expert's change "
                    f"but {pct(pt, 0, b)} of the task expert's")
    else:
        r_bottom = (f"bottom = 0: no bottom layer holds clearly more of the language expert's change than "
                    f"of the task expert's (layer 0: task {pct(pt, 0, 1)}, language {pct(pl, 0, 1)})")
    if u:
        r_top = (f"top = {u}: {span(n - u, n)} hold {pct(pl, n - u, n)} of the language expert's change "
                 f"but {pct(pt, n - u, n)} of the task expert's")
    else:
        r_top = (f"top = 0: no top layer holds clearly more of the language expert's change than of the "
                 f"task expert's (layer {n - 1}: task {pct(pt, n - 1, n)}, language {pct(pl, n - 1, n)})")
    def shares(layers: list[int]) -> str:
        return "; ".join(f"layer {i}: task {pct(pt, i, i + 1)}, language {pct(pl, i, i + 1)}" for i in layers)

    # The first and last middle layers when a side is cut, the blended layers when it is not.
    cut = sorted({i for i, t in ((b, tb), (n - u - 1, tu)) if t == 0})
    blended = [*range(b, b + tb), *range(n - u - tu, n - u)]
    if not blended:
        r_trans = ("transition = 0: no layer at a boundary of the swap was changed substantially and comparably "
                   f"by both experts ({shares(cut)})")
    else:
        label = f"transition = {tb}" if tb == tu else f"transition_bottom = {tb}, transition_top = {tu}"
        r_trans = f"{label}: both experts changed the boundary layers comparably ({shares(blended)}), so blend them"
        if cut:
            r_trans += f"; the other boundary is clear-cut ({shares(cut)})"
    # A layer both changed comparably but lying inside a swapped block, away from its boundary,
    # cannot be blended (transition layers sit at a boundary): say that it comes whole.
    inside = [i for i in (*range(b), *range(n - u, n)) if mixed(i)]
    if inside:
        r_trans += (f"; {shares(inside)}: changed comparably by both experts too, but inside the swapped "
                    f"layers, so taken whole from the language expert")
    return Suggestion(b, u, tb, tu, (r_bottom, r_top, r_trans))


# ---------------------------------------------------------------------------------------------
# Outputs


def write_csv(path: Path, rows: Iterable[Change]) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["layer", "kind", "params", "task", "language"])
        for r in rows:
            w.writerow(["non-layer" if r.layer is None else r.layer, r.kind, r.params,
                        f"{r.task:.6g}", f"{r.language:.6g}"])


# ---------------------------------------------------------------------------------------------
# The command


def analyze(recipe: str | Path | LoadedRecipe, output: str | Path | None = None, *,
            progress: bool = True) -> Analysis:
    """Measure where each expert changed the base, write the table and figure, suggest a swap."""
    loaded = recipe if isinstance(recipe, LoadedRecipe) else load_recipe(recipe)
    r = loaded.recipe
    if r.models.base is None:
        raise HubswapError(
            "analyze compares each expert with the base, but the recipe has no [models.base]",
            hint="add [models.base] with the model both experts were fine-tuned from",
        )
    out = Path(output) if output else Path("analysis") / r.name
    check_writable(out)
    inputs = prepare_inputs(loaded)
    pre = inputs.preflight
    # The merge tolerates a tensor an expert lacks where the layer map never takes it from that
    # expert; measuring every layer's change needs each of the base's tensors in both experts.
    lacking = [f"{role} expert lacks {n}, which the base has" for role in EXPERTS if role in pre.tensors
               for n in pre.tensors.get("base", {}) if n not in pre.tensors[role]]
    if lacking:
        raise IncompatibleModelsError(lacking)
    dirs = inputs.folders(list(inputs.models))  # only config, index and safetensors shards are read
    num_layers = pre.num_layers
    log.info("measuring the change of each expert from the base %s", r.models.base.display())
    rows = measure_changes(dirs, pre.tensors, pre.stack, progress=progress)
    task = [x.task for x in rows if x.kind == "all"]
    lang = [x.language for x in rows if x.kind == "all"]
    s = suggest(task, lang)

    out.mkdir(parents=True, exist_ok=True)
    files = {"csv": out / "changes.csv", "json": out / "changes.json", "svg": out / "changes.svg"}
    write_csv(files["csv"], rows)
    files["json"].write_text(json.dumps({
        "recipe": str(loaded.path),
        "models": {role: src.display() for role, src in r.models.roles().items()},
        "metric": "||expert - base|| / ||base|| over each group's parameters",
        "num_layers": num_layers,
        "per_layer": {"task": task, "language": lang},
        "rows": [{"layer": x.layer, "kind": x.kind, "params": x.params, "task": x.task,
                  "language": x.language} for x in rows],
        "suggestion": {"bottom": s.bottom, "top": s.top, "transition_bottom": s.transition_bottom,
                       "transition_top": s.transition_top, "reasons": list(s.reasons),
                       "layer_map": layer_map(s.swap(), num_layers).picture()},
    }, indent=2) + "\n")
    files["svg"].write_text(change_bars(f"{r.name}: change from the base per layer", task, lang, s))
    return Analysis(r.name, num_layers, tuple(rows), s, files)


# ---------------------------------------------------------------------------------------------
# The figure


def change_bars(title: str, task: list[float], language: list[float], s: Suggestion | None = None) -> str:
    """Grouped bars of both experts' change per layer, the suggested swap shaded behind them."""
    n = len(task)
    left, right, top_m, bottom_m = 64, 16, 46, 56
    slot = max(12.0, min(40.0, 760 / max(n, 1)))
    width = max(560.0, left + right + slot * n)
    slot = (width - left - right) / max(n, 1)
    height = 300
    plot_h = height - top_m - bottom_m
    ymax, step = axis(max([*task, *language, 1e-12]))
    colors = {"task": "#1f77b4", "language": "#ff7f0e"}

    def y(v: float) -> float:
        return top_m + plot_h * (1 - v / ymax)

    el = headings(width, title, f"suggested swap: {s.toml()}" if s is not None else None)
    if s is not None:  # shade the suggested swap: where the language expert's layers go
        lm = layer_map(s.swap(), n)
        for i, src in enumerate(lm.layers):
            if src.source != "task":
                op = 0.25 * src.language_weight
                el.append(f'<rect x="{left + slot * i:.1f}" y="{top_m}" width="{slot:.1f}" '
                          f'height="{plot_h}" fill="{colors["language"]}" fill-opacity="{op:.3f}"/>')
    for k in range(round(ymax / step) + 1):  # y grid and ticks
        v = step * k
        el.append(f'<line x1="{left}" x2="{width - right:.0f}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
                  f'stroke="#ddd"/>')
        el.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
    bar = slot * 0.38
    for i in range(n):
        x0 = left + slot * i + slot * 0.12
        for j, (role, vals) in enumerate((("task", task), ("language", language))):
            el.append(f'<rect x="{x0 + j * bar:.1f}" y="{y(vals[i]):.1f}" width="{bar:.1f}" '
                      f'height="{y(0) - y(vals[i]):.1f}" fill="{colors[role]}">'
                      f'<title>layer {i} {role}: {vals[i]:.4g}</title></rect>')
        if n <= 40 or i % 2 == 0:
            el.append(f'<text x="{left + slot * (i + 0.5):.1f}" y="{y(0) + 14:.1f}" '
                      f'text-anchor="middle">{i}</text>')
    el.append(f'<line x1="{left}" x2="{width - right:.0f}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="black"/>')
    el.append(f'<line x1="{left}" x2="{left}" y1="{top_m}" y2="{y(0):.1f}" stroke="black"/>')
    el.append(f'<text x="{left + slot * n / 2:.0f}" y="{height - 24}" text-anchor="middle">layer</text>')
    el.append(f'<text x="14" y="{top_m + plot_h / 2:.0f}" text-anchor="middle" '
              f'transform="rotate(-90 14 {top_m + plot_h / 2:.0f})">||expert - base|| / ||base||</text>')
    legend = [("task expert", colors["task"], 1.0), ("language expert", colors["language"], 1.0)]
    if s is not None:
        legend.append(("layers from the language expert", colors["language"], 0.25))
        if s.transition_bottom or s.transition_top:
            legend.append(("blended layers (shade: the language expert's weight)", colors["language"], 0.125))
    lx = left
    for label, color, opacity in legend:
        el.append(f'<rect x="{lx:.0f}" y="{height - 14}" width="10" height="10" fill="{color}" '
                  f'fill-opacity="{opacity}"/>')
        el.append(f'<text x="{lx + 14:.0f}" y="{height - 5}">{escape(label)}</text>')
        lx += 30 + 6.2 * len(label)
    return document(width, height, el)
