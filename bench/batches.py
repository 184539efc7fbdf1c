"""The same batch run two ways: by the gateway line by line, and by the provider's own Batch API (``batch: {mode: native}``).

    .venv/bin/python bench/batches.py                 # 200 lines, 3 rounds each way (~15 s)
    .venv/bin/python bench/batches.py --lines 1000 --rounds 2

One gateway (uvicorn on 127.0.0.1) in front of tests/support's FakeBatchAPI,
a fake of OpenAI's chat, Files and Batch APIs on 127.0.0.1 that answers every
chat completion with 1000 prompt and 200 completion tokens. Two models with
the same deployment and price ($1 / $4 per million tokens): ``direct`` (the
gateway runs its batches) and ``native`` (the provider's Batch API, 50% off).
The fake finishes a native batch at its second read, so the wall time here is
the gateway's own work, not a provider's queue (hours, at a real provider).
Printed per way: wall time to ``completed``, calls the provider got, and the
ledger's dollars for the batch; then native against direct.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # for tests.support: the fake provider the tests use

import openai  # noqa: E402
import orjson  # noqa: E402

from gateway.app import create_app  # noqa: E402
from gateway.config import parse_config  # noqa: E402
from tests.support.fakes.batch_upstream import FakeBatchAPI  # noqa: E402
from tests.support.servers import ServedApp  # noqa: E402

KEY = "sk-bench-provider-0123456789"
CONFIG = """
server: {{data_dir: "{data}", ledger_flush_interval: 0.05, batch_concurrency: 8}}
providers:
  openai: {{type: openai, base_url: "{fake}/v1", api_key: {key}}}
models:
  direct:
    deployments: [{{provider: openai, model: gpt-4o-mini}}]
    price: {{input_per_mtok: 1.0, output_per_mtok: 4.0}}
  native:
    deployments: [{{provider: openai, model: gpt-4o-mini}}]
    price: {{input_per_mtok: 1.0, output_per_mtok: 4.0}}
    batch: {{mode: native, poll_interval: 0.05}}
"""


def run(client: openai.OpenAI, model: str, lines: int) -> tuple[str, float]:
    content = b"".join(orjson.dumps({"custom_id": f"{model}-{n}", "method": "POST", "url": "/v1/chat/completions",
                                     "body": {"model": model, "messages": [{"role": "user", "content": f"line {n}"}]}}) + b"\n"
                       for n in range(lines))  # fmt: skip
    started = time.perf_counter()
    source = client.files.create(file=("in.jsonl", content), purpose="batch")
    batch = client.batches.create(input_file_id=source.id, endpoint="/v1/chat/completions", completion_window="24h")
    while (batch := client.batches.retrieve(batch.id)).status not in ("completed", "failed", "cancelled", "expired"):
        time.sleep(0.02)
    assert batch.status == "completed" and batch.request_counts and batch.request_counts.completed == lines, batch
    return batch.id, time.perf_counter() - started


def dollars(data: Path, batch_id: str, lines: int) -> float:
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(data / "usage.sqlite3") as db:
            count, usd = db.execute("SELECT COUNT(*), SUM(cost_usd) FROM usage_records WHERE request_id LIKE ?",
                                    (f"{batch_id}-%",)).fetchone()  # fmt: skip
        if count >= lines or time.monotonic() > deadline:
            assert count == lines, f"{count} ledger records for {lines} lines"
            return float(usd)
        time.sleep(0.05)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    fake = FakeBatchAPI(api_key=KEY)
    figures: dict[str, list[tuple[float, int, float]]] = {"direct": [], "native": []}
    with tempfile.TemporaryDirectory() as tmp, ServedApp(fake) as upstream:
        config = parse_config(CONFIG.format(data=tmp, fake=upstream.url, key=KEY), environ={})
        with ServedApp(create_app(config), server=config.server) as gateway:
            client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="unused", max_retries=0)
            for _ in range(args.rounds):
                for model in ("direct", "native"):  # alternating, so drift hits both alike
                    calls = len(fake.calls)
                    batch_id, seconds = run(client, model, args.lines)
                    figures[model].append((seconds, len(fake.calls) - calls, dollars(Path(tmp), batch_id, args.lines)))
    print(f"{args.lines}-line batch, {args.rounds} rounds each way (medians)")
    print(f"{'way':8} {'wall s':>8} {'provider calls':>15} {'ledger $':>10}")
    medians = {}
    for model, rows in figures.items():
        medians[model] = tuple(statistics.median(row[i] for row in rows) for i in range(3))
        seconds, calls, usd = medians[model]
        print(f"{model:8} {seconds:8.2f} {calls:15.0f} {usd:10.4f}")
    (d_s, d_calls, d_usd), (n_s, n_calls, n_usd) = medians["direct"], medians["native"]
    print(f"native / direct: wall x{n_s / d_s:.2f}, provider calls x{n_calls / d_calls:.3f}, dollars x{n_usd / d_usd:.2f}")


if __name__ == "__main__":
    main()
