"""The console's figures, as pure functions: percentiles, budget bars, the usage charts, the CSV.

Charts and bars are SVG written here, on the server, inline in the page: no script, no inline
`style` attribute (only presentation attributes and classes), so the strict Content-Security-Policy
holds. Every text that reaches the SVG (tenant and model names) is escaped here.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence

from markupsafe import Markup

from respublica.serving.gateway.admin_service import Budget
from respublica.serving.gateway.db.repo import UsageTotal

PALETTE_SIZE = 8  # classes s0..s7 in console.css


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank percentile (q in [0, 100]) of `values`; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def ttft_by_model(samples: Iterable[tuple[str, float]]) -> dict[str, tuple[float, float, int]]:
    """(p50, p95, count) of time to first token in ms, per model."""
    grouped: dict[str, list[float]] = {}
    for model, ms in samples:
        grouped.setdefault(model, []).append(ms)
    out: dict[str, tuple[float, float, int]] = {}
    for model, values in grouped.items():
        p50, p95 = percentile(values, 50), percentile(values, 95)
        assert p50 is not None and p95 is not None
        out[model] = (p50, p95, len(values))
    return out


def budget_level(budget: Budget) -> str:
    """A CSS class: ok below 80 %, warn up to 100 %, over beyond."""
    f = budget.fraction
    if f is None or f < 0.8:
        return "ok"
    return "warn" if f < 1.0 else "over"


def budget_bar(budget: Budget) -> Markup:
    """A horizontal bar (SVG, width in percent of the budget, capped at 100)."""
    f = budget.fraction
    if f is None:
        return Markup('<span class="muted">no budget</span>')
    width = round(min(f, 1.0) * 100, 1)
    label = f"{f * 100:.0f}% of {budget.limit:,}"
    return Markup(
        '<svg class="bar" viewBox="0 0 100 6" preserveAspectRatio="none" role="img" aria-label="{label}">'
        '<rect class="track" width="100" height="6"/><rect class="fill {level}" width="{width}" height="6"/>'
        "</svg>"
    ).format(label=label, level=budget_level(budget), width=width)


def tokens_by(totals: Iterable[UsageTotal], key: str) -> dict[str, dict[str, int]]:
    """{series (tenant or model): {day: input + output tokens}}."""
    out: dict[str, dict[str, int]] = {}
    for t in totals:
        name = t.tenant if key == "tenant" else t.model
        days = out.setdefault(name, {})
        days[t.day] = days.get(t.day, 0) + t.input_tokens + t.output_tokens
    return out


def nice_ceiling(value: int) -> int:
    """The axis top: 1, 2 or 5 times a power of ten, at least `value` (and at least 1)."""
    if value <= 1:
        return 1
    power = int(10 ** math.floor(math.log10(value)))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power  # pragma: no cover - the loop always returns


def stacked_bars(days: Sequence[str], series: Mapping[str, Mapping[str, int]], title: str) -> Markup:
    """Tokens per day, one stacked bar per day, one colour per series (at most PALETTE_SIZE named,
    the rest summed as "other"), a y axis with three ticks and a legend."""
    names = sorted(series, key=lambda n: -sum(series[n].values()))
    if len(names) > PALETTE_SIZE:
        kept, rest = names[: PALETTE_SIZE - 1], names[PALETTE_SIZE - 1 :]
        merged: dict[str, int] = {}
        for name in rest:
            for day, v in series[name].items():
                merged[day] = merged.get(day, 0) + v
        series = {**{n: series[n] for n in kept}, "other": merged}
        names = [*kept, "other"]
    width, height, left, bottom, top = 720, 220, 64, 28, 10
    plot_w, plot_h = width - left - 10, height - bottom - top
    totals = [sum(series[n].get(d, 0) for n in names) for d in days]
    ceiling = nice_ceiling(max(totals, default=0))
    slot = plot_w / max(len(days), 1)
    bar_w = max(slot * 0.7, 1.0)
    parts = [
        Markup(
            '<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="{title}"><title>{title}</title>'
        ).format(w=width, h=height + 12 + 20 * ((len(names) + 3) // 4), title=title)
    ]
    for tick in (0, ceiling // 2, ceiling):
        y = top + plot_h - plot_h * tick / ceiling
        parts.append(
            Markup(
                '<line class="grid" x1="{l}" x2="{r}" y1="{y:.1f}" y2="{y:.1f}"/>'
                '<text class="axis" x="{tx}" y="{ty:.1f}" text-anchor="end">{label}</text>'
            ).format(l=left, r=width - 10, y=y, tx=left - 6, ty=y + 4, label=f"{tick:,}")
        )
    label_every = max(1, math.ceil(len(days) / 10))
    for i, day in enumerate(days):
        x = left + i * slot + (slot - bar_w) / 2
        y = top + plot_h
        for j, name in enumerate(names):
            value = series[name].get(day, 0)
            if value <= 0:
                continue
            h = plot_h * value / ceiling
            y -= h
            parts.append(
                Markup(
                    '<rect class="s{j}" x="{x:.1f}" y="{y:.1f}" width="{w:.1f}" height="{h:.1f}">'
                    "<title>{day} {name}: {value} tokens</title></rect>"
                ).format(j=j, x=x, y=y, w=bar_w, h=h, day=day, name=name, value=f"{value:,}")
            )
        if i % label_every == 0:
            parts.append(
                Markup('<text class="axis" x="{x:.1f}" y="{y}" text-anchor="middle">{label}</text>').format(
                    x=x + bar_w / 2, y=height - 10, label=day[5:]
                )
            )
    for j, name in enumerate(names):
        lx, ly = left + (j % 4) * 165, height + 8 + 20 * (j // 4)
        parts.append(
            Markup(
                '<rect class="s{j}" x="{x}" y="{y}" width="12" height="12"/>'
                '<text class="legend" x="{tx}" y="{ty}">{name}</text>'
            ).format(j=j, x=lx, y=ly, tx=lx + 18, ty=ly + 11, name=name)
        )
    parts.append(Markup("</svg>"))
    return Markup("").join(parts)


def day_range(first: str, last: str) -> list[str]:
    """Every YYYY-MM-DD from first to last, inclusive."""
    from datetime import date, timedelta

    start, end = date.fromisoformat(first), date.fromisoformat(last)
    return [(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]


CSV_COLUMNS = ("day", "tenant", "model", "requests", "errors", "input_tokens", "output_tokens")


def _cell(value: str | int) -> str | int:
    # A cell a spreadsheet would run as a formula (=, +, -, @, tab, CR) is prefixed with a quote.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def usage_csv(totals: Iterable[UsageTotal]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for t in totals:
        writer.writerow(
            [
                _cell(v)
                for v in (t.day, t.tenant, t.model, t.requests, t.errors, t.input_tokens, t.output_tokens)
            ]
        )
    return out.getvalue()
