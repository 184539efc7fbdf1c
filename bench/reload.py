"""What a configuration reload costs the requests being served: the same load, quiet and with reloads every few ms.

    .venv/bin/python bench/reload.py              # ~40 s: 4 rounds x (quiet, reloading) x 2 scenarios
    .venv/bin/python bench/reload.py --quick      # ~10 s

One ``switchyard serve`` in front of the fast fake upstream (``fast_upstream.py``).
In a "reloading" phase the config file is rewritten (a reloadable field
toggled, so each reload swaps in a new generation) and the gateway sent
SIGHUP every ``--interval`` seconds, while the load generator runs; a
"quiet" phase is the same load with no reload. The phases alternate, so
drift hits both alike. Printed: requests, errors (any non-2xx answer or cut
connection: a lost request), p50/p99 latency, and reloading against quiet.
All traffic stays on 127.0.0.1; every phase is bounded in time and count.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import signal
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from loadgen import Measurement, percentile, run_phase  # noqa: E402
from servers import Servers  # noqa: E402
from workload import Scenario  # noqa: E402

SCENARIOS = [Scenario("c16", False, 16), Scenario("stream16", True, 16)]
_WRITES = itertools.count(1)


async def reload_every(interval: float, config: Path, text: str, process_pid: int, stop: asyncio.Event) -> int:
    """Write ``text`` changed to ``config`` and SIGHUP the gateway every ``interval`` s until ``stop``; how many were sent."""
    sent = 0
    while not stop.is_set():
        sent += 1
        # max_model_chars reloads, a new value each time: a reload reading the file finds a change.
        config.write_text(text.replace("server: {", f"server: {{max_model_chars: {256 + next(_WRITES)}, ", 1))
        os.kill(process_pid, signal.SIGHUP)
        try:
            await asyncio.wait_for(stop.wait(), interval)
        except TimeoutError:
            pass
    return sent


async def bench(args: argparse.Namespace, servers: Servers, config: Path) -> None:
    process, port = servers.gateways["gateway"]
    pids = {"gateway": process.pid}
    for scenario in SCENARIOS:  # warm-up
        await run_phase(scenario, port, 1.0, pids)
    totals: dict[tuple[str, str], Measurement] = defaultdict(Measurement)
    reloads = 0
    original = config.read_text()
    for round_no in range(args.rounds):
        arms = ["quiet", "reloading"] if round_no % 2 == 0 else ["reloading", "quiet"]
        for scenario in SCENARIOS:
            for arm in arms:
                stop = asyncio.Event()
                reloader = (
                    asyncio.create_task(reload_every(args.interval, config, original, process.pid, stop))
                    if arm == "reloading"
                    else None
                )
                phase = await run_phase(scenario, port, args.duration, pids)
                stop.set()
                if reloader is not None:
                    reloads += await reloader
                    await asyncio.sleep(1.0)  # the last reload ends before the next phase
                totals[(scenario.name, arm)].add(phase)
                print(
                    f"round {round_no + 1} {scenario.name:8} {arm:9}: {phase.requests:6} ok {phase.errors:3} err "
                    f"p50 {1000 * percentile(phase.latencies, 50):7.3f} ms",
                    file=sys.stderr,
                )
    await asyncio.sleep(1.0)  # the last reloads' log lines
    log = (servers.workdir / "gateway.log").read_text(errors="replace")
    done = len(re.findall(r"configuration reloaded \(generation", log))
    refused = len(re.findall(r"SIGHUP: the configuration was not reloaded", log))
    print(
        f"\nSwitchyard reload bench -- {time.strftime('%Y-%m-%d %H:%M')}, {args.rounds} rounds x {args.duration:g} s "
        f"per phase, a SIGHUP every {1000 * args.interval:g} ms in the reloading phases"
    )
    print(
        f"reloads: {reloads} signals sent, {done} generations swapped in, {refused} refused "
        "(signals that arrive during a reload coalesce into fewer swaps)\n"
    )
    print(f"{'scenario':9} {'arm':10} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p99 ms':>8}")
    for scenario in SCENARIOS:
        for arm in ("quiet", "reloading"):
            m = totals[(scenario.name, arm)]
            print(
                f"{scenario.name:9} {arm:10} {m.requests:9} {m.errors:7} "
                f"{1000 * percentile(m.latencies, 50):8.3f} {1000 * percentile(m.latencies, 99):8.3f}"
            )
        quiet, busy = (
            totals[(scenario.name, "quiet")],
            totals[(scenario.name, "reloading")],
        )
        print(
            f"{scenario.name:9} {'ratio':10} {'':9} {'':7} "
            f"{percentile(busy.latencies, 50) / percentile(quiet.latencies, 50):8.2f} "
            f"{percentile(busy.latencies, 99) / percentile(quiet.latencies, 99):8.2f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per phase")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between two reloads")
    parser.add_argument("--quick", action="store_true", help="1 round of 1 s phases")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.duration = 1, 1.0
    with tempfile.TemporaryDirectory(prefix="switchyard-reload-bench-") as scratch:
        servers = Servers(Path(scratch), chunk_delay_ms=1.0, lifetime=600)
        try:
            servers.start_upstream()
            servers.start_gateway("gateway", "info")
            asyncio.run(bench(args, servers, Path(scratch) / "gateway-config.yaml"))
        finally:
            servers.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
