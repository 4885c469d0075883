"""Small line charts drawn as inline SVG on the server: nothing fetched, no script, and
presentation attributes only, which the console's Content-Security-Policy allows.

Every label goes through markupsafe's escaping: agent and version names are data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from markupsafe import Markup, escape
from pydantic import BaseModel

WIDTH, HEIGHT = 320, 120
LEFT, RIGHT, TOP, BOTTOM = 44, 8, 14, 18
# Colour-blind safe (Okabe and Ito), one per line in order.
COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#000000")


class Line(BaseModel):
    label: str
    values: list[float | None]
    dashed: bool = False
    # Which of COLOURS (by position); None: the line's own position.
    colour: int | None = None


def line_chart(
    title: str,
    lines: Sequence[Line],
    first: str,
    last: str,
    fmt: Callable[[float], str] = "{:.2f}".format,
    floor: float | None = 0.0,
    ceiling: float | None = None,
) -> Markup:
    """A chart of ``lines`` over equal steps from ``first`` to ``last`` (axis labels); a
    None value breaks its line. The y axis spans ``floor`` (or the least value) to
    ``ceiling`` (or the greatest)."""
    known = [v for line in lines for v in line.values if v is not None]
    low = floor if floor is not None else min(known, default=0.0)
    high = ceiling if ceiling is not None else max(known, default=1.0)
    if high <= low:
        high = low + 1.0
    steps = max((len(line.values) for line in lines), default=1)
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(i: int) -> float:
        return LEFT + (inner_w * i / (steps - 1) if steps > 1 else inner_w / 2)

    def y(v: float) -> float:
        return TOP + inner_h * (1 - (v - low) / (high - low))

    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<text x="{LEFT}" y="10" font-size="10" fill="#333">{escape(title)}</text>',
        f'<line x1="{LEFT}" y1="{TOP + inner_h}" x2="{WIDTH - RIGHT}" y2="{TOP + inner_h}" '
        'stroke="#999" stroke-width="1"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + inner_h}" stroke="#999" '
        'stroke-width="1"/>',
        f'<text x="{LEFT - 3}" y="{TOP + 4}" font-size="9" text-anchor="end" fill="#555">'
        f"{escape(fmt(high))}</text>",
        f'<text x="{LEFT - 3}" y="{TOP + inner_h}" font-size="9" text-anchor="end" '
        f'fill="#555">{escape(fmt(low))}</text>',
        f'<text x="{LEFT}" y="{HEIGHT - 4}" font-size="9" fill="#555">{escape(first)}</text>',
        f'<text x="{WIDTH - RIGHT}" y="{HEIGHT - 4}" font-size="9" text-anchor="end" '
        f'fill="#555">{escape(last)}</text>',
    ]
    for n, line in enumerate(lines):
        colour = COLOURS[(n if line.colour is None else line.colour) % len(COLOURS)]
        dash = ' stroke-dasharray="4 2"' if line.dashed else ""
        for run in _runs(line.values):
            points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in run)
            if len(run) == 1:
                ((i, v),) = run
                parts.append(
                    f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="2" fill="{colour}">'
                    f"<title>{escape(line.label)}: {escape(fmt(v))}</title></circle>"
                )
            else:
                parts.append(
                    f'<polyline points="{points}" fill="none" stroke="{colour}" '
                    f'stroke-width="1.5"{dash}><title>{escape(line.label)}</title></polyline>'
                )
    parts.append("</svg>")
    return Markup("".join(parts))


def legend(labels: Sequence[str]) -> Markup:
    """The colour of each line, in the charts' order."""
    items = "".join(
        f'<li><svg width="12" height="8" xmlns="http://www.w3.org/2000/svg"><rect width="12" '
        f'height="8" fill="{COLOURS[n % len(COLOURS)]}"/></svg> {escape(label)}</li>'
        for n, label in enumerate(labels)
    )
    return Markup(f'<ul class="legend">{items}</ul>')


def _runs(values: Sequence[float | None]) -> list[list[tuple[int, float]]]:
    """The unbroken stretches of known values, with their positions."""
    runs: list[list[tuple[int, float]]] = [[]]
    for i, v in enumerate(values):
        if v is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append((i, v))
    return [r for r in runs if r]
