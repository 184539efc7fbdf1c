"""The tables a bench run prints: direct against gateway, and gateway A against gateway B.

``totals`` maps (scenario, target) to the sum of that pair's measured
phases; targets are ``"direct"``, ``"gateway"`` and, with --compare-src, ``"B"``.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from loadgen import Measurement, percentile
from workload import CHUNKS, STREAM_CONCURRENCY, TARGETS

Totals = dict[tuple[str, str], Measurement]


def fmt(value: float, digits: int = 2) -> str:
    if value != value:  # nan
        return "-"
    return f"{value:,.{digits}f}"


def results_table(totals: Totals) -> tuple[str, list[str]]:
    """The table of docs/performance.md, and the names of the targets missed."""

    def t(scenario: str, target: str) -> Measurement:
        return totals.get((scenario, target), Measurement())

    rows: list[tuple[str, ...]] = []
    misses: list[str] = []

    def mark(passed: bool | None, what: str) -> str:
        if passed is None:
            return ""
        if not passed:
            misses.append(what)
        return "ok" if passed else "MISS"

    def ms(values: list[float], q: float) -> float:
        return 1000 * percentile(values, q)

    c1d, c1g = t("c1", "direct"), t("c1", "gateway")
    for q in (50, 99):
        d, g = ms(c1d.latencies, q), ms(c1g.latencies, q)
        added = g - d
        target = f"< +{TARGETS['added_p50']:g} ms" if q == 50 else ""
        passed = added < TARGETS["added_p50"] if q == 50 else None
        rows.append((f"latency p{q}, c=1 (ms)", fmt(d, 3), fmt(g, 3), f"+{fmt(added, 3)} ({fmt(g / d, 1)}x)",
                     target, "+13-18 ms" if q == 50 else "", mark(passed, f"added p{q} latency")))
    c64d, c64g = t("c64", "direct"), t("c64", "gateway")
    rows.append(("throughput, c=64 (req/s)", fmt(c64d.rps, 0), fmt(c64g.rps, 0), f"{fmt(c64g.rps / c64d.rps)}x",
                 f">= {TARGETS['rps_c64']:g}", "60-80", mark(c64g.rps >= TARGETS["rps_c64"], "req/s at c=64")))
    for q in (50, 99):
        d, g = ms(c64d.latencies, q), ms(c64g.latencies, q)
        rows.append((f"latency p{q}, c=64 (ms)", fmt(d), fmt(g), f"+{fmt(g - d)} ({fmt(g / d, 1)}x)", "", "", ""))
    sd, sg = t("stream", "direct"), t("stream", "gateway")
    for q in (50, 99):
        d, g = ms(sd.first_events, q), ms(sg.first_events, q)
        rows.append((f"stream first event p{q}, c=1 (ms)", fmt(d, 3), fmt(g, 3),
                     f"+{fmt(g - d, 3)} ({fmt(g / d, 1)}x)", "", "", ""))
    d, g = ms(sd.latencies, 50), ms(sg.latencies, 50)
    rows.append(("stream total p50, c=1 (ms)", fmt(d), fmt(g), f"+{fmt(g - d)} ({fmt(g / d, 2)}x)", "", "", ""))
    s16d, s16g = t("stream16", "direct"), t("stream16", "gateway")
    d, g = ms(s16d.first_events, 50), ms(s16g.first_events, 50)
    rows.append((f"stream first event p50, c={STREAM_CONCURRENCY} (ms)", fmt(d, 3), fmt(g, 3),
                 f"+{fmt(g - d, 3)} ({fmt(g / d, 1)}x)", "", "", ""))
    for name, gateway, target_key, litellm in (
        ("gateway CPU / request, c=1 (ms)", c1g, "cpu_request", "12-18 ms"),
        ("gateway CPU / request, c=64 (ms)", c64g, "cpu_request", "12-18 ms"),
        (f"gateway CPU / {CHUNKS}-chunk stream, c=1 (ms)", sg, "cpu_stream", "30-45 ms"),
        (f"gateway CPU / {CHUNKS}-chunk stream, c={STREAM_CONCURRENCY} (ms)", s16g, "cpu_stream", "30-45 ms"),
    ):
        value = gateway.cpu_ms("gateway")
        rows.append((name, "-", fmt(value, 3), "", f"<= {TARGETS[target_key]:g} ms", litellm,
                     mark(value <= TARGETS[target_key], name)))
    for process, label in (("upstream", "fake upstream"), ("loadgen", "load generator")):
        for scenario, name in (("c64", "request, c=64"), ("stream", "stream, c=1")):
            d, g = t(scenario, "direct").cpu_ms(process), t(scenario, "gateway").cpu_ms(process)
            rows.append((f"{label} CPU / {name} (ms)", fmt(d, 3), fmt(g, 3), "", "", "", ""))
    direct_errors, gateway_errors = _errors(totals, "direct"), _errors(totals, "gateway")
    rows.append(("errors (all phases)", str(direct_errors), str(gateway_errors), "", "0", "",
                 mark(sum(m.errors for m in totals.values()) == 0, "errors")))

    header = ("metric", "direct", "via gateway", "added / ratio", "target", "LiteLLM", "")
    # Left-aligned names, right-aligned figures, and the verdict unpadded at the end.
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = []
    for row in [header, None, *rows]:
        if row is None:
            lines.append("  ".join("-" * w for w in widths))
            continue
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:-1], widths[1:-1])] + [row[-1]]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines), misses


def cpu_checks(totals: Totals) -> str:
    """Two sanity checks: schedstat agrees with utime+stime, and the idle gateway stays near zero."""
    gateway = sorted(((s, m) for (s, target), m in totals.items() if target == "gateway"), key=lambda sm: sm[0])
    idle = sum(m.cpu.get("gateway", 0.0) for (_, target), m in totals.items() if target == "direct")
    return "\n".join([
        "gateway CPU cross-check, schedstat vs utime+stime (s): " + ", ".join(
            f"{scenario} {m.cpu.get('gateway', 0.0):.2f} vs {m.cpu_ticks.get('gateway', 0.0):.2f}"
            for scenario, m in gateway),
        f"gateway CPU while idle (during the direct phases): {idle * 1000:.1f} ms in total",
    ])


def comparison_table(totals: Totals) -> str:
    """The main gateway (A) against --compare-src (B), measured in the same interleaved run."""
    rows = [("metric", "gateway (A)", "B", "B vs A")]

    def add(name: str, a: float, b: float, digits: int = 3) -> None:
        rows.append((name, fmt(a, digits), fmt(b, digits), f"{100 * (b - a) / a:+.1f}%" if a == a and a else "-"))

    a, b = "gateway", "B"
    for scenario, label in (("c1", "request, c=1"), ("c64", "request, c=64"), ("stream", "stream, c=1"),
                            ("stream16", f"stream, c={STREAM_CONCURRENCY}")):
        add(f"gateway CPU / {label} (ms)", totals[(scenario, a)].cpu_ms("gateway"),
            totals[(scenario, b)].cpu_ms("gateway"))
    add("latency p50, c=1 (ms)", 1000 * percentile(totals[("c1", a)].latencies, 50),
        1000 * percentile(totals[("c1", b)].latencies, 50))
    add("throughput, c=64 (req/s)", totals[("c64", a)].rps, totals[("c64", b)].rps, 0)
    add("stream first event p50 (ms)", 1000 * percentile(totals[("stream", a)].first_events, 50),
        1000 * percentile(totals[("stream", b)].first_events, 50))
    rows.append(("errors", str(_errors(totals, a)), str(_errors(totals, b)), ""))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for i, row in enumerate(rows):
        lines.append("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def describe_source(src: Path | None, installed: Path) -> str:
    """Which code a gateway ran: ``src``, or the package installed from ``installed``, and its git state."""
    tree = src or installed
    where = f"{tree}" if src else f"installed package ({tree})"
    try:
        head = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--", "gateway", "providers"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return where
    if not head:
        return where
    return f"{where} at {head[:70]}" + (" + uncommitted changes in gateway/ or providers/" if dirty else "")


def _errors(totals: Totals, target: str) -> int:
    return sum(m.errors for (_, t), m in totals.items() if t == target)
