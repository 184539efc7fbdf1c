"""Fakes of hosted providers, each answering as its documentation says it does.

One ASGI app, configured per provider with what docs/providers.md cites:
where its API lives (path prefix, Azure's per-deployment URLs and
``api-version``), how it takes the key, which request fields it refuses and
with which error body. A request it accepts gets a chat completion that
echoes nothing but the model; every request is recorded for the test.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from .asgi import read_request, serve_lifespan
from .faulty import chunk, completion

Refusal = tuple[int, Any]  # a status and its JSON body


def openai_error(message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


@dataclass
class ProviderFake:
    name: str
    prefix: str  # where the API lives on the host, e.g. "/openai/v1" for Groq
    auth_header: str = "authorization"  # Azure: "api-key"
    auth_value: str = "Bearer {key}"
    # Request fields it refuses, and how: field -> refusal(value) or None to accept that value.
    refuses: dict[str, Callable[[Any], Refusal | None]] = field(default_factory=dict)
    # Mistral-style strict schema: any other field is a 422.
    allowed_fields: frozenset[str] | None = None
    azure_api_version: str | None = None
    bad_key: Refusal = (401, openai_error("Invalid API key", "invalid_api_key"))
    key: str = "test-key"
    requests: list[dict[str, Any]] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        headers, raw = await read_request(scope, receive)
        body = json.loads(raw) if raw else {}
        query = parse_qs(scope.get("query_string", b"").decode())
        self.requests.append({"path": scope["path"], "query": query, "headers": headers, "body": body})
        status, answer = self._answer(scope["path"], query, headers, body)
        if status == 200 and body.get("stream"):
            events = [chunk(str(body.get("model")), self.name), chunk(str(body.get("model")), None, "stop")]
            data = b"".join(b"data: " + json.dumps(event).encode() + b"\n\n" for event in events) + b"data: [DONE]\n\n"
            content_type = b"text/event-stream"
        else:
            data, content_type = json.dumps(answer).encode(), b"application/json"
        await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type)]})
        await send({"type": "http.response.body", "body": data})

    def _answer(self, path: str, query: dict[str, list[str]], headers: dict[str, str], body: dict[str, Any]) -> Refusal:
        if headers.get(self.auth_header) != self.auth_value.format(key=self.key) or body.get("x-test-bad-key"):
            return self.bad_key
        expected = f"{self.prefix}/chat/completions"
        if self.azure_api_version is not None:
            expected = f"{self.prefix}/openai/deployments/{body.get('model')}/chat/completions"
            if query.get("api-version") != [self.azure_api_version]:
                return 404, {"error": {"code": "404", "message": "Resource not found"}}
        if path == f"{self.prefix}/models":
            return 200, {"object": "list", "data": [{"id": f"{self.name}-model", "object": "model", "created": 0, "owned_by": self.name}]}
        if path == expected.replace("/chat/completions", "/embeddings"):
            data = [{"object": "embedding", "index": 0, "embedding": [0.5, 0.5]}]
            return 200, {"object": "list", "data": data, "model": body.get("model"), "usage": {"prompt_tokens": 1, "total_tokens": 1}}
        if path != expected:
            return 404, openai_error(f"Unknown request URL: POST {path}", "unknown_url")
        if self.allowed_fields is not None:
            extra = sorted(set(body) - self.allowed_fields)
            if extra:
                detail = [{"type": "extra_forbidden", "loc": ["body", name], "msg": "Extra inputs are not permitted"} for name in extra]
                return 422, {"detail": detail}
        for name, refuse in self.refuses.items():
            if name in body:
                refusal = refuse(body[name])
                if refusal is not None:
                    return refusal
        return 200, completion(str(body.get("model")), self.name)


def google_unknown_field(name: str) -> Any:
    """Google's 400 for a field outside Gemini's schema: its status object, in a list (as reported, docs/providers.md)."""
    message = f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.'
    return [{"error": {"code": 400, "message": message, "status": "INVALID_ARGUMENT",
                       "details": [{"@type": "type.googleapis.com/google.rpc.BadRequest",
                                    "fieldViolations": [{"description": message}]}]}}]  # fmt: skip


def always(status: int, answer: Any) -> Callable[[Any], Refusal]:
    return lambda value: (status, answer)


# Azure's answer to a prompt its content filter blocks (learn.microsoft.com, "content filtering").
AZURE_CONTENT_FILTER: Refusal = (
    400,
    {
        "error": {
            "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management policy.",
            "type": None,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
            "innererror": {
                "code": "ResponsibleAIPolicyViolation",
                "content_filter_result": {"violence": {"filtered": True, "severity": "high"}},
            },
        }
    },
)

MISTRAL_FIELDS = frozenset(
    "model messages temperature top_p max_tokens stream stop random_seed response_format tools tool_choice "
    "presence_penalty frequency_penalty n safe_prompt parallel_tool_calls prediction".split()
)


def fakes() -> dict[str, ProviderFake]:
    """A fake for each preset, as its documentation describes it (docs/providers.md has the sources)."""
    groq_refusal = always(400, openai_error("property is unsupported", None))
    return {
        "openai": ProviderFake("openai", "/v1"),
        "groq": ProviderFake(
            "groq",
            "/openai/v1",
            refuses={
                "logprobs": groq_refusal,
                "top_logprobs": groq_refusal,
                "logit_bias": groq_refusal,
                "n": lambda n: None if n == 1 else (400, openai_error("'n' : number must be at most 1")),
            },
        ),
        "together": ProviderFake("together", "/v1"),
        "mistral": ProviderFake("mistral", "/v1", allowed_fields=MISTRAL_FIELDS),
        "deepseek": ProviderFake("deepseek", "/v1"),
        "perplexity": ProviderFake(
            "perplexity", "", refuses={"tools": always(400, {"message": "Tools are not supported", "type": "invalid_parameter", "code": 400})}
        ),
        "xai": ProviderFake(
            "xai",
            "/v1",
            refuses={"logit_bias": always(400, {"code": "Client specified an invalid argument", "error": "logit_bias is not supported"})},
            # xAI answers a bad key with a 400, not a 401.
            bad_key=(400, {"code": "Client specified an invalid argument", "error": "Incorrect API key provided: xa***"}),
        ),
        "fireworks": ProviderFake("fireworks", "/inference/v1"),
        "gemini": ProviderFake(
            "gemini",
            "/v1beta/openai",
            refuses={name: always(400, google_unknown_field(name)) for name in ("frequency_penalty", "presence_penalty", "seed")},
        ),
        "openrouter": ProviderFake("openrouter", "/api/v1"),
        "anyscale": ProviderFake("anyscale", "/v1"),
        "azure": ProviderFake(
            "azure",
            "",
            auth_header="api-key",
            auth_value="{key}",
            azure_api_version="2024-10-21",
            refuses={"messages": lambda messages: AZURE_CONTENT_FILTER if "forbidden" in json.dumps(messages) else None},
        ),
    }
