"""Constrained decoding on a tiny random model: whatever it emits that parses is the grammar's doing.

The model is random over SmolLM2's whole 49k vocabulary, so without the
grammar its output is never JSON; every schema below bounds its strings and
arrays so that the grammar always has a way to close.
"""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from transformers import LlamaForCausalLM as HFLlama
from transformers import PreTrainedTokenizerBase

from local_engine import (
    EngineConfig,
    InvalidInput,
    LLMEngine,
    RequestOutput,
    SamplingParams,
)
from local_engine.structured_outputs import StructuredOutputsParams
from tests.local_engine.tiny import random_llama, tiny_loaded

VOCAB = 49152
# Bounded, so that a random model always has a way to close: strings and integers short, objects closed.
S = {"type": "string", "maxLength": 8}
I = {"type": "integer", "minimum": -99, "maximum": 999}


def obj(properties: dict, required: list[str] | None = None, **extra: object) -> dict:
    return {"type": "object", "properties": properties, "required": required if required is not None else list(properties),
            "additionalProperties": False, **extra}  # fmt: skip


SCHEMAS: list[dict] = [
    obj({"name": S, "age": I}),
    obj({"ok": {"type": "boolean"}}),
    obj({"tags": {"type": "array", "items": S, "minItems": 1, "maxItems": 3}}),
    obj({"color": {"enum": ["red", "green", "blue"]}}),
    obj({"value": {"anyOf": [I, S, {"type": "null"}]}}),
    obj({"p": {"$ref": "#/$defs/point"}}, **{"$defs": {"point": obj({"x": I, "y": I})}}),
    obj({"t": {"type": "number", "minimum": -5, "maximum": 5}}),
    obj({"n": {"type": "integer", "exclusiveMinimum": 0, "maximum": 100}}),
    obj({"a": S, "b": S}, required=["a"]),
    obj({"outer": obj({"inner": obj({"leaf": I})})}),
    {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 2, "maxItems": 4},
    obj({"id": {"type": "string", "pattern": "^[a-f0-9]{4}$"}}),
    obj({"kind": {"const": "point"}, "v": I}),
    obj({"list": {"type": "array", "items": obj({"k": S}), "maxItems": 2}}),
    obj({"s": {"type": "string", "minLength": 2, "maxLength": 4}}),
    obj({"when": {"type": "string", "format": "date"}}),
    obj({"x": {"type": ["integer", "null"], "minimum": 0, "maximum": 9}}),
    obj({"flag": {"type": "boolean"}, "count": {"type": "integer", "minimum": 1, "maximum": 3}}, required=["count"]),
    obj({"pair": {"type": "array", "prefixItems": [I, {"type": "boolean"}], "items": False}}),
    obj({"shape": {"anyOf": [obj({"r": I}), obj({"w": I, "h": I})]}}),
    obj({"step": {"type": "integer", "multipleOf": 5, "minimum": 0, "maximum": 50}}),
    obj({"items": {"type": "array", "items": {"enum": [1, 2, 3]}, "minItems": 1, "maxItems": 5}, "note": {"type": ["string", "null"], "maxLength": 5}}),
]


@pytest.fixture(scope="module")
def wide_model() -> HFLlama:
    """Random weights over SmolLM2's whole vocabulary: unconstrained, it emits any of 49k tokens."""
    return random_llama(VOCAB, context=512)


@pytest.fixture(scope="module")
def engine(wide_model: HFLlama, smollm2_tokenizer: PreTrainedTokenizerBase) -> LLMEngine:
    loaded = tiny_loaded(wide_model, smollm2_tokenizer)
    config = EngineConfig(block_size=16, kv_cache_bytes=1 << 24, max_num_batched_tokens=256, max_num_seqs=64)  # type: ignore[call-arg]
    return LLMEngine(config, loaded)


def run(engine: LLMEngine, requests: list[tuple[list[int], SamplingParams]]) -> list[RequestOutput]:
    """Every request added at once (one batch), run to the end; outputs in request order."""
    ids = [f"r{index}-{id(params)}" for index, (_, params) in enumerate(requests)]
    for request_id, (prompt, params) in zip(ids, requests):
        engine.add_request(request_id, {"prompt_token_ids": prompt}, params)
    done: dict[str, RequestOutput] = {}
    for _ in range(5000):
        for output in engine.step():
            if output.finished:
                done[output.request_id] = output
        if not engine.has_unfinished_requests():
            break
    return [done[request_id] for request_id in ids]


def constrained(schema: dict, **options: object) -> SamplingParams:
    settings = {"max_tokens": 200, "temperature": 1.0, **options}
    return SamplingParams(structured_outputs=StructuredOutputsParams(json=schema), **settings)  # type: ignore[arg-type]


PROMPT = [1, 2, 3, 4, 5, 6, 7]


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
def test_every_schema_is_met_batched_beside_unconstrained_requests(engine: LLMEngine, temperature: float) -> None:
    free = SamplingParams(max_tokens=24, temperature=0.0)
    alone = run(engine, [(PROMPT, free)])[0]
    requests = [(PROMPT, constrained(schema, temperature=temperature, seed=seed))
                for seed, schema in enumerate(SCHEMAS)]  # fmt: skip
    outputs = run(engine, [(PROMPT, free), *requests, (PROMPT, free)])
    for neighbour in (outputs[0], outputs[-1]):  # greedy, unconstrained: untouched by the grammars beside it
        assert neighbour.outputs[0].token_ids == alone.outputs[0].token_ids
    lengths = 0
    for schema, output in zip(SCHEMAS, outputs[1:-1]):
        completion = output.outputs[0]
        if completion.finish_reason == "length":  # cut inside its grammar: allowed, but must be rare
            lengths += 1
            continue
        assert completion.finish_reason == "stop", completion
        jsonschema.validate(json.loads(completion.text), schema)
    assert lengths <= 2, f"{lengths} of {len(SCHEMAS)} outputs ran out of max_tokens"


def test_without_a_grammar_the_random_model_is_not_json(engine: LLMEngine) -> None:
    """The control: the same model, unconstrained, emits no JSON, so the grammar did the work above."""
    outputs = run(engine, [(PROMPT, SamplingParams(max_tokens=40, seed=seed)) for seed in range(5)])
    for output in outputs:
        with pytest.raises(ValueError):
            json.loads(output.outputs[0].text)


def test_regex_choice_grammar_and_json_object(engine: LLMEngine) -> None:
    cases = [
        (StructuredOutputsParams(regex=r"[a-z]{3}-[0-9]{2}"), lambda text: re.fullmatch(r"[a-z]{3}-[0-9]{2}", text)),
        (StructuredOutputsParams(choice=["yes", "no", "maybe"]), lambda text: text in ("yes", "no", "maybe")),
        (StructuredOutputsParams(grammar='start: "(" NUM ("+" NUM)* ")"\nNUM: /[0-9]{1,3}/'),
         lambda text: re.fullmatch(r"\(\d{1,3}(\+\d{1,3})*\)", text)),
        (StructuredOutputsParams(grammar='root ::= "a" [b-d]+ "e"'), lambda text: re.fullmatch(r"a[b-d]+e", text)),
    ]  # fmt: skip
    for seed in range(3):
        outputs = run(engine, [(PROMPT, SamplingParams(structured_outputs=so, max_tokens=60, seed=seed)) for so, _ in cases])
        for (so, check), output in zip(cases, outputs):
            completion = output.outputs[0]
            assert completion.finish_reason in ("stop", "length")
            if completion.finish_reason == "stop":
                assert check(completion.text), (so, completion.text)
    obj = run(engine, [(PROMPT, SamplingParams(structured_outputs=StructuredOutputsParams(json_object=True),
                                               max_tokens=120, seed=1, temperature=0.5))])[0]  # fmt: skip
    if obj.outputs[0].finish_reason == "stop":
        assert isinstance(json.loads(obj.outputs[0].text), dict)


def test_n_outputs_preemption_and_logprobs_keep_the_grammar(
    wide_model: HFLlama, smollm2_tokenizer: PreTrainedTokenizerBase
) -> None:
    # A KV cache of 6 blocks for 4 sequences of up to ~90 tokens: they preempt one another.
    loaded = tiny_loaded(wide_model, smollm2_tokenizer)
    small = LLMEngine(EngineConfig(block_size=16, kv_cache_bytes=6 * 16 * 2 * 2 * 2 * 16 * 4, max_num_batched_tokens=64), loaded)  # type: ignore[call-arg]
    schema = SCHEMAS[2]
    params = constrained(schema, n=4, max_tokens=70, seed=3, logprobs=2)
    output = run(small, [(PROMPT, params)])[0]
    assert small.scheduler.num_preemptions > 0
    for completion in output.outputs:
        if completion.finish_reason == "stop":
            jsonschema.validate(json.loads(completion.text), schema)
        # Logprobs are of the constrained distribution: every chosen token had a finite logprob.
        assert completion.logprobs is not None
        assert all(entry.logprob > float("-inf") for entry in completion.logprobs)


def test_stop_strings_end_only_where_the_grammar_may_end(engine: LLMEngine) -> None:
    schema = obj({"a": {"type": "string", "maxLength": 6}})
    outputs = run(engine, [(PROMPT, constrained(schema, stop=['"', ":"], seed=seed, max_tokens=80)) for seed in range(4)])
    for output in outputs:
        completion = output.outputs[0]
        if completion.finish_reason == "stop":
            jsonschema.validate(json.loads(completion.text), schema)  # the '"' inside did not cut it


def test_an_uncompilable_constraint_is_refused_before_batching(engine: LLMEngine) -> None:
    for bad in (
        StructuredOutputsParams(json={"type": "object", "not": {"required": ["a"]}}),
        StructuredOutputsParams(regex="(unclosed"),
        StructuredOutputsParams(grammar="start: undefined_rule"),
    ):
        with pytest.raises(InvalidInput) as refused:
            engine.add_request(f"bad-{id(bad)}", {"prompt_token_ids": PROMPT}, SamplingParams(structured_outputs=bad))
        assert refused.value.param == "structured_outputs"
    assert not engine.has_unfinished_requests()


def test_compiled_grammars_are_cached(engine: LLMEngine) -> None:
    schema = obj({"cached": I})
    before = engine.grammars.compiled
    run(engine, [(PROMPT, constrained(schema, max_tokens=30)) for _ in range(3)])
    assert engine.grammars.compiled == before + 1


def test_properties_come_in_the_schemas_order_and_whitespace_is_bounded(engine: LLMEngine) -> None:
    schema = obj({"zeta": S, "reasoning": S, "answer": I})  # not alphabetical, on purpose
    outputs = run(engine, [(PROMPT, constrained(schema, seed=seed)) for seed in range(4)])
    finished = [output.outputs[0].text for output in outputs if output.outputs[0].finish_reason == "stop"]
    assert finished
    for text in finished:
        assert list(json.loads(text)) == ["zeta", "reasoning", "answer"]
        assert text.index('"zeta"') < text.index('"reasoning"') < text.index('"answer"')
        assert not re.search(r"\s\s\s\s\s\s\s\s\s\s", text)  # no padding: at most a newline and 8 of indentation


def test_an_aborted_constrained_request_leaves_its_neighbours_valid(engine: LLMEngine) -> None:
    schema = SCHEMAS[9]
    for index in range(3):
        engine.add_request(f"abort-{index}", {"prompt_token_ids": PROMPT}, constrained(schema, seed=index))
    for _ in range(3):
        engine.step()
    engine.abort_request("abort-1")
    done: dict[str, RequestOutput] = {}
    while engine.has_unfinished_requests():
        done.update({output.request_id: output for output in engine.step() if output.finished})
    assert set(done) == {"abort-0", "abort-2"}
    for output in done.values():
        if output.outputs[0].finish_reason == "stop":
            jsonschema.validate(json.loads(output.outputs[0].text), schema)


def test_max_tokens_inside_the_grammar_is_length(engine: LLMEngine) -> None:
    schema = obj({"long": {"type": "string", "minLength": 50, "maxLength": 60}})
    output = run(engine, [(PROMPT, constrained(schema, max_tokens=5))])[0]
    assert output.outputs[0].finish_reason == "length"
