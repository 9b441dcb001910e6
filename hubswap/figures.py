"""SVG basics for hubswap's figures: a document, centred headings, a round axis.

Written by hand: each figure is a few dozen rectangles and labels, not worth a plotting library
(matplotlib would add ~40 MB and a slow import for one figure); the output is byte-for-byte
reproducible, and the Hub shows it in a card as an image. Each figure lives beside its reader and
takes plain data: the layer map in ``card_figure.py``, the change per layer in ``analysis.py``, the sweep's
heat map in ``sweep_figure.py``.
"""

from __future__ import annotations

import math
from xml.sax.saxutils import escape


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


def axis(v: float) -> tuple[float, float]:
    """A round axis maximum at or above ``v`` and its tick step (1, 2 or 5 x 10^k, at most 5 ticks)."""
    k = 10 ** math.floor(math.log10(v))
    step = next(m * k / 10 for m in (1, 2, 5, 10, 20) if v / (m * k / 10) <= 5 + 1e-9)
    return math.ceil(v / step - 1e-9) * step, step


def colour_scale(x: float, y: float, lo: float, hi: float, color, label) -> list[str]:
    """A vertical colour bar from ``lo`` (bottom) to ``hi`` (top), ``color(v)`` filling it and
    ``label(v)`` naming its ends."""
    steps, h, w = 10, 120, 14
    el = [f'<text x="{x}" y="{y - 6}">accuracy %</text>']
    for i in range(steps):
        v = hi - (hi - lo) * (i + 0.5) / steps
        el.append(f'<rect x="{x}" y="{y + i * h / steps:.0f}" width="{w}" height="{h / steps:.0f}" fill="{color(v)}"/>')
    el.append(f'<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="none" stroke="#999"/>')
    el.append(f'<text x="{x + w + 4}" y="{y + 9}">{label(hi)}</text>')
    el.append(f'<text x="{x + w + 4}" y="{y + h}">{label(lo)}</text>')
    return el
