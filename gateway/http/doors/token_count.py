"""``POST /v1/messages/count_tokens``: the prompt's tokens, counted by the gateway itself (no upstream call).

The request is translated as ``/v1/messages`` would send it, then counted:
by a local deployment's own tokenizer when the model has one (its chat
template applied, as its engine would see the prompt), else with tiktoken
as ``providers.tokens`` estimates any chat (OpenAI's accounting, the
deployment's encoding, cl100k_base for a model tiktoken does not know).
Tool definitions and the assistant's tool calls are counted as their JSON
text with tiktoken in both cases. Either way an estimate of what the
upstream will count: a Claude model's tokenizer is not public.
"""

from __future__ import annotations

import orjson

from gateway.http.doors.anthropic_messages import Translated
from gateway.routing.table import ModelTable
from providers.base import Tokenizes
from providers.counting_pool import count_off_loop, counting_work
from providers.tokens import count_messages, count_text


async def count_input_tokens(translated: Translated, table: ModelTable) -> bytes:
    """The answer to count_tokens: ``{"input_tokens": N}``."""
    payload = translated.payload
    deployments = table.deployments_for(payload["model"])  # ModelNotFound for a name nobody serves
    messages = payload["messages"]
    structured = [payload.get("tools"), *(message.get("tool_calls") for message in messages)]
    extra = orjson.dumps([part for part in structured if part]).decode() if any(structured) else ""
    local = next((d.provider for d in deployments if isinstance(d.provider, Tokenizes)), None)
    model = deployments[0].model

    def estimate() -> int:
        counted = 0 if local is not None else count_messages(messages, model)
        return counted + (count_text(extra, model) if extra else 0)

    tokens = await count_off_loop(estimate, counting_work(messages) + len(extra))
    if local is not None:
        ids, _, _ = await local.tokenize(None, messages, True, None)
        tokens += len(ids)
    return orjson.dumps({"input_tokens": tokens})
