"""hubswap's three figures, as SVG: the card's layer map, analyze's change per layer, sweep's heat map.

Written by hand: each figure is a few dozen rectangles and labels, not worth a plotting library
(matplotlib would add ~40 MB and a slow import for one figure); the output is byte-for-byte
reproducible, and the Hub shows it in a card as an image.

    layer_map_svg(layers, labels)          every layer as a bar split by the experts' weights (card)
    change_bars(title, task, language, s)  each expert's change per layer, the suggested swap shaded (analyze)
    sweep_heatmap(title, rows, experts)    selection accuracy over bottom x top per transition (sweep)
    accuracy_bars(results)                 accuracy with its interval per model and language (tiny world)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING
from xml.sax.saxutils import escape

from hubswap.layermap import layer_map

if TYPE_CHECKING:
    from hubswap.analyze import Suggestion
    from hubswap.evaluate.results import EvalResults
    from hubswap.sweep import Ranked



def document(width: float, height: float, body: list[str], *, font: str = "sans-serif",
             background: str = "white", title: str | None = None) -> str:
    """A complete SVG: the root element, an optional ``<title>``, a background, then ``body``."""
    head = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="{font}" font-size="11">']
    if title is not None:
        head.append(f"<title>{escape(title)}</title>")
    head.append(f'<rect width="{width:.0f}" height="{height:.0f}" fill="{background}"/>')
    return "\n".join([*head, *body, "</svg>"]) + "\n"


def headings(width: float, title: str, subtitle: str | None = None) -> list[str]:
    """A centred title (and a subtitle under it) for a figure ``width`` wide."""
    out = [f'<text x="{width / 2:.0f}" y="18" text-anchor="middle" font-size="13">{escape(title)}</text>']
    if subtitle is not None:
        out.append(f'<text x="{width / 2:.0f}" y="34" text-anchor="middle">{escape(subtitle)}</text>')
    return out


# -- the card's layer map ----------------------------------------------------------------------

_LANG_COLOUR = "#E69F00"  # Okabe-Ito orange and blue: distinguishable with any colour vision
_TASK_COLOUR = "#0072B2"


def layer_map_svg(layers: list[dict], labels: dict[str, str]) -> str:
    """Every layer bottom (left) to top (right) as a bar split by the two experts' blend weights."""
    n = len(layers)
    cell = 26 if n <= 32 else max(9, 832 // n)
    left, top, bar = 24, 58, 120
    ends, gap = 26, 6  # the embeddings and head columns, apart from the layers
    width = max(left * 2 + cell * n + 2 * (ends + gap), 560)  # at least room for the legend
    height = top + bar + 96
    every = 1 if cell >= 20 else 2 if cell >= 12 else 4
    out = [
        f'<text x="{left}" y="20" font-size="14" font-weight="bold">'
        f"Layer map of {escape(labels['title'])}</text>",
        f'<text x="{left}" y="38" fill="#444444">share of each expert in every layer, '
        f"bottom layer (input side) on the left</text>",
    ]

    def column(x: int, w: int, lang_share: float, label: str, tip: str) -> None:
        h_lang = round(bar * lang_share, 2)
        out.append(f"<g><title>{escape(tip)}</title>")
        if h_lang < bar:
            out.append(f'<rect x="{x}" y="{top}" width="{w - 2}" height="{bar - h_lang:g}" fill="{_TASK_COLOUR}"/>')
        if h_lang > 0:
            out.append(f'<rect x="{x}" y="{top + bar - h_lang:g}" width="{w - 2}" height="{h_lang:g}" '
                       f'fill="{_LANG_COLOUR}"/>')
        out.append("</g>")
        if label:
            out.append(f'<text x="{x + (w - 2) / 2:g}" y="{top + bar + 14}" text-anchor="middle">{label}</text>')

    nl = 1.0 if labels["non_layer"] == "language" else 0.0
    x = left
    column(x, ends, nl, "emb", f"embeddings: {labels['non_layer']} expert")
    x += ends + gap
    for layer in layers:
        i, w = layer["index"], float(layer["language_weight"])
        tip = f"layer {i} ({layer['region']}): language {w:.3g}, task {1 - w:.3g}"
        # The last layer is labelled too, unless that would crowd its labelled neighbour.
        shown = i % every == 0 or (i == n - 1 and i % every >= min(2, every))
        column(x, cell, w, str(i) if shown else "", tip)
        if 0 < w < 1 and cell >= 20:
            out.append(f'<text x="{x + (cell - 2) / 2:g}" y="{top - 4}" text-anchor="middle" '
                       f'font-size="9">{w:.2f}</text>')
        x += cell
    x += gap
    column(x, ends, nl, "head", f"final norm and LM head: {labels['non_layer']} expert")
    y = top + bar + 40
    for colour, text in ((_LANG_COLOUR, labels["language"]), (_TASK_COLOUR, labels["task"])):
        out.append(f'<rect x="{left}" y="{y - 10}" width="12" height="12" fill="{colour}"/>')
        out.append(f'<text x="{left + 18}" y="{y}">{escape(text)}</text>')
        y += 20
    out.append(f'<text x="{left}" y="{y}" fill="#444444">numbers above a bar: the language expert\'s weight '
               f"in a blended transition layer</text>")
    return document(width, height, out, font="Helvetica, Arial, sans-serif", background="#ffffff",
                        title=f"Layer map of {labels['title']}")


# -- analyze: change per layer --------------------------------------------------------------------


def change_bars(title: str, task: list[float], language: list[float], s: Suggestion | None = None) -> str:
    """Grouped bars of both experts' change per layer, the suggested swap shaded behind them."""
    n = len(task)
    left, right, top_m, bottom_m = 64, 16, 46, 56
    slot = max(12.0, min(40.0, 760 / max(n, 1)))
    width = max(560.0, left + right + slot * n)
    slot = (width - left - right) / max(n, 1)
    height = 300
    plot_h = height - top_m - bottom_m
    ymax, step = _axis(max([*task, *language, 1e-12]))
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
        legend.append(("swapped in from the language expert", colors["language"], 0.25))
    lx = left
    for label, color, opacity in legend:
        el.append(f'<rect x="{lx:.0f}" y="{height - 14}" width="10" height="10" fill="{color}" '
                  f'fill-opacity="{opacity}"/>')
        el.append(f'<text x="{lx + 14:.0f}" y="{height - 5}">{escape(label)}</text>')
        lx += 30 + 6.2 * len(label)
    return document(width, height, el)


def _axis(v: float) -> tuple[float, float]:
    """A round axis maximum at or above ``v`` and its tick step (1, 2 or 5 x 10^k, at most 5 ticks)."""
    k = 10 ** math.floor(math.log10(v))
    step = next(m * k / 10 for m in (1, 2, 5, 10, 20) if v / (m * k / 10) <= 5 + 1e-9)
    return math.ceil(v / step - 1e-9) * step, step


# -- sweep: accuracy over the grid ----------------------------------------------------------------


def sweep_heatmap(title: str, rows: list[Ranked], experts: dict[str, float]) -> str:
    """Selection accuracy over bottom (rows) x top (columns), one panel per transition size."""
    from hubswap.sweep import Config

    bottoms = sorted({r.config.bottom for r in rows})
    tops = sorted({r.config.top for r in rows})
    transitions = sorted({r.config.transition for r in rows})
    acc = {r.config: r.accuracy for r in rows}
    chosen = rows[0].config
    outline = ""
    cell, gap, left, top_m = 44, 36, 100, 70
    panel_w = cell * len(tops)
    expert_text = "on the same questions: " + ", ".join(f"{k} expert {v:.3f}" for k, v in experts.items())
    width = round(max(420, left + len(transitions) * (panel_w + gap) + 20, 2 * left + 6.2 * len(expert_text)))
    height = top_m + cell * len(bottoms) + 44
    lo = min([*acc.values(), *experts.values()])
    hi = max([*acc.values(), *experts.values()])

    def color(v: float) -> str:
        # White (worst) to dark blue (best) on this sweep's own scale.
        f = 0.5 if hi == lo else (v - lo) / (hi - lo)
        r, g, b = (round(255 + (c - 255) * f) for c in (8, 69, 148))
        return f"rgb({r},{g},{b})"

    el = headings(width, title, f"accuracy on the selection half; outlined: chosen ({chosen.name})")
    for p, t in enumerate(transitions):
        x0 = left + p * (panel_w + gap)
        el.append(f'<text x="{x0 + panel_w / 2:.0f}" y="{top_m - 22}" text-anchor="middle">transition = {t}</text>')
        for j, u in enumerate(tops):
            el.append(f'<text x="{x0 + cell * (j + 0.5):.0f}" y="{top_m - 6}" text-anchor="middle">{u}</text>')
        for i, b in enumerate(bottoms):
            if p == 0:
                el.append(f'<text x="{x0 - 8}" y="{top_m + cell * (i + 0.5) + 4:.0f}" text-anchor="end">{b}</text>')
            for j, u in enumerate(tops):
                c = Config(b, u, t)
                x, y = x0 + cell * j, top_m + cell * i
                if c not in acc:
                    el.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="#f4f4f4" stroke="#ccc"/>')
                    continue
                v = acc[c]
                dark = hi > lo and (v - lo) / (hi - lo) > 0.6
                if c == chosen:  # outlined after every cell, so no neighbour paints over it
                    outline = (f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="none" '
                               f'stroke="black" stroke-width="3"><title>chosen: {escape(c.name)}</title></rect>')
                el.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{color(v)}" stroke="#ccc">'
                          f'<title>{escape(c.name)}: {v:.3f}</title></rect>')
                el.append(f'<text x="{x + cell / 2}" y="{y + cell / 2 + 4}" text-anchor="middle" '
                          f'fill="{"white" if dark else "black"}">{v:.2f}</text>')
    el.append(outline)
    el.append(f'<text x="{left - 8}" y="{top_m - 6}" text-anchor="end">bottom \\ top</text>')
    el.append(f'<text x="{left}" y="{height - 14}">{escape(expert_text)}</text>')
    return document(width, height, el)


# -- an evaluation: accuracy per model and language -----------------------------------------------


def accuracy_bars(results: EvalResults) -> str:
    """Grouped bars: accuracy with its 95% interval per model, one group per language."""
    langs = results.settings.languages
    models = list(results.models)
    colors = {"merged": "#08458f", "task": "#e6850e", "language": "#3a9a3a", "base": "#888888"}
    bar, gap, left, top_m, h = 34, 36, 60, 50, 220
    width = left + len(langs) * (len(models) * bar + gap) + 150
    height = top_m + h + 50

    def y(v: float) -> float:
        return top_m + h * (1 - v)

    el = headings(width, "MGSM: accuracy per model and language (95% interval)")
    for t in range(0, 11, 2):
        el.append(f'<line x1="{left}" x2="{width - 150}" y1="{y(t / 10):.1f}" y2="{y(t / 10):.1f}" stroke="#ddd"/>')
        el.append(f'<text x="{left - 6}" y="{y(t / 10) + 4:.1f}" text-anchor="end">{t * 10}%</text>')
    for g, lang in enumerate(langs):
        x0 = left + gap / 2 + g * (len(models) * bar + gap)
        el.append(f'<text x="{x0 + len(models) * bar / 2:.0f}" y="{top_m + h + 18}" text-anchor="middle" '
                  f'font-size="12">{escape(lang)}</text>')
        for i, name in enumerate(models):
            s = results.models[name].languages[lang]
            x = x0 + i * bar
            el.append(f'<rect x="{x + 3:.1f}" y="{y(s.accuracy):.1f}" width="{bar - 6}" '
                      f'height="{h * s.accuracy:.1f}" fill="{colors.get(name, "#555")}">'
                      f'<title>{escape(name)} {lang}: {s.accuracy:.3f}</title></rect>')
            lo, hi = s.ci95
            cx = x + bar / 2
            el.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(lo):.1f}" y2="{y(hi):.1f}" stroke="black"/>')
            el.append(f'<text x="{cx:.1f}" y="{y(hi) - 4:.1f}" text-anchor="middle" font-size="9">'
                      f'{100 * s.accuracy:.0f}</text>')
    for i, name in enumerate(models):
        ly = top_m + 10 + 18 * i
        el.append(f'<rect x="{width - 130}" y="{ly}" width="12" height="12" fill="{colors.get(name, "#555")}"/>')
        el.append(f'<text x="{width - 112}" y="{ly + 10}">{escape(name)}</text>')
    return document(width, height, el)
