"""manifests/operator and manifests/gateway are the chart's default render (one source of truth)."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import chart


def test_manifests_are_the_charts_render() -> None:
    wanted, committed = chart.manifest_files(), chart.committed_files()
    stale = sorted(p for p in set(wanted) | set(committed) if wanted.get(p) != committed.get(p))
    assert not stale, (
        f"manifests/{', manifests/'.join(stale)} differ from the chart; regenerate: {chart.REGENERATE}"
    )


def test_every_default_template_lands_in_a_file() -> None:
    placed = {t for names in chart.LAYOUT.values() for t in names} | chart.ELSEWHERE
    assert set(chart.render(chart.MANIFEST_VALUES)) <= placed
    assert set(chart.manifest_files()) == set(chart.LAYOUT) | {chart.NAMESPACED_FILE}


def test_check_mode_reports_a_drift(monkeypatch: pytest.MonkeyPatch) -> None:
    """`scripts/manifests --check` fails (and names the command) when a file was edited by hand."""
    files = chart.manifest_files()
    edited = dict(files)
    edited["gateway/40-deployment.yaml"] += "# edited by hand\n"
    monkeypatch.setattr(chart, "committed_files", lambda: edited)
    assert chart.main(["--check"]) == 1
    monkeypatch.setattr(chart, "committed_files", lambda: files)
    assert chart.main(["--check"]) == 0


def test_write_removes_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for folder in chart.GENERATED_FOLDERS:
        (tmp_path / folder).mkdir()
    (tmp_path / "gateway" / "99-old.yaml").write_text("kind: Old\n")
    monkeypatch.setattr(chart, "MANIFESTS", tmp_path)
    changes = chart.write()
    assert "removed gateway/99-old.yaml" in changes
    assert chart.committed_files() == chart.manifest_files()
    assert chart.write() == []


def test_the_charts_copies_are_their_sources() -> None:
    """The CRD and the monitoring files the chart carries are byte copies (scripts/manifests)."""
    assert chart.chart_copies(), "nothing to copy?"
    assert chart.stale_copies() == [], f"regenerate: {chart.REGENERATE}"
