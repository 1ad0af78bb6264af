"""Inline SVG charts for the run's report: horizontal bars and lines, drawn with presentation attributes only
(no script, no style attribute, no external reference), every text HTML-escaped."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence

PALETTE = (
    "#3b6fb6", "#e07b39", "#4c9a5b", "#c2464f", "#8a63b8", "#8c6d31",
    "#d16fa8", "#6b6b6b", "#9bab2d", "#2ba3b4", "#1f3f73", "#b35806",
)  # fmt: skip
_CHAR_PX = 7  # the width of a character of the charts' 12 px text, near enough to lay labels out
_MAX_LABEL_CHARS = 40
NOTHING = "\N{EN DASH}"  # what a table or chart shows for no value


def escape(value: object) -> str:
    """``value`` as HTML text, safe in an element and in a quoted attribute."""
    return html.escape(str(value), quote=True)


def number(value: float | int | None) -> str:
    """A number as a reader wants it: thousands separated, at most three significant decimals."""
    if value is None:
        return NOTHING
    if isinstance(value, int) or (float(value).is_integer() and abs(value) >= 1):
        return f"{int(value):,}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _short(label: str) -> str:
    return label if len(label) <= _MAX_LABEL_CHARS else label[: _MAX_LABEL_CHARS - 1] + "…"


def _svg(title: str, width: int, height: int, body: list[str]) -> str:
    return (
        f'<svg class="chart" role="img" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" aria-label="{escape(title)}"><title>{escape(title)}</title>'
        + "".join(body)
        + "</svg>"
    )


def _text(x: float, y: float, text: str, *, anchor: str = "start", size: int = 12, fill: str = "#222") -> str:
    return (
        f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{fill}" '
        f'font-family="sans-serif">{escape(text)}</text>'
    )


def _legend(names: Sequence[str], x: float, y: float) -> list[str]:
    parts = []
    for k, name in enumerate(names):
        colour = PALETTE[k % len(PALETTE)]
        column, row = k % 4, k // 4
        left = x + column * 190
        top = y + row * 18
        parts.append(f'<rect x="{left:.1f}" y="{top - 10:.1f}" width="12" height="12" fill="{colour}"/>')
        parts.append(_text(left + 17, top, _short(name)[:24]))
    return parts


def _legend_height(count: int) -> int:
    return 0 if count <= 1 else 18 * math.ceil(count / 4) + 8


def bar_chart(
    title: str,
    categories: Sequence[str],
    series: Sequence[tuple[str, Sequence[float | int | None]]],
    *,
    unit: str = "",
) -> str:
    """Horizontal bars: one row per category, one bar per series in it, each bar's value written after it.

    :param title: the chart's accessible title
    :param categories: the rows' labels
    :param series: ``(name, values)`` with a value per category (None: no bar); names make a legend when
        there are several
    :param unit: written after each value (``" s"``, ``"%"``)
    """
    label_px = min(max((len(_short(c)) for c in categories), default=4) * _CHAR_PX + 12, 300)
    bars_px, value_px = 460, 90
    width = label_px + bars_px + value_px
    bar_height = 14
    row_height = bar_height * len(series) + 8
    top = 8 + _legend_height(len(series))
    height = top + row_height * max(len(categories), 1) + 8
    largest = max((v for _, values in series for v in values if v is not None), default=0) or 1
    body = _legend([name for name, _ in series], label_px, 18) if len(series) > 1 else []
    body.append(f'<line x1="{label_px}" y1="{top - 4}" x2="{label_px}" y2="{height - 6}" stroke="#888"/>')
    for row, category in enumerate(categories):
        y = top + row * row_height
        body.append(_text(label_px - 6, y + row_height / 2 + 4, _short(category), anchor="end"))
        for k, (name, values) in enumerate(series):
            value = values[row]
            if value is None:
                continue
            length = max(bars_px * value / largest, 1 if value else 0)
            bar_y = y + 4 + k * bar_height
            tip = f"{category} {name}: {number(value)}{unit}"
            body.append(
                f'<rect x="{label_px + 1}" y="{bar_y}" width="{length:.1f}" height="{bar_height - 2}" '
                f'fill="{PALETTE[k % len(PALETTE)]}"><title>{escape(tip)}</title></rect>'
            )
            body.append(
                _text(label_px + length + 5, bar_y + bar_height - 3, f"{number(value)}{unit}", size=11)
            )
    return _svg(title, width, height, body)


def _ticks(high: float, count: int = 5) -> list[float]:
    """Round tick values from 0 to at least ``high``."""
    if high <= 0:
        return [0.0, 1.0]
    raw = high / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    return [step * k for k in range(math.ceil(high / step - 1e-9) + 1)]


def line_chart(
    title: str,
    lines: Sequence[tuple[str, Sequence[tuple[float, float]]]],
    *,
    x_label: str,
    y_label: str,
) -> str:
    """Lines over a shared x axis from 0, with ticks on both axes and a legend.

    :param lines: ``(name, [(x, y), ...])`` per line
    """
    width, height = 760, 300
    left, right, top = 64, 16, 12
    legend = _legend_height(len(lines))
    bottom = 44 + legend
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = _ticks(max((x for _, points in lines for x, _ in points), default=0))
    ys = _ticks(max((y for _, points in lines for _, y in points), default=0))
    x_high, y_high = xs[-1] or 1, ys[-1] or 1

    def at(x: float, y: float) -> str:
        return f"{left + plot_w * x / x_high:.1f},{top + plot_h * (1 - y / y_high):.1f}"

    body = [f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#fafafa" stroke="#888"/>']
    for y in ys:
        pixel = top + plot_h * (1 - y / y_high)
        body.append(
            f'<line x1="{left}" y1="{pixel:.1f}" x2="{left + plot_w}" y2="{pixel:.1f}" stroke="#ddd"/>'
        )
        body.append(_text(left - 6, pixel + 4, number(y), anchor="end", size=11))
    for x in xs:
        pixel = left + plot_w * x / x_high
        body.append(_text(pixel, top + plot_h + 16, number(x), anchor="middle", size=11))
    body.append(_text(left + plot_w / 2, top + plot_h + 34, x_label, anchor="middle"))
    body.append(
        f'<text x="14" y="{top + plot_h / 2:.1f}" font-size="12" text-anchor="middle" fill="#222" '
        f'font-family="sans-serif" transform="rotate(-90 14 {top + plot_h / 2:.1f})">{escape(y_label)}</text>'
    )
    for k, (name, points) in enumerate(lines):
        if points:
            body.append(
                f'<polyline fill="none" stroke="{PALETTE[k % len(PALETTE)]}" stroke-width="2" '
                f'points="{" ".join(at(x, y) for x, y in points)}"><title>{escape(name)}</title></polyline>'
            )
    if len(lines) > 1:
        body += _legend([name for name, _ in lines], left, top + plot_h + 56)
    return _svg(title, width, height, body)
