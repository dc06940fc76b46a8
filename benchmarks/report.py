"""From measured windows to the results: JSON-ready aggregates, the printed table, the PNG chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loadgen import percentiles
from targets import Target

MB = 1024 * 1024
REDIS_SCALING_TARGET = 1.7  # issue 17: 2 workers on Redis, plain req/s >= 1.7x one worker's


def aggregate(
    *,
    targets: list[Target],
    windows: list[dict[str, Any]],
    idle_rss: dict[str, int],
    otlp: dict[str, Any],
    settings: dict[str, Any],
    machine: dict[str, Any],
) -> dict[str, Any]:
    rows = []
    for target in targets:
        row: dict[str, Any] = {
            "target": target.name,
            "version": target.version,
            "note": target.note,
            "unavailable": target.unavailable,
            "companions": [c.name for c in target.companions],  # measured with it: its Redis
        }
        if target.unavailable is None:
            row["idle_rss_mb"] = round(idle_rss.get(target.name, 0) / MB, 1)
            row["scenarios"] = {}
            for scenario in sorted({w["scenario"] for w in windows if w["target"] == target.name}):
                mine = [w for w in windows if w["target"] == target.name and w["scenario"] == scenario]
                row["scenarios"][scenario] = _combine(mine)
            row["headline"] = _headline(row)
        rows.append(row)
    results = {"settings": settings, "machine": machine, "otlp_receiver": otlp, "rows": rows}
    results["ratios"] = _ratios(rows)
    return results


def _combine(windows: list[dict[str, Any]]) -> dict[str, Any]:
    completed = sum(w["completed"] for w in windows)
    seconds = sum(w["seconds"] for w in windows)
    cpu = sum(w["cpu_s"] for w in windows)
    upstream_cpu = sum(w["upstream_cpu_s"] for w in windows)

    def per_request(key: str) -> float | None:
        total = sum(w.get(key) or 0.0 for w in windows)
        return round(total * 1000 / completed, 3) if completed else None

    def mean_cores(key: str) -> float | None:
        known = [(w[key], w["seconds"]) for w in windows if w.get(key) is not None]
        return round(sum(c * t for c, t in known) / sum(t for _, t in known), 3) if known else None

    latencies = [x for w in windows for x in w["_latencies"]]
    ttfts = [x for w in windows for x in w["_ttfts"]]
    return {
        "completed": completed,
        "errors": sum(w["errors"] for w in windows),
        "error_samples": [s for w in windows for s in w["error_samples"]][:5],
        "rps": round(completed / seconds, 1) if seconds else 0.0,
        "rps_by_round": [w["rps"] for w in windows],
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_request": round(cpu * 1000 / completed, 3) if completed else None,
        "upstream_cpu_ms_per_request": round(upstream_cpu * 1000 / completed, 3) if completed else None,
        # The target's companions (its Redis), included in cpu_ms_per_request; the OTLP receiver's
        # and the load generator's CPU; the machine's busy cores (anyone's), mean over the windows.
        "companion_cpu_ms_per_request": per_request("companion_cpu_s"),
        "otlp_cpu_ms_per_request": per_request("otlp_cpu_s"),
        "loadgen_cpu_ms_per_request": per_request("loadgen_cpu_s"),
        "cpu_cores": round(cpu / seconds, 3) if seconds else None,
        "busy_cores": mean_cores("busy_cores"),
        "steal_cores": mean_cores("steal_cores"),
        "worker_cpu_shares": _worker_shares(windows),
        "latency_ms": percentiles(latencies),
        "ttft_ms": percentiles(ttfts),
        "peak_rss_mb": round(max(w["peak_rss_bytes"] for w in windows) / MB, 1),
    }


def _worker_shares(windows: list[dict[str, Any]]) -> list[float] | None:
    """Each worker's share of the workers' CPU, busiest first, over all the windows (None: 1 process)."""
    split = [w.get("worker_cpu_s") or [] for w in windows]
    width = max((len(s) for s in split), default=0)
    if width < 2:
        return None
    totals = [sum(s[i] for s in split if i < len(s)) for i in range(width)]
    whole = sum(totals)
    return [round(t / whole, 3) for t in totals] if whole else None


def _headline(row: dict[str, Any]) -> dict[str, Any]:
    s = row["scenarios"]

    def get(scenario: str, *path: str) -> Any:
        value: Any = s.get(scenario)
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        return value

    return {
        "plain16_cpu_ms": get("plain16", "cpu_ms_per_request"),
        "stream64_cpu_ms": get("stream64", "cpu_ms_per_request"),
        "plain_rps": get("plain16", "rps"),
        "stream_rps": get("stream64", "rps"),
        "ttft_p50_ms": get("paced", "ttft_ms", "p50"),
        "plain_p99_ms": get("plain16", "latency_ms", "p99"),
        "errors": sum(v["errors"] for v in s.values()),
        "idle_rss_mb": row["idle_rss_mb"],
    }


def _ratios(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """respublica against the floor (the pass-through) and direct: the issue's targets as numbers."""
    by = {r["target"]: r.get("headline") for r in rows if r.get("headline")}
    gw, floor, direct = by.get("respublica"), by.get("passthrough"), by.get("direct")
    out: dict[str, Any] = {}

    def div(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    def sub(a: float | None, b: float | None) -> float | None:
        return round(a - b, 3) if a is not None and b is not None else None

    if gw and floor:
        out["respublica_vs_passthrough"] = {
            "plain16_cpu": div(gw["plain16_cpu_ms"], floor["plain16_cpu_ms"]),
            "stream64_cpu": div(gw["stream64_cpu_ms"], floor["stream64_cpu_ms"]),
            "plain_rps": div(gw["plain_rps"], floor["plain_rps"]),
            "added_ttft_p50_ms": sub(gw["ttft_p50_ms"], floor["ttft_p50_ms"]),
        }
    if gw and direct:
        out["respublica_vs_direct"] = {
            "stream_rps": div(gw["stream_rps"], direct["stream_rps"]),
            "added_ttft_p50_ms": sub(gw["ttft_p50_ms"], direct["ttft_p50_ms"]),
        }
    untraced = by.get("respublica-no-telemetry")
    if gw and untraced:
        # What tracing and metrics cost per request: every feature on, less the same without them.
        out["telemetry_cost_ms"] = {
            "plain16_cpu": sub(gw["plain16_cpu_ms"], untraced["plain16_cpu_ms"]),
            "stream64_cpu": sub(gw["stream64_cpu_ms"], untraced["stream64_cpu_ms"]),
        }
    one, two = by.get("respublica-redis"), by.get("respublica-redis-2w")
    if one and two:
        rps = div(two["plain_rps"], one["plain_rps"])
        out["redis_2_workers_vs_1"] = {
            "plain_rps": rps,
            "target": REDIS_SCALING_TARGET,
            "met": None if rps is None else rps >= REDIS_SCALING_TARGET,
            "plain16_cpu": div(two["plain16_cpu_ms"], one["plain16_cpu_ms"]),
        }
    return out


COLUMNS = [
    ("plain16_cpu_ms", "CPU/req plain16 (ms)", "{:.3f}"),
    ("stream64_cpu_ms", "CPU/req stream64 (ms)", "{:.2f}"),
    ("plain_rps", "plain req/s c=32", "{:,.0f}"),
    ("stream_rps", "stream req/s c=32", "{:,.0f}"),
    ("ttft_p50_ms", "TTFT p50 (ms)", "{:.1f}"),
    ("plain_p99_ms", "plain p99 (ms)", "{:.1f}"),
    ("idle_rss_mb", "idle RSS (MB)", "{:.0f}"),
    ("errors", "errors", "{:d}"),
]


def table(results: dict[str, Any]) -> str:
    """A Markdown table, one row per target (a peer that could not run says why)."""
    header = ["target", *(c[1] for c in COLUMNS)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in results["rows"]:
        name = f"{row['target']} ({row['version']})" if row["version"] else row["target"]
        if row["unavailable"] is not None:
            lines.append(f"| {name} | unavailable: {row['unavailable'][:160]} |" + " |" * (len(COLUMNS) - 1))
            continue
        cells = []
        for key, _, fmt in COLUMNS:
            value = row["headline"].get(key)
            cells.append("-" if value is None else fmt.format(value))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    settings, machine = results["settings"], results["machine"]
    lines.append("")
    lines.append(
        f"{settings['rounds']} alternating round(s) of {settings['seconds']} s per target and scenario; "
        f"{machine.get('cpus')} CPUs; load average at start {machine['loadavg_start'][0]:.2f}, "
        f"at end {machine['loadavg_end'][0]:.2f}"
    )
    for name, ratios in results["ratios"].items():
        lines.append(f"{name}: " + ", ".join(f"{k} {v}" for k, v in ratios.items()))
    scaling = results["ratios"].get("redis_2_workers_vs_1")
    if scaling and scaling["plain_rps"] is not None:
        lines.append(
            f"2 workers / 1 worker on Redis: {scaling['plain_rps']:.2f}x "
            f"(target >= {scaling['target']}x; plain16 req/s)"
        )
    if results.get("otlp_receiver"):
        lines.append(f"OTLP receiver: {results['otlp_receiver']}")
    cores = cores_table(results)
    if cores:
        lines += ["", cores]
    return "\n".join(lines)


def cores_table(results: dict[str, Any]) -> str:
    """plain16: where the machine's cores went, per target (empty when plain16 was not measured)."""
    cpus = results["machine"].get("cpus")
    header = (
        "| plain16, c=32 | req/s | target CPU ms/req | of which Redis | upstream | OTLP receiver "
        f"| load generator | target cores | busy cores of {cpus} (anyone's) | stolen cores "
        "| workers' CPU split |"
    )
    lines = [header, "|" + "---|" * 11]
    rows = 0
    for row in results["rows"]:
        plain = (row.get("scenarios") or {}).get("plain16")
        if not plain:
            continue
        rows += 1

        def ms(key: str, plain: dict[str, Any] = plain) -> str:
            value = plain.get(key)
            return "-" if value is None else f"{value:.3f}"

        direct = row["target"] == "direct"  # the upstream is the target itself
        cells = [
            row["target"],
            f"{plain['rps']:,.0f}",
            ms("cpu_ms_per_request"),
            ms("companion_cpu_ms_per_request") if row.get("companions") else "-",
            "(itself)" if direct else ms("upstream_cpu_ms_per_request"),
            ms("otlp_cpu_ms_per_request"),
            ms("loadgen_cpu_ms_per_request"),
            "-" if plain.get("cpu_cores") is None else f"{plain['cpu_cores']:.2f}",
            "-" if plain.get("busy_cores") is None else f"{plain['busy_cores']:.2f}",
            "-" if plain.get("steal_cores") is None else f"{plain['steal_cores']:.2f}",
            "/".join(f"{share * 100:.0f}" for share in plain.get("worker_cpu_shares") or []) or "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) if rows else ""


def chart(results: dict[str, Any], path: Path) -> str:
    """A PNG of the headline figures, one panel each; the reason when it can not be drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "skipped: matplotlib is not installed (benchmarks/setup_peers.sh installs it)"
    rows = [r for r in results["rows"] if r.get("headline")]
    panels = [
        ("plain16_cpu_ms", "CPU ms per request, plain 16 tokens", "lower is better"),
        ("stream64_cpu_ms", "CPU ms per request, stream 64 tokens", "lower is better"),
        ("plain_rps", "plain req/s at c=32", "higher is better"),
        ("ttft_p50_ms", "time to first token p50 (ms), paced", "lower is better"),
        ("idle_rss_mb", "idle RSS (MB)", "lower is better"),
    ]
    fig, grid = plt.subplots(2, 3, figsize=(14, 7))
    axes = list(grid.flat)
    axes[-1].axis("off")
    names = [r["target"] for r in rows]
    colours = ["#2a9d8f" if n.startswith("respublica") else "#8d99ae" for n in names]
    for ax, (key, title, hint) in zip(axes, panels, strict=False):
        values = [r["headline"].get(key) or 0.0 for r in rows]
        ax.barh(names, values, color=colours)
        positive = [v for v in values if v > 0]
        spread = max(positive) / min(positive) if positive else 1.0
        if spread > 20:  # the peers may be orders of magnitude apart
            ax.set_xscale("log")
            hint += "; log scale"
        ax.set_title(f"{title}\n({hint})", fontsize=9)
        ax.invert_yaxis()
        ax.tick_params(labelsize=8)
        for i, v in enumerate(values):
            ax.text(v, i, f" {v:,.0f}" if v >= 100 else f" {v:.3g}", va="center", fontsize=8)
    load = results["machine"]["loadavg_start"][0]
    fig.suptitle(
        f"respublica gateway beside its peers: {results['settings']['rounds']} alternating rounds, "
        f"{results['machine'].get('cpus')} CPUs, load average {load:.1f}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
