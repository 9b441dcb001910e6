"""The sweep's picture (``sweep.svg``): selection accuracy over bottom x top, one panel per transition.

Its one reader is ``sweeps.py``, which passes plain data: the ranked rows and the experts' scores.
"""

from __future__ import annotations

from xml.sax.saxutils import escape

from hubswap.evaluate.stats import pct
from hubswap.figures import colour_scale, document, headings
from hubswap.sweep_eval import Config


def sweep_heatmap(title: str, rows: list, experts: dict[str, float], *, questions: int) -> str:
    """Selection accuracy (%) over bottom (rows) x top (columns), one panel per transition size,
    each cell on the same ``questions``, with the colour scale beside the panels. ``rows`` are the
    sweep's ranked configurations (``sweeps.Ranked``: ``config`` and ``accuracy``), best first."""
    bottoms = sorted({r.config.bottom for r in rows})
    tops = sorted({r.config.top for r in rows})
    transitions = sorted({r.config.transition for r in rows})
    acc = {r.config: r.accuracy for r in rows}
    chosen = rows[0].config
    outline = ""
    cell, gap, left, top_m = 44, 36, 100, 70
    panel_w = cell * len(tops)
    expert_text = f"on the same {questions} questions: " + ", ".join(f"{k} expert {pct(v)}%" for k, v in experts.items())
    scale_x = left + len(transitions) * (panel_w + gap)  # the colour scale, right of the panels
    width = round(max(420, scale_x + 90, 2 * left + 6.2 * len(expert_text)))
    height = max(top_m + cell * len(bottoms), top_m + 120) + 44
    lo = min([*acc.values(), *experts.values()])
    hi = max([*acc.values(), *experts.values()])

    def color(v: float) -> str:
        # White (worst) to dark blue (best) on this sweep's own scale.
        f = 0.5 if hi == lo else (v - lo) / (hi - lo)
        r, g, b = (round(255 + (c - 255) * f) for c in (8, 69, 148))
        return f"rgb({r},{g},{b})"

    el = headings(width, title, f"accuracy (%) of each configuration on the same {questions} questions; "
                  f"outlined: chosen ({chosen.name})")
    el += colour_scale(scale_x, top_m, lo, hi, color, pct)
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
                          f'<title>{escape(c.name)}: {pct(v)}% of {questions} questions</title></rect>')
                el.append(f'<text x="{x + cell / 2}" y="{y + cell / 2 + 4}" text-anchor="middle" '
                          f'fill="{"white" if dark else "black"}">{pct(v)}</text>')
    el.append(outline)
    el.append(f'<text x="{left - 8}" y="{top_m - 6}" text-anchor="end">bottom \\ top</text>')
    el.append(f'<text x="{left}" y="{height - 14}">{escape(expert_text)}</text>')
    return document(width, height, el)

