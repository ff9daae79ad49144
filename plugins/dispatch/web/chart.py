"""The runs page's chart, drawn on the server as SVG: no JavaScript library, no CDN (users'
networks may block one). Stacked bars of invoices sent per day, one colour per channel, with
a title and a table-like text alternative for screen readers."""

from __future__ import annotations

import datetime as dt
from html import escape

import pandas as pd

from dispatch.vocabulary import ChannelName

COLOURS: dict[str, str] = {
    ChannelName.EMAIL: "#2563eb",
    ChannelName.LETTER: "#d97706",
    ChannelName.SMS: "#059669",
    "none": "#6b7280",
}
WIDTH, HEIGHT, PAD_LEFT, PAD_BOTTOM, PAD_TOP = 760, 240, 44, 36, 16


def sends_chart(df: pd.DataFrame, first: dt.date, last: dt.date) -> str:
    """An SVG of ``df`` (columns day, channel, invoices) for every day from ``first`` to ``last``."""
    days = [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]
    table = (
        df.pivot_table(index="day", columns="channel", values="invoices", aggfunc="sum", fill_value=0)
        if not df.empty
        else pd.DataFrame()
    )
    channels = [c for c in COLOURS if c in table.columns]
    cells = table.to_dict()  # channel → {day → invoices}
    totals = [int(sum(cells[c].get(d, 0) for c in cells)) for d in days]
    top = max([*totals, 1])
    plot_w, plot_h = WIDTH - PAD_LEFT - 8, HEIGHT - PAD_TOP - PAD_BOTTOM
    bar = plot_w / len(days)
    said = ", ".join(f"{d:%b %d}: {t}" for d, t in zip(days, totals, strict=True) if t) or "nothing sent"
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-labelledby="chart-title chart-desc" class="chart">',
        '<title id="chart-title">Invoices sent per day and channel</title>',
        f'<desc id="chart-desc">{escape(said)}</desc>',
        f'<line x1="{PAD_LEFT}" y1="{PAD_TOP + plot_h}" x2="{WIDTH - 8}" y2="{PAD_TOP + plot_h}" '
        'stroke="#98a2b3"/>',
        f'<text x="{PAD_LEFT - 6}" y="{PAD_TOP + 4}" text-anchor="end" font-size="11">{top}</text>',
        f'<text x="{PAD_LEFT - 6}" y="{PAD_TOP + plot_h}" text-anchor="end" font-size="11">0</text>',
    ]
    for n, day in enumerate(days):
        x = PAD_LEFT + n * bar + 1
        y: float = PAD_TOP + plot_h
        for channel in channels:
            value = int(cells[channel].get(day, 0))
            if not value:
                continue
            h = plot_h * value / top
            y -= h
            parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(bar - 2, 1):.1f}" height="{h:.1f}" '
                f'fill="{COLOURS[channel]}"><title>{day:%Y-%m-%d} {channel}: {value}</title></rect>'
            )
        if n % max(len(days) // 7, 1) == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{HEIGHT - PAD_BOTTOM + 14}" text-anchor="middle" '
                f'font-size="11">{day:%b %d}</text>'
            )
    for n, channel in enumerate(channels or list(ChannelName)):
        lx = PAD_LEFT + n * 90
        parts.append(f'<rect x="{lx}" y="{HEIGHT - 12}" width="10" height="10" fill="{COLOURS[channel]}"/>')
        parts.append(f'<text x="{lx + 14}" y="{HEIGHT - 3}" font-size="11">{channel}</text>')
    parts.append("</svg>")
    return "\n".join(parts)
