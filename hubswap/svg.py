"""SVG basics for hubswap's three figures (the card's layer map, analyze's bars, sweep's heat map).

Written by hand: each figure is a few dozen rectangles and labels, not worth a plotting library
(matplotlib would add ~40 MB and a slow import for one figure); the output is byte-for-byte
reproducible, and the Hub shows it in a card as an image.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

__all__ = ["document", "escape", "headings"]


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
