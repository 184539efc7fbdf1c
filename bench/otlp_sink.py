"""An OTLP/HTTP collector stand-in for the benches: takes every POST /v1/traces, answers 200, keeps nothing.

    python bench/otlp_sink.py --port 0 --lifetime 600     # prints "listening on PORT"

Its own process, so what it costs is not the gateway's CPU. At exit (SIGTERM,
or after --lifetime seconds) it prints how many exports and bytes it took.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EMPTY_EXPORT_RESPONSE = b""  # ExportTraceServiceResponse with no partial_success: zero bytes of protobuf
received = {"exports": 0, "bytes": 0}


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a collector

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        received["exports"] += 1
        received["bytes"] += len(body)
        self.send_response(200 if self.path == "/v1/traces" else 404)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", str(len(EMPTY_EXPORT_RESPONSE)))
        self.end_headers()
        self.wfile.write(EMPTY_EXPORT_RESPONSE)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--lifetime", type=float, default=600.0, help="seconds before it exits by itself")
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Sink)
    print(f"listening on {server.server_address[1]}", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    stop.wait(args.lifetime)
    server.shutdown()
    print(f"otlp sink: {received['exports']} exports, {received['bytes']} bytes", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
