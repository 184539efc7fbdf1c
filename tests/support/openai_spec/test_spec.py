"""The spec validator both accepts real OpenAI bodies and rejects broken ones."""

from __future__ import annotations

import copy

import pytest

from .spec import properties_of, validate

# The "Default" x-oaiMeta example response of POST /chat/completions in the spec.
CHAT_COMPLETION = {
    "id": "chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT",
    "object": "chat.completion",
    "created": 1741569952,
    "model": "gpt-5.4",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello! How can I assist you today?",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 19,
        "completion_tokens": 10,
        "total_tokens": 29,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
}

# First chunk of the spec's "Streaming" example.
CHAT_CHUNK = {
    "id": "chatcmpl-123",
    "object": "chat.completion.chunk",
    "created": 1694268190,
    "model": "gpt-4o-mini",
    "system_fingerprint": "fp_44709d6fcb",
    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}],
}

ERROR = {"error": {"message": "m", "type": "invalid_request_error", "param": None, "code": "model_not_found"}}


def test_chat_completion_passes() -> None:
    validate("CreateChatCompletionResponse", CHAT_COMPLETION)


def test_chat_completion_without_choices_fails() -> None:
    body = {k: v for k, v in CHAT_COMPLETION.items() if k != "choices"}
    with pytest.raises(AssertionError, match="'choices' is a required property"):
        validate("CreateChatCompletionResponse", body)


def test_failure_message_names_the_json_path() -> None:
    body = copy.deepcopy(CHAT_COMPLETION)
    body["choices"][0]["finish_reason"] = "done"
    with pytest.raises(AssertionError, match=r"\$\.choices\[0\]\.finish_reason"):
        validate("CreateChatCompletionResponse", body)


@pytest.mark.parametrize("field", ["service_tier", "system_fingerprint", "usage"])
def test_chat_completion_optional_fields(field: str) -> None:
    validate("CreateChatCompletionResponse", {k: v for k, v in CHAT_COMPLETION.items() if k != field})


@pytest.mark.parametrize(("path", "field"), [((), "logprobs"), (("message",), "refusal")])
def test_chat_completion_requires_present_but_nullable(path: tuple[str, ...], field: str) -> None:
    # Spec quirk: these must be present (null is fine); OpenAI-compatible servers often omit them.
    body = copy.deepcopy(CHAT_COMPLETION)
    target = body["choices"][0]
    for key in path:
        target = target[key]
    del target[field]
    with pytest.raises(AssertionError, match=f"'{field}' is a required property"):
        validate("CreateChatCompletionResponse", body)


def test_stream_chunk_passes() -> None:
    validate("CreateChatCompletionStreamResponse", CHAT_CHUNK)


def test_stream_chunk_with_null_usage_passes() -> None:
    # usage is `$ref: CompletionUsage` + `nullable: true`, so this exercises the normalisation.
    validate("CreateChatCompletionStreamResponse", {**CHAT_CHUNK, "usage": None})


def test_final_usage_chunk_passes() -> None:
    # stream_options.include_usage: the last chunk has no choices and a usage object.
    usage = {"prompt_tokens": 19, "completion_tokens": 10, "total_tokens": 29}
    validate("CreateChatCompletionStreamResponse", {**CHAT_CHUNK, "choices": [], "usage": usage})


def test_stream_chunk_bad_finish_reason_fails() -> None:
    chunk = copy.deepcopy(CHAT_CHUNK)
    chunk["choices"][0]["finish_reason"] = "done"
    with pytest.raises(AssertionError, match="finish_reason"):
        validate("CreateChatCompletionStreamResponse", chunk)


def test_legacy_completion_stream_chunk_is_rejected_by_spec() -> None:
    # Known spec mismatch (see spec.py): legacy completion chunks reuse
    # CreateCompletionResponse, whose finish_reason is not nullable.
    chunk = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "gpt-3.5-turbo-instruct",
        "choices": [{"text": "Hi", "index": 0, "logprobs": None, "finish_reason": None}],
    }
    with pytest.raises(AssertionError, match="finish_reason"):
        validate("CreateCompletionResponse", chunk)
    chunk["choices"][0]["finish_reason"] = "stop"
    validate("CreateCompletionResponse", chunk)


def test_error_passes() -> None:
    validate("ErrorResponse", ERROR)


@pytest.mark.parametrize("field", ["message", "param", "code"])
def test_error_missing_field_fails(field: str) -> None:
    body = {"error": {k: v for k, v in ERROR["error"].items() if k != field}}
    with pytest.raises(AssertionError, match=f"'{field}' is a required property"):
        validate("ErrorResponse", body)


def test_list_models_passes() -> None:
    model = {"id": "gpt-4o-mini", "object": "model", "created": 1686935002, "owned_by": "openai"}
    validate("Model", model)
    validate("ListModelsResponse", {"object": "list", "data": [model, {**model, "shutdown_date": "2026-10-23"}]})


def test_embedding_passes() -> None:
    body = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.0023064255, -0.009327292]}],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 8, "total_tokens": 8},
    }
    validate("CreateEmbeddingResponse", body)


def test_unknown_schema_name_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="NoSuchSchema"):
        validate("NoSuchSchema", {})


def test_properties_of_follows_all_of() -> None:
    names = properties_of("CreateChatCompletionRequest")
    assert {"model", "messages", "stream", "stream_options", "tools"} <= names
    # merged from CreateModelResponseProperties -> ModelResponseProperties via allOf/$ref
    assert {"temperature", "top_p", "user", "metadata"} <= names
