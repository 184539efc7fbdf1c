"""``POST /v1/tokenize`` and ``POST /v1/detokenize``, in vLLM's request and response shapes.

A local model answers with its own tokenizer (the provider's ``tokenize``
and ``detokenize``, run on the engine's thread). A
hosted model answers with tiktoken in its family's encoding (o200k_base or
cl100k_base, as ``providers.tokens`` picks it): exact for OpenAI's models, an
estimate for others. A chat (``messages``) is tokenized only for local
models, whose chat template is known; a hosted model's chat framing is not
a token sequence anyone can see.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from providers.tokens import encoding_for

from .auth import ModelNotAllowed
from .deployment import Deployment
from .errors import InvalidRequest
from .model_list import json_response
from .router import Router


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


class ChatNotTokenizable(InvalidRequest):
    code = "unsupported_parameter"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"`messages` can be tokenized for local models only; `{model}` is hosted: send `prompt` instead.",
            param="messages",
        )


def tokenize_routes(router: Router) -> APIRouter:
    api = APIRouter(prefix="/v1", tags=["switchyard"])

    @api.post("/tokenize")
    async def tokenize(body: TokenizeRequest, request: Request) -> Response:
        """Token ids of a prompt or a chat (vLLM's `/tokenize`)."""
        if (body.prompt is None) == (body.messages is None):
            raise InvalidRequest("Give exactly one of `prompt` and `messages`.", param="prompt")
        deployment = _deployment(router, body.model, request)
        provider: Any = deployment.provider
        if hasattr(provider, "tokenize"):
            tokens, strs, limit = await provider.tokenize(
                body.prompt, body.messages, body.add_generation_prompt, body.add_special_tokens
            )
        else:
            if body.messages is not None:
                raise ChatNotTokenizable(body.model)
            encoding = encoding_for(deployment.model)
            tokens = encoding.encode(body.prompt or "", disallowed_special=())
            strs = [encoding.decode_single_token_bytes(token).decode("utf-8", "replace") for token in tokens]
            limit = router.context_window(body.model)
        return json_response({
            "count": len(tokens), "max_model_len": limit, "tokens": tokens,
            "token_strs": strs if body.return_token_strs else None,
        })  # fmt: skip

    @api.post("/detokenize")
    async def detokenize(body: DetokenizeRequest, request: Request) -> Response:
        """The text of token ids (vLLM's `/detokenize`)."""
        deployment = _deployment(router, body.model, request)
        provider: Any = deployment.provider
        if hasattr(provider, "detokenize"):
            text = await provider.detokenize(body.tokens)
        else:
            try:
                text = encoding_for(deployment.model).decode(body.tokens)
            except KeyError:
                raise InvalidRequest("`tokens` has an id the model's encoding does not have.", param="tokens") from None
        return json_response({"prompt": text})

    return api


def _deployment(router: Router, model: str, request: Request) -> Deployment:
    key = request.scope.get("state", {}).get("api_key")
    if key is not None and not key.may_use(model):
        raise ModelNotAllowed(key.name, model)
    deployments = router.deployments_for(model)  # raises ModelNotFound
    local = [deployment for deployment in deployments if hasattr(deployment.provider, "tokenize")]
    return (local or deployments)[0]
