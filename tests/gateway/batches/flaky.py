"""A fake OpenAI upstream (tests/support/fakes/scripted.py's ScriptedUpstream) that fails some calls on a fixed schedule.

Chat completions quote the last user message. Call number n (from 1) is a
503 when n % 7 == 3, a 429 with ``Retry-After: 0`` when n % 11 == 5, else a
200 after ``delay`` seconds; a message that failed once is answered the next
time, so the router's second attempt always succeeds. A model named
``busy-<n>`` instead answers each message n 429s (``Retry-After: 0``) first. What each 200 answered is recorded, so a test
can tell how often one line was answered upstream.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from typing import Any

import orjson

from tests.support.fakes.scripted import Answer, ScriptedUpstream

JSON = [(b"content-type", b"application/json")]


class FlakyUpstream:
    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.answered: Counter[str] = Counter()  # the user text of each 200, counted
        self.failed = 0
        self._calls = itertools.count(1)
        self._failed_once: set[str] = set()
        self._busy: Counter[str] = Counter()  # busy-<n>: the 429s each message had
        self._lock = threading.Lock()  # the fake runs on its own server thread
        self.app = ScriptedUpstream(self._answer)

    def _answer(self, request: dict[str, Any]) -> Answer:
        body = orjson.loads(request["body"])
        said = body["messages"][-1]["content"]
        with self._lock:
            call = next(self._calls)
            if body["model"].startswith("busy-") and self._busy[said] < int(body["model"].removeprefix("busy-")):
                self._busy[said] += 1
                return Answer(429, [*JSON, (b"retry-after", b"0")], [_error("busy", "rate_limit_error")])
            fails = said not in self._failed_once and (call % 7 == 3 or call % 11 == 5)
            if fails:
                self._failed_once.add(said)
                self.failed += 1
            else:
                self._failed_once.discard(said)
                self.answered[said] += 1
        if fails and call % 7 == 3:
            return Answer(503, JSON, [_error("scripted 503", "server_error")])
        if fails:
            return Answer(429, [*JSON, (b"retry-after", b"0")], [_error("slow down", "rate_limit_error")])
        usage = {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}
        message = {"role": "assistant", "content": f"You said: {said}", "refusal": None}
        answer = {"id": f"chatcmpl-{call}", "object": "chat.completion", "created": 1700000000, "model": body["model"],
                  "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}], "usage": usage}
        return Answer(200, JSON, [orjson.dumps(answer)], delay=self.delay)


def _error(message: str, kind: str) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})


def chat_lines(count: int, model: str = "gpt-test", start: int = 0) -> bytes:
    """An input file of ``count`` chat requests, custom_id ``line-<i>``, each saying ``line <i>``."""
    return b"".join(
        orjson.dumps({"custom_id": f"line-{i}", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": model, "messages": [{"role": "user", "content": f"line {i}"}]}}) + b"\n"
        for i in range(start, start + count)
    )  # fmt: skip
