"""``POST /v1/tokenize`` and ``POST /v1/detokenize``, in vLLM's request and response shapes.

A local model answers with its own tokenizer (the provider's ``tokenize``
and ``detokenize``, run on the engine's thread). A
hosted model answers with tiktoken in its family's encoding (o200k_base or
cl100k_base, as ``providers.tokens`` picks it): exact for OpenAI's models, an
estimate for others. A chat (``messages``) is tokenized only for local
models, whose chat template is known; a hosted model's chat framing is not
a token sequence anyone can see.

Bodies are read and checked as the relay's are (``read_body``,
``parse_model``: ``server.max_body_bytes``, ``max_json_depth``,
``max_model_chars``). tiktoken's work on a long prompt or many ids runs on
the counting threads (``count_off_loop``), and so does writing a long answer:
a prompt of max_body_bytes is millions of ids.
"""

from __future__ import annotations

from typing import Any

import orjson
import tiktoken
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from gateway.errors import ChatNotTokenizable, InvalidRequest, UnknownTokenId
from gateway.http.relay import read_body
from gateway.http.responses import json_response
from gateway.http.validation import BodyLimits, Checked, parse_model
from gateway.keys.keyring import api_key_of
from gateway.routing.deployment import Deployment
from gateway.routing.table import ModelTable
from providers.base import Tokenizes
from providers.tokens import count_off_loop, encoding_for

# Ids made into Python ints or JSON per call: each such call holds the GIL, 2^18 ids for about 2 ms.
_IDS_PER_CALL = 1 << 18


class TokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    prompt: str | None = Field(None, description="A text; or give `messages`.")
    messages: list[dict[str, Any]] | None = Field(None, description="A chat, rendered by the model's chat template.")
    add_generation_prompt: bool = True
    add_special_tokens: bool | None = Field(None, description="Default: true for a prompt, false for messages.")
    return_token_strs: bool = False


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str
    tokens: list[int]






def tokenize_routes(table: ModelTable, limits: BodyLimits) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["switchyard"])

    async def read(request: Request, model: type[Checked]) -> Checked:
        return parse_model(await read_body(request.scope, request.receive, limits.max_bytes), model, limits)

    @api.post("/tokenize", openapi_extra=_json_body(TokenizeRequest))
    async def tokenize(request: Request) -> Response:
        """Token ids of a prompt or a chat (vLLM's `/tokenize`)."""
        body = await read(request, TokenizeRequest)
        if (body.prompt is None) == (body.messages is None):
            raise InvalidRequest("Give exactly one of `prompt` and `messages`.", param="prompt")
        deployment = _deployment(table, body.model, request)
        provider = deployment.provider
        if isinstance(provider, Tokenizes):
            tokens, strs, limit = await provider.tokenize(
                body.prompt, body.messages, body.add_generation_prompt, body.add_special_tokens
            )
            return json_response({
                "count": len(tokens), "max_model_len": limit, "tokens": tokens,
                "token_strs": strs if body.return_token_strs else None,
            })  # fmt: skip
        if body.messages is not None:
            raise ChatNotTokenizable(body.model)
        encoding = encoding_for(deployment.model)
        prompt, with_strs, limit = body.prompt or "", body.return_token_strs, table.context_window(body.model)
        answer = await count_off_loop(lambda: _tokenized(encoding, prompt, with_strs, limit), len(prompt))
        return Response(answer, media_type="application/json")

    @api.post("/detokenize", openapi_extra=_json_body(DetokenizeRequest))
    async def detokenize(request: Request) -> Response:
        """The text of token ids (vLLM's `/detokenize`)."""
        body = await read(request, DetokenizeRequest)
        deployment = _deployment(table, body.model, request)
        provider = deployment.provider
        if isinstance(provider, Tokenizes):
            text = await provider.detokenize(body.tokens)
        else:
            encoding, tokens = encoding_for(deployment.model), body.tokens
            text = await count_off_loop(lambda: _detokenized(encoding, tokens), len(tokens))
        return json_response({"prompt": text})

    return api


def _tokenized(encoding: tiktoken.Encoding, prompt: str, with_strs: bool, limit: int | None) -> bytes:
    """The answer to /v1/tokenize for a hosted model, as JSON.

    The ids stay in tiktoken's buffer: millions of Python ints would hold the
    GIL while they are made, and the event loop with it.
    """
    ids = encoding.encode_to_numpy(prompt, disallowed_special=())
    parts = [ids[start : start + _IDS_PER_CALL] for start in range(0, len(ids), _IDS_PER_CALL)]
    strs = None
    if with_strs:
        decode = encoding.decode_single_token_bytes
        strs = [decode(token).decode("utf-8", "replace") for part in parts for token in part.tolist()]
    head = orjson.dumps({"count": len(ids), "max_model_len": limit, "token_strs": strs})
    written = b",".join(orjson.dumps(part, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1] for part in parts)
    return head[:-1] + b',"tokens":[' + written + b"]}"


def _detokenized(encoding: tiktoken.Encoding, tokens: list[int]) -> str:
    # tiktoken takes u32 ids; out of that range it raises OverflowError, inside it KeyError for a gap.
    if tokens and (min(tokens) < 0 or max(tokens) > encoding.max_token_value):
        raise UnknownTokenId()
    try:
        return encoding.decode(tokens)
    except KeyError:
        raise UnknownTokenId() from None


def _json_body(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its own (``read_body``), as FastAPI would describe it."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _deployment(table: ModelTable, model: str, request: Request) -> Deployment:
    key = api_key_of(request.scope)
    if key is not None:
        key.require(model)
    deployments = table.deployments_for(model)  # raises ModelNotFound
    local = [deployment for deployment in deployments if isinstance(deployment.provider, Tokenizes)]
    return (local or deployments)[0]
