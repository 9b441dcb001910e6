"""The card's picture (``hubswap/layer_map.svg``): every layer as a bar split by the experts' weights.

Its one reader is ``card.py``, which passes plain data: the build record's layers and the labels.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from hubswap.figures import document

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
