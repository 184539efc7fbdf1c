"""What the gateway adds: the same load sent straight to a fast fake upstream and through Switchyard.

    .venv/bin/python bench/overhead.py              # ~60 s: smoke check, warm-up, 16 interleaved phases
    .venv/bin/python bench/overhead.py --quick      # ~10 s smoke run
    .venv/bin/python bench/overhead.py --profile    # then py-spy on the gateway under load

Three processes share the machine: the fake upstream (``fast_upstream.py``),
the gateway (``switchyard serve``) and this load generator (``loadgen.py``).
Each scenario (``workload.py``) runs against both targets, alternating the
order from round to round (direct, gateway, gateway, direct, ...) so drift
hits both alike:

* ``c1``       non-streamed chat completions, one at a time: latency p50/p99.
* ``c64``      non-streamed, 64 connections busy at once: requests/s.
* ``stream``   ``"stream": true``, one at a time: 20 content events + ``[DONE]``,
               time to the first ``data:`` event and to the end of the stream.
* ``stream16`` the same with 16 streams at once: one wake-up of the event loop
               then relays events of several streams, as on a busy gateway.

The gateway's CPU time per request (``procstat.py``) is the figure least
disturbed by the load generator sharing the two cores: waiting for a core
makes a request slower, not costlier. ``--profile`` then records the gateway
with py-spy (``profiling.py``) during extra phases.

All traffic stays on 127.0.0.1; every phase is bounded in time and count.
Exit status is 0 unless the bench itself could not run (a target that is
missed is reported, not failed).

Experiments: ``--gateway-src DIR`` runs the gateway from another source tree
(a scratch copy), ``--compare-src DIR`` adds a second gateway B from DIR to
the same interleaved run and prints B against A. ``--server YAML`` and
``--compare-server YAML`` give either gateway more ``server:`` fields, so one
source can be measured against itself with a feature on and off::

    bench/overhead.py --server 'usage_ledger: false' --compare-server 'usage_ledger: true'

``{otlp}`` in either is the URL of a stand-in OTLP collector (``otlp_sink.py``,
its own process), started when some gateway names it: tracing off against on::

    bench/overhead.py --compare-server 'otel: {endpoint: "{otlp}"}'

``--provider YAML`` / ``--compare-provider YAML`` do the same for the fake's
provider entry. A provider key turns on the masking of keys in every answer
(gateway/http/middleware/redaction.py); sending the same key as a plain header in A leaves
the masking as the only difference (docs/performance.md)::

    bench/overhead.py --provider "headers: {authorization: 'Bearer sk-bench-upstream-0123456789abcdef'}" \
        --compare-provider 'api_key: sk-bench-upstream-0123456789abcdef'

The load generator sends ``Authorization: Bearer sk-bench``, so B can have
a key with limits: ``api_keys: [{key: sk-bench, name: bench, rpm: 100000000}]``.
See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

# The bench is a folder of scripts, not a package: its modules import each other by plain name.
# Run as a script, Python already puts this folder first on sys.path; this covers other ways in.
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from loadgen import Measurement, percentile, run_phase  # noqa: E402
from procstat import cpu_model  # noqa: E402
from profiling import finish_recording, start_recording, summarise_profile  # noqa: E402
from report import Totals, comparison_table, cpu_checks, describe_source, results_table  # noqa: E402
from servers import Servers, check_with_clients, check_with_loadgen  # noqa: E402
from workload import CHUNKS, Scenario, scenarios  # noqa: E402


async def bench(args: argparse.Namespace, servers: Servers) -> int:
    await check_with_loadgen(servers)
    assert servers.upstream is not None
    ports = servers.ports
    targets = list(ports)  # direct, gateway[, B]
    # For each target, the processes whose CPU is read; "gateway" is the one the target goes through
    # (for direct phases, the idle main gateway: a sanity check that it stays at ~0).
    gateway_pids = {name: process.pid for name, (process, _) in servers.gateways.items()}
    pids_for = {t: {"gateway": gateway_pids.get(t, gateway_pids["gateway"]), "upstream": servers.upstream.pid}
                for t in targets}
    measured = scenarios(args.concurrency)

    log = sys.stderr
    print(f"warm-up: {args.warmup:g} s per scenario and target", file=log)
    for scenario in measured:
        for target in targets:
            await run_phase(scenario, ports[target], args.warmup, pids_for[target])

    totals: Totals = defaultdict(Measurement)
    for round_no in range(0 if args.profile_only else args.rounds):
        # direct, gateway[, B] then the reverse: drift over the run hits every target alike
        order = targets if round_no % 2 == 0 else targets[::-1]
        for scenario in measured:
            for target in order:
                phase = await run_phase(scenario, ports[target], args.duration, pids_for[target])
                totals[(scenario.name, target)].add(phase)
                print(f"round {round_no + 1} {scenario.name:6} {target:9}: {phase.requests:6} ok "
                      f"{phase.errors:3} err  {phase.rps:8.0f}/s  "
                      f"p50 {1000 * percentile(phase.latencies, 50):7.3f} ms  "
                      f"gateway cpu {phase.cpu_ms('gateway'):6.3f} ms/req", file=log)

    if args.profile_only:
        return await profile(args, pids_for["gateway"], ports["gateway"])
    table, misses = results_table(totals)
    print()
    print(f"Switchyard overhead bench -- {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores "
          f"({cpu_model()}), Python {platform.python_version()}, {args.rounds} rounds x {args.duration:g} s "
          f"per phase, fake upstream {CHUNKS}-chunk streams with {args.chunk_delay_ms:g} ms between events")
    print(f"gateway: {describe_source(args.gateway_src, HERE.parent)}{_server_note(args.server, args.provider)}")
    if args.compare:
        print(f"B:       {describe_source(args.compare_src or args.gateway_src, HERE.parent)}"
              f"{_server_note(args.compare_server, args.compare_provider)}")
    print()
    print(table)
    print()
    print(cpu_checks(totals))
    print("targets missed: " + (", ".join(misses) if misses else "none"))
    if args.compare:
        print()
        print(comparison_table(totals))
    if args.profile:
        reference = {(s.name, s.concurrency): totals[(s.name, "gateway")].cpu_ms("gateway") for s in measured}
        await profile(args, pids_for["gateway"], ports["gateway"], reference)
    return 0


def _server_note(server_extra: str, provider_extra: str) -> str:
    notes = [f"server {{{server_extra}}}" if server_extra else "",
             f"provider {{{provider_extra}}}" if provider_extra else ""]  # fmt: skip
    return "".join(f" with {note}" for note in notes if note)


async def profile(args: argparse.Namespace, pids: dict[str, int], port: int,
                  reference: dict[tuple[str, int], float] | None = None) -> int:
    """py-spy on the gateway during extra phases through it; prints where its CPU time goes.

    Shares of samples are turned into µs with the gateway's CPU per request from the measured
    (unprofiled) phases of the same scenario when there are some: py-spy's pauses cost the
    gateway CPU of their own. Otherwise with the profiled phase's own figure.
    """
    out_dir = Path(args.profile_dir or tempfile.mkdtemp(prefix="switchyard-profile-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    profiled = [
        (Scenario("c64", False, args.concurrency), "request"),
        (Scenario("c1", False, 1), "request"),
        (Scenario("stream", True, args.profile_stream_concurrency), "stream"),
    ]
    for scenario, unit in profiled:
        path = out_dir / f"gateway-{scenario.name}.txt"
        # A stream at concurrency 1 keeps the gateway busy a tenth of the time: sample it for longer.
        duration = args.profile_duration * (2 if scenario.stream else 1)
        spy = await start_recording(pids["gateway"], path, duration, rate=args.profile_rate, native=args.native,
                                    blocking=not args.profile_nonblocking)
        if spy is None:
            continue
        phase = await run_phase(scenario, port, duration, pids)
        await finish_recording(spy, duration)
        if not path.exists():
            continue
        cpu_ms = 1000 * phase.cpu["gateway"] / max(1, phase.requests)
        source = "in the profiled phase"
        unprofiled = (reference or {}).get((scenario.name, scenario.concurrency))
        if unprofiled is not None and unprofiled == unprofiled:
            cpu_ms, source = unprofiled, f"measured without the profiler ({cpu_ms:.3f} with it)"
        print()
        print(f"== py-spy profile of the gateway: {scenario.name}, concurrency {scenario.concurrency}, "
              f"{duration:g} s, {phase.requests} {unit}s, {phase.rps:.0f}/s (raw stacks: {path})")
        print(summarise_profile(path, cpu_ms, unit, args.top, source))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Gateway overhead: direct vs via Switchyard, interleaved.")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measured phase (default 3)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per scenario (default 2)")
    parser.add_argument("--warmup", type=float, default=0.4, help="seconds of warm-up per scenario and target")
    parser.add_argument("--concurrency", type=int, default=64, help="connections in the throughput scenario")
    parser.add_argument("--chunk-delay-ms", type=float, default=1.0,
                        help="fake upstream's pause between stream events (0: the whole stream in one write)")
    parser.add_argument("--quick", action="store_true", help="a ~10 s smoke run (1 round, 0.6 s phases)")
    parser.add_argument("--no-smoke", action="store_true", help="skip the httpx/openai SDK framing check")
    parser.add_argument("--profile", action="store_true", help="then run py-spy on the gateway under load")
    parser.add_argument("--profile-only", action="store_true", help="warm up, then profile; no measured phases")
    parser.add_argument("--profile-duration", type=float, default=6.0, help="seconds per profiled phase")
    parser.add_argument("--profile-rate", type=int, default=200, help="py-spy samples per second (default 200)")
    parser.add_argument("--profile-stream-concurrency", type=int, default=1,
                        help="concurrent streams while profiling (default 1, as measured)")
    parser.add_argument("--profile-dir", help="where to keep py-spy's raw stacks (default: a new temp dir)")
    parser.add_argument("--profile-nonblocking", action="store_true",
                        help="py-spy --nonblocking: disturbs the gateway less, but many stacks come out cut "
                             "at an await, so totals (own + callees) are undercounted")
    parser.add_argument("--native", action="store_true", help="py-spy --native: C frames too (orjson, ...)")
    parser.add_argument("--top", type=int, default=20, help="functions listed per profile table")
    parser.add_argument("--log-level", default="warning", help="the gateway's --log-level")
    parser.add_argument("--gateway-src", type=Path,
                        help="run the gateway from this source tree (a scratch copy for an experiment) "
                             "instead of the installed package")
    parser.add_argument("--compare-src", type=Path,
                        help="also run a second gateway (B) from this source tree, interleaved with the first, "
                             "and print B against A")
    parser.add_argument("--server", default="", metavar="YAML",
                        help="more server: fields for the gateway, e.g. 'usage_ledger: false'")
    parser.add_argument("--compare-server", default="", metavar="YAML",
                        help="run gateway B with these server: fields (from --compare-src, or the same source)")
    parser.add_argument("--provider", default="", metavar="YAML",
                        help="more fields of the fake's provider entry for the gateway, e.g. 'api_key: sk-...'")
    parser.add_argument("--compare-provider", default="", metavar="YAML",
                        help="run gateway B with these provider fields (a key: key masking on, against off)")
    args = parser.parse_args(argv)
    args.profile = args.profile or args.profile_only
    if args.quick:
        args.duration, args.rounds, args.warmup = 0.5, 1, 0.15
        args.profile_duration = min(args.profile_duration, 2.0)
    if not (0 < args.duration <= 600 and 1 <= args.rounds <= 20 and 0 <= args.warmup <= 60):
        parser.error("--duration must be in (0, 600], --rounds in [1, 20], --warmup in [0, 60]")
    for src in (args.gateway_src, args.compare_src):
        if src is not None and not (src / "gateway" / "__main__.py").is_file():
            parser.error(f"{src} has no gateway/__main__.py: not a source tree of Switchyard")
    if not 1 <= args.concurrency <= 1024:
        parser.error("--concurrency must be in [1, 1024]")

    args.compare = bool(args.compare_src or args.compare_server or args.compare_provider)
    planned = (12 if args.compare else 8) * (args.warmup + args.rounds * args.duration) + (
        4 * args.profile_duration + 12 if args.profile else 0)
    lifetime = 3 * planned + 300  # the fake upstream exits by itself after this, even if orphaned
    print(f"planned: ~{planned + 8:.0f} s", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="switchyard-bench-") as tmp:
        servers = Servers(Path(tmp), args.chunk_delay_ms, lifetime)
        try:
            servers.start_upstream()
            if "{otlp}" in args.server + args.compare_server:
                sink = servers.start_otlp_sink()
                args.server, args.compare_server = (extra.replace("{otlp}", sink) for extra in (args.server, args.compare_server))
            servers.start_gateway("gateway", args.log_level, args.gateway_src, args.server, args.provider)
            if args.compare:
                servers.start_gateway("B", args.log_level, args.compare_src or args.gateway_src, args.compare_server,
                                      args.compare_provider)
            if not args.no_smoke:
                check_with_clients(servers)
                print("smoke: httpx and the openai SDK read both targets' JSON and event streams", file=sys.stderr)
            runner = asyncio.run
            try:
                import uvloop

                runner = uvloop.run
            except ImportError:
                pass
            return runner(bench(args, servers))
        except (RuntimeError, AssertionError, OSError) as exc:
            print(f"bench failed: {exc!r}", file=sys.stderr)
            return 1
        finally:
            servers.stop()


if __name__ == "__main__":
    sys.exit(main())
