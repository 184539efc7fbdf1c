"""Prompt logprobs through the gateway: echo with logprobs, max_tokens 0, and vLLM's prompt_logprobs extra."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerBase

from tests.support.servers import ServedApp

pytestmark = pytest.mark.usefixtures("local_client")  # it waits for the model to load

PROMPT = "Once upon a time, in a quiet village"
OTHER = "The quick brown fox"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def hf_tiny(tiny_model_dir: Path) -> PreTrainedModel:
    from local_engine.loader import transformers_building

    # The gateway's engine may be loading on its thread: transformers' loading is not thread-safe (see loader).
    with transformers_building():
        return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()


def forward_logprobs(model: PreTrainedModel, token_ids: list[int]) -> list[float]:
    """Token t's logprob, t >= 1, from a plain forward pass: log_softmax of the logits at t - 1."""
    with torch.inference_mode():
        logprobs = torch.log_softmax(model(torch.tensor([token_ids])).logits[0].float(), dim=-1)
    return [logprobs[t - 1, token_ids[t]].item() for t in range(1, len(token_ids))]


def completion(url: str, **body: Any) -> dict[str, Any]:
    response = httpx.post(f"{url}/v1/completions", json={"model": "tiny", "temperature": 0, **body}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def streamed_choices(url: str, path: str = "/v1/completions", **body: Any) -> dict[int, dict[str, Any]]:
    """A legacy completion stream put back together per choice: its text and its logprobs' lists joined."""
    payload = {"model": "tiny", "temperature": 0, "stream": True, **body}
    joined: dict[int, dict[str, Any]] = {}
    with httpx.stream("POST", f"{url}{path}", json=payload, timeout=60) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            for choice in json.loads(line[6:])["choices"]:
                into = joined.setdefault(choice["index"], {"text": "", "logprobs": None, "finish_reason": None})
                into["text"] += choice["text"]
                into["finish_reason"] = choice["finish_reason"] or into["finish_reason"]
                if choice["logprobs"] is not None:
                    so_far = into["logprobs"] or {key: [] for key in choice["logprobs"]}
                    into["logprobs"] = {key: so_far[key] + choice["logprobs"][key] for key in so_far}
    return joined


def assert_echo_logprobs(choice: dict[str, Any], prompt_ids: list[int], hf_tiny: PreTrainedModel, width: int) -> None:
    """Prompt then completion: null first, the model's own logprobs after, tokens joining into the echoed text."""
    logprobs = choice["logprobs"]
    tokens, token_logprobs, top, offsets = (logprobs[k] for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset"))
    assert len(tokens) == len(token_logprobs) == len(top) == len(offsets) >= len(prompt_ids)
    assert "".join(tokens) == choice["text"]
    assert offsets == [0, *itertools.accumulate(len(token) for token in tokens[:-1])]
    assert token_logprobs[0] is None and top[0] is None
    expected = forward_logprobs(hf_tiny, prompt_ids)
    assert max(abs(a - b) for a, b in zip(token_logprobs[1 : len(prompt_ids)], expected)) < TOLERANCE
    for entry, best in zip(token_logprobs[1:], top[1:]):
        assert len(best) <= width and max(best.values()) >= entry - TOLERANCE


def test_echo_with_logprobs_scores_the_prompt_then_the_completion(
    local_gateway: ServedApp, local_client: openai.OpenAI, hf_tiny: PreTrainedModel, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    url = local_gateway.url
    ids = smollm2_tokenizer.encode(PROMPT, add_special_tokens=False)
    answer = completion(url, prompt=PROMPT, echo=True, logprobs=2, max_tokens=3)
    [choice] = answer["choices"]
    assert choice["text"].startswith(PROMPT)
    assert_echo_logprobs(choice, ids, hf_tiny, 2)
    assert len(choice["logprobs"]["tokens"]) == answer["usage"]["prompt_tokens"] + answer["usage"]["completion_tokens"]
    # Token ids echo as their text; the official SDK reads the same shape.
    by_ids = local_client.completions.create(model="tiny", prompt=ids, echo=True, logprobs=2, max_tokens=3, temperature=0)
    assert by_ids.choices[0].text == choice["text"]
    assert by_ids.choices[0].logprobs is not None and by_ids.choices[0].logprobs.token_logprobs == choice["logprobs"]["token_logprobs"]


def test_batched_prompts_each_echo_their_own_logprobs(
    local_gateway: ServedApp, hf_tiny: PreTrainedModel, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    ids = [smollm2_tokenizer.encode(text, add_special_tokens=False) for text in (PROMPT, OTHER)]
    for batch in ([PROMPT, OTHER], ids):
        answer = completion(local_gateway.url, prompt=batch, echo=True, logprobs=1, max_tokens=2, n=2)
        assert [choice["index"] for choice in answer["choices"]] == [0, 1, 2, 3]
        for choice, text, prompt_ids in zip(answer["choices"], (PROMPT, PROMPT, OTHER, OTHER), (*ids[:1], *ids[:1], *ids[1:], *ids[1:])):
            assert choice["text"].startswith(text)
            assert_echo_logprobs(choice, prompt_ids, hf_tiny, 1)


def test_a_streamed_echo_is_the_same_as_the_answer(local_gateway: ServedApp, smollm2_tokenizer: PreTrainedTokenizerBase) -> None:
    url = local_gateway.url
    for prompt in (PROMPT, smollm2_tokenizer.encode(PROMPT, add_special_tokens=False)):
        whole = completion(url, prompt=prompt, echo=True, logprobs=2, max_tokens=6)["choices"][0]
        streamed = streamed_choices(url, prompt=prompt, echo=True, logprobs=2, max_tokens=6)[0]
        assert streamed == {key: whole[key] for key in ("text", "logprobs", "finish_reason")}


def test_max_tokens_0_with_echo_scores_the_prompt_and_generates_nothing(
    local_gateway: ServedApp, hf_tiny: PreTrainedModel, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    url = local_gateway.url
    ids = smollm2_tokenizer.encode(PROMPT, add_special_tokens=False)
    answer = completion(url, prompt=[ids], echo=True, logprobs=1, max_tokens=0)
    [choice] = answer["choices"]
    assert (choice["text"], choice["finish_reason"]) == (PROMPT, "length")
    assert answer["usage"]["completion_tokens"] == 0 and answer["usage"]["prompt_tokens"] == len(ids)
    assert len(choice["logprobs"]["tokens"]) == len(ids)
    assert_echo_logprobs(choice, ids, hf_tiny, 1)
    streamed = streamed_choices(url, prompt=PROMPT, echo=True, logprobs=1, max_tokens=0)[0]
    assert streamed == {key: choice[key] for key in ("text", "logprobs", "finish_reason")}
    plain = completion(url, prompt=PROMPT, echo=True, max_tokens=0)["choices"][0]
    assert (plain["text"], plain["logprobs"], plain["finish_reason"]) == (PROMPT, None, "length")


def test_max_tokens_0_without_echo_is_a_400_naming_it(local_gateway: ServedApp) -> None:
    url = local_gateway.url
    for path, body, param in (
        ("/v1/completions", {"prompt": PROMPT, "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"prompt": PROMPT, "max_tokens": 0, "prompt_logprobs": 1}, "max_tokens"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Hi"}], "max_completion_tokens": 0}, "max_completion_tokens"),
    ):
        response = httpx.post(f"{url}{path}", json={"model": "tiny", **body}, timeout=60)
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param
        assert "max_tokens must be at least 1, got 0" in response.json()["error"]["message"]


def test_vllms_prompt_logprobs_on_completions_and_chat(
    local_gateway: ServedApp, local_client: openai.OpenAI, hf_tiny: PreTrainedModel, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    ids = smollm2_tokenizer.encode(PROMPT, add_special_tokens=False)
    legacy = local_client.completions.create(
        model="tiny", prompt=PROMPT, max_tokens=2, temperature=0, extra_body={"prompt_logprobs": 2}
    ).model_dump()
    [choice] = legacy["choices"]
    assert_vllm_prompt_logprobs(choice["prompt_logprobs"], ids, hf_tiny, smollm2_tokenizer, 2)
    assert choice["logprobs"] is None  # not asked for
    # Echo's logprobs and vLLM's shape are one computation, shown at their own widths.
    both = completion(local_gateway.url, prompt=PROMPT, max_tokens=2, echo=True, logprobs=1, prompt_logprobs=3)["choices"][0]
    assert_vllm_prompt_logprobs(both["prompt_logprobs"], ids, hf_tiny, smollm2_tokenizer, 3)
    assert all(top is None or len(top) == 1 for top in both["logprobs"]["top_logprobs"])

    messages = [{"role": "user", "content": "Say something."}]
    chat = local_client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=2, temperature=0, extra_body={"prompt_logprobs": 0}
    ).model_dump()
    chat_ids = smollm2_tokenizer.encode(
        smollm2_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False), add_special_tokens=False
    )
    assert len(chat_ids) == chat["usage"]["prompt_tokens"]
    assert_vllm_prompt_logprobs(chat["prompt_logprobs"], chat_ids, hf_tiny, smollm2_tokenizer, 0)  # on the response, as vLLM's

    with pytest.raises(openai.BadRequestError) as refused:
        local_client.completions.create(model="tiny", prompt=PROMPT, stream=True, extra_body={"prompt_logprobs": 1})
    assert refused.value.body["param"] == "prompt_logprobs"  # type: ignore[index]  # as vLLM: not streamed


def assert_vllm_prompt_logprobs(
    shaped: list[Any], ids: list[int], hf_tiny: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, width: int
) -> None:
    """[None, {token id: {logprob, rank, decoded_token}}, ...]: the prompt's token first, then the width best."""
    assert len(shaped) == len(ids) and shaped[0] is None
    expected = forward_logprobs(hf_tiny, ids)
    for t in range(1, len(ids)):
        position = shaped[t]
        assert next(iter(position)) == str(ids[t])
        own = position[str(ids[t])]
        assert abs(own["logprob"] - expected[t - 1]) < TOLERANCE
        assert own["decoded_token"] == tokenizer.decode([ids[t]])
        # The width best ranked 1..width; the prompt's token is one of them or one more beside them.
        assert sorted(entry["rank"] for entry in position.values()) == sorted({*range(1, width + 1), own["rank"]})
        best = [entry["logprob"] for entry in sorted(position.values(), key=lambda entry: entry["rank"])]
        assert best == sorted(best, reverse=True)


def test_echoed_logprobs_against_openais_schema(local_gateway: ServedApp) -> None:
    """Valid but for one known spec gap: OpenAI sends null for the first echoed token's logprob, the spec says number."""
    from tests.support.openai_spec.spec import validate

    answer = completion(local_gateway.url, prompt=PROMPT, echo=True, logprobs=2, max_tokens=2)
    with pytest.raises(AssertionError, match="token_logprobs"):
        validate("CreateCompletionResponse", answer)
    validate("CreateCompletionResponse", first_prompt_logprob_as_a_number(answer))


def first_prompt_logprob_as_a_number(body: dict[str, Any]) -> dict[str, Any]:
    """The body the spec accepts: each choice's null first prompt entry made a number (tests/support/openai_spec/spec.py)."""
    body = copy.deepcopy(body)
    for choice in body["choices"]:
        logprobs = choice["logprobs"]
        if logprobs and logprobs["token_logprobs"] and logprobs["token_logprobs"][0] is None:
            logprobs["token_logprobs"][0], logprobs["top_logprobs"][0] = 0.0, {}
    return body
