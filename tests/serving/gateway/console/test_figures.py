"""The console's pure parts: percentiles, bars, charts, form parsing, date windows, sessions."""

from __future__ import annotations

import pytest

from respublica.serving.gateway.admin_service import InvalidInput
from respublica.serving.gateway.console import figures, session
from respublica.serving.gateway.console.router import date_window, parse_limits
from respublica.serving.gateway.db.repo import UsageTotal


def test_percentile_nearest_rank() -> None:
    assert figures.percentile([], 50) is None
    assert figures.percentile([5.0], 95) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert figures.percentile(values, 50) == 50.0
    assert figures.percentile(values, 95) == 95.0
    assert figures.percentile(list(reversed(values)), 100) == 100.0


def test_nice_ceiling() -> None:
    assert [figures.nice_ceiling(v) for v in (0, 1, 3, 10, 11, 240, 501, 9_999)] == [
        1,
        1,
        5,
        10,
        20,
        500,
        1000,
        10_000,
    ]


def test_budget_levels() -> None:
    assert figures.Budget(10, None).fraction is None
    assert figures.budget_level(figures.Budget(79, 100)) == "ok"
    assert figures.budget_level(figures.Budget(80, 100)) == "warn"
    assert figures.budget_level(figures.Budget(100, 100)) == "over"
    assert figures.budget_level(figures.Budget(0, 0)) == "over"  # a zero budget admits nothing
    assert 'width="100.0"' in figures.budget_bar(figures.Budget(250, 100)).split("fill")[1]  # capped


def test_chart_keeps_at_most_eight_series() -> None:
    totals = [UsageTotal(f"t{i}", "m", "2026-11-01", 1, 0, i + 1, 0) for i in range(12)]
    svg = figures.stacked_bars(["2026-11-01"], figures.tokens_by(totals, "tenant"), "x")
    assert 'class="s7"' in svg and 'class="s8"' not in svg and ">other<" in svg
    assert ">t11<" in svg  # the largest series keep their names


def test_parse_limits() -> None:
    limits = parse_limits({"tokensPerDay": "1_000", "maxConcurrent": "", "allowedModels": " a, b ,"})
    assert limits.tokens_per_day == 1000 and limits.max_concurrent is None
    assert limits.allowed_models == ("a", "b")
    assert parse_limits({}).allowed_models == ("*",)
    with pytest.raises(InvalidInput, match="Requests per minute: '-1' is not a whole number"):
        parse_limits({"requestsPerMinute": "-1"})


def test_date_window() -> None:
    assert date_window(None, None, "2026-11-18") == ("2026-11-05", "2026-11-18")
    assert date_window("2026-01-01", "2026-01-01", "2026-11-18") == ("2026-01-01", "2026-01-01")
    for first, last in (("2026-02-01", "2026-01-01"), ("2024-01-01", "2026-01-01"), ("yesterday", None)):
        with pytest.raises(InvalidInput):
            date_window(first, last, "2026-11-18")


def test_session_round_trip_and_tampering() -> None:
    key = session.session_key("admin-key-0123456789abcdef")
    issued, cookie = session.issue(key, 1000.0, 60)
    assert session.read(key, cookie, 1000.0) == issued
    assert session.read(key, cookie, 1060.0) is None  # expired
    assert session.read(session.session_key("another-admin-key-0000"), cookie, 1000.0) is None
    assert session.read(key, cookie[:-1] + ("0" if cookie[-1] != "0" else "1"), 1000.0) is None
    assert session.read(key, None, 1000.0) is None and session.read(key, "v1.x", 1000.0) is None
    assert session.check_csrf(issued.csrf, issued.csrf)
    assert not session.check_csrf(issued.csrf, None) and not session.check_csrf(issued.csrf, "")
